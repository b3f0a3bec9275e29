"""A libvirt daemon of the test's own, which it may kill and restart.

The system libvirtd serves everyone's tests and must never be restarted, so this one runs
as root (the QEMU driver needs it) in a mount namespace of its own: libvirt's config, run,
state, cache and log directories are bind-mounted from a private directory, so it sees
none of the system daemon's domains and they never see its.  Its socket lies outside those
directories (``unix_sock_dir``) and is reached with ``qemu:///system?socket=…``.  A holder
process keeps the namespace, so that a restarted daemon finds the QEMU processes of the
previous one and takes them back, as a restarted system daemon would.  QEMU's logs go to
files (no virtlogd), its seccomp sandbox is off as scripts/setup-host.sh sets it (gridvm
domains bring their own), and no cgroups are made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import libvirt

#: the system daemon's directories, shadowed in the namespace (name below root: target)
SHADOWED = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
            "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}


class Unavailable(Exception):
    """This host cannot run a private daemon (the test is skipped with this reason)."""


class PrivateLibvirtd:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.socket_dir = self.root / "sock"
        self.uri = f"qemu:///system?socket={self.socket_dir / 'libvirt-sock'}"
        self.pid_file = self.root / "libvirtd.pid"
        self.holder: subprocess.Popen | None = None

    # -- set-up ----------------------------------------------------------------------------
    def prepare(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("a private libvirtd with the QEMU driver needs root")
        for tool in ("libvirtd", "unshare", "nsenter", "mount"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} is not installed")
        for name in [*SHADOWED, "sock"]:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.socket_dir}"\n'
            'unix_sock_rw_perms = "0700"\nunix_sock_ro_perms = "0700"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n')
        (self.root / "etc" / "qemu.conf").write_text(
            "seccomp_sandbox = 0\nstdio_handler = \"file\"\ncgroup_controllers = [ ]\n")
        ready = self.root / "namespace-ready"
        mounts = "".join(f"mount --bind {self.root / name} {target} && "
                         for name, target in SHADOWED.items())
        script = (f"mount --make-rprivate / && {mounts}touch {ready} && exec sleep infinity")
        self.holder = subprocess.Popen(["unshare", "--mount", "sh", "-c", script],
                                       stderr=subprocess.PIPE)
        for _ in range(100):
            if ready.exists():
                return
            if self.holder.poll() is not None:
                raise Unavailable("cannot make a mount namespace: "
                                  + self.holder.stderr.read().decode(errors="replace").strip())
            time.sleep(0.05)
        raise Unavailable("the mount namespace did not come up within 5 s")

    # -- the daemon --------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> float:
        """Start the daemon; returns the seconds until it accepted a connection."""
        assert self.holder is not None
        started = time.monotonic()
        subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", "libvirtd", "-d",
                        "--config", str(self.root / "etc" / "libvirtd.conf"),
                        "--pid-file", str(self.pid_file)], check=True, timeout=timeout)
        while True:
            try:
                libvirt.open(self.uri).close()
                return time.monotonic() - started
            except libvirt.libvirtError as err:
                if time.monotonic() - started > timeout:
                    raise Unavailable(f"the private libvirtd did not answer: {err}") from err
                time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the daemon (at once by default, like a crash); its QEMU processes go on."""
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, sig)
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"libvirtd {pid} did not exit")

    def destroy_all(self) -> None:
        """Destroy every domain of this daemon (starting it if it is down)."""
        if self.pid is None:
            self.start()
        conn = libvirt.open(self.uri)
        try:
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
        finally:
            conn.close()

    def close(self) -> None:
        try:
            if self.holder is not None:
                self.destroy_all()
        finally:
            self.kill(signal.SIGTERM)
            if self.holder is not None:
                self.holder.kill()
                self.holder.wait()
            shutil.rmtree(self.root, ignore_errors=True)
