"""Debian packages for guest images: resolve candidate versions, download, extract.

Everything goes through the ordinary apt tools of the build host, so the guest is made of
the same signed packages the host trusts.  Downloads are cached by file name (which holds
the version), so a rebuild with unchanged versions fetches nothing.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from image_builder.errors import BuildError
from image_builder.progress import Progress, Step, silent
from image_builder.tools import run_tool

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
DOWNLOAD_TIMEOUT_S = 1800
#: ``Inst libjq1 (1.6-2.1+deb12u3 Debian-Security:12/oldstable-security [amd64])``
_INST_LINE = re.compile(r"Inst (\S+) (?:\[\S+\] )?\((\S+) ")


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    return run_tool(cmd, cwd=cwd, hint="the build host needs apt (Debian)", label_words=3)


def kernel_package_name() -> str:
    """The versioned kernel package the cloud kernel meta package currently depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", line)
        if match:
            return match.group(1)
    raise BuildError(f"cannot find the kernel behind {KERNEL_META_PACKAGE} (run apt-get update)")


def resolve(names: list[str]) -> list[Package]:
    """Candidate versions of ``names`` as apt would install them now."""
    out = _run(["apt-cache", "policy", *names])
    versions: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1].split(":")[0]
        elif current and line.strip().startswith("Candidate:"):
            candidate = line.split(":", 1)[1].strip()
            if candidate != "(none)":
                versions[current] = candidate
    missing = [n for n in names if n not in versions]
    if missing:
        raise BuildError(f"no installable version of {', '.join(missing)} (run apt-get update)")
    return [Package(n, versions[n]) for n in names]


def closure(names: list[str], installed: list[Package]) -> list[Package]:
    """The packages apt would install for ``names`` on a system holding just ``installed``.

    apt itself resolves the dependency closure (alternatives, virtual packages, versions)
    in a simulated install against a private dpkg status file that lists ``installed``;
    recommended packages are left out, as in ``--no-install-recommends``.
    """
    if not names:
        return []
    with tempfile.TemporaryDirectory(prefix="gridvm-apt-") as tmp:
        status = Path(tmp) / "status"
        status.write_text("".join(
            f"Package: {p.name}\nStatus: install ok installed\nVersion: {p.version}\n"
            "Architecture: amd64\nMaintainer: gridvm\nDescription: base image package\n\n"
            for p in installed))
        try:
            out = _run(["apt-get", "-s", "-q", "--no-install-recommends",
                        "-o", f"Dir::State::status={status}", "-o", "Debug::NoLocking=1",
                        "install", *names])
        except BuildError as err:
            # apt names the package it cannot find or whose dependencies it cannot meet
            raise BuildError(f"packages: cannot install {', '.join(names)}: "
                             f"{err.message.split(': ', 1)[-1]}", bad_input=True) from None
    found = [Package(m.group(1).split(":")[0], m.group(2))
             for m in map(_INST_LINE.match, out.splitlines()) if m]
    base = {p.name for p in installed}
    return [p for p in found if p.name not in base]


def deb_file_name(package: Package) -> str:
    version = package.version.replace(":", "%3a")
    return f"{package.name}_{version}_amd64.deb"


def _present(cache: Path, package: Package) -> bool:
    path = cache / deb_file_name(package)
    return path.exists() or path.with_name(path.name.replace("_amd64.deb", "_all.deb")).exists()


def download(packages: list[Package], cache: Path, progress: Progress = silent) -> list[Path]:
    """Download the packages' .deb files into ``cache`` unless already there, reporting
    ``downloading n/N`` (the cached ones count as done)."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / deb_file_name(p) for p in packages]
    wanted = [p.spec for p in packages if not _present(cache, p)]
    done = len(packages) - len(wanted)
    progress(Step("downloading", done, len(packages), "packages"))
    if wanted:
        # _apt cannot write into root-only directories: download as the caller.
        _stream(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *wanted], cache,
                lambda line: line.startswith("Get:") and progress(
                    Step("downloading", done + int(line[4:].split()[0]), len(packages),
                         "packages")))
    for path in paths:
        if not path.exists():
            # Some packages are "all" rather than "amd64".
            alt = path.with_name(path.name.replace("_amd64.deb", "_all.deb"))
            if alt.exists():
                paths[paths.index(path)] = alt
            else:
                raise BuildError(f"download of {path.name} did not produce the file")
    return paths


def _stream(cmd: list[str], cwd: Path, on_line) -> None:
    """Run ``cmd``, calling ``on_line`` with each line of its output as it comes."""
    try:
        process = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as err:
        raise BuildError(f"{cmd[0]} not found: the build host needs apt (Debian)") from err
    timer = threading.Timer(DOWNLOAD_TIMEOUT_S, process.kill)
    timer.start()
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            on_line(line)
        process.wait()
    finally:
        timer.cancel()
    if process.returncode != 0:
        detail = [line for line in lines if line.strip()]
        why = (f"did not finish within {DOWNLOAD_TIMEOUT_S} s" if process.returncode < 0
               else detail[-1] if detail else "no output")
        raise BuildError(f"{' '.join(cmd[:2])} failed: {why}")


def extract(deb: Path, root: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(root)])
