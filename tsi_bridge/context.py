"""The TSI's configuration files for one VM instance, for the contextualization medium.

The guest init runs ``/run/gridvm/ctx/tsi/start`` when that file exists (an image's own TSI,
flavour ``unicore``: configured by an official-style ``tsi.properties``), else
``python3 -m tsi_bridge.agent --config /run/gridvm/ctx/tsi/agent.conf`` when that exists;
the TLS paths in agent.conf are relative to its directory.
"""

from __future__ import annotations

import json
import posixpath
import shlex

from cryptography import x509

from base.unicore import OFFICIAL_PROPERTY_KEYS
from tsi_bridge.agent.config import CALLBACK_HOST_VARIABLE
from tsi_bridge.ca import CertificateAuthority, IssuedCertificate

GUEST_CALLBACK_HOST = "10.0.2.100"  # QEMU guestfwd address of the instance's callback port
GUEST_LISTEN_PORT = 4433


def agent_config(*, callback_host: str = GUEST_CALLBACK_HOST, callback_port: int | None = None,
                 listen_address: str = "0.0.0.0", listen_port: int = GUEST_LISTEN_PORT,
                 job_user: str | None = "gridvm", job_group: str | None = None,
                 workdir_root: str = "/home/gridvm", confine_paths: bool = True,
                 state_dir: str = "/var/lib/gridvm-tsi", tls: bool = True,
                 timeouts: dict[str, float] | None = None,
                 environment: dict[str, str] | None = None) -> dict[str, object]:
    """The agent.conf settings (JSON object) for a guest; see docs/tsi-bridge.md."""
    config: dict[str, object] = {
        "listen_address": listen_address, "listen_port": listen_port,
        "callback_host": callback_host, "callback_port": callback_port,
        "switch_uid": True, "job_user": job_user, "job_group": job_group,
        "workdir_root": workdir_root, "confine_paths": confine_paths, "state_dir": state_dir,
    }
    if tls:
        config["tls"] = {"cert": "agent.pem", "key": "agent.key", "ca": "ca.pem",
                         "peer_cert": "server.pem"}
    if timeouts:
        config["timeouts"] = dict(timeouts)
    if environment:
        config["environment"] = dict(environment)
    return config


def agent_context_files(*, agent_cert_pem: bytes, agent_key_pem: bytes, ca_pem: bytes,
                        server_cert_pem: bytes, directory: str = "tsi",
                        **settings) -> dict[str, bytes]:
    """``{relative path: content}`` for the contextualization medium: ``tsi/agent.conf``,
    the agent's certificate and key, the CA and the server certificate the agent pins.
    ``settings`` go to ``agent_config`` (callback_port, job_user, workdir_root, ...)."""
    config = agent_config(tls=True, **settings)
    prefix = directory.strip("/")
    return {
        f"{prefix}/agent.conf": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        f"{prefix}/agent.pem": agent_cert_pem,
        f"{prefix}/agent.key": agent_key_pem,
        f"{prefix}/ca.pem": ca_pem,
        f"{prefix}/server.pem": server_cert_pem,
    }


def instance_context_files(ca: CertificateAuthority, server: IssuedCertificate,
                           instance_id: str, **settings
                           ) -> tuple[dict[str, bytes], IssuedCertificate]:
    """Issue a fresh certificate for ``instance_id`` and return its context files plus the
    certificate (pin it in the client: ``TLSConfig(...).pinned_to(cert.cert_pem)``)."""
    issued = ca.issue_instance(instance_id)
    files = agent_context_files(agent_cert_pem=issued.cert_pem, agent_key_pem=issued.key_pem,
                                ca_pem=ca.cert_pem, server_cert_pem=server.cert_pem, **settings)
    return files, issued


# -- a TSI of the image's own (flavour unicore) -------------------------------------------------

MEDIUM_MOUNT = "/run/gridvm/ctx"
#: where the site's connections come from inside the guest (QEMU user networking's gateway)
GUEST_PEER_ADDRESS = "10.0.2.2"


def tsi_properties(settings: dict[str, str], keys: dict[str, str] | None = None) -> bytes:
    """A ``tsi.properties`` file: ``settings`` (by the names of OFFICIAL_PROPERTY_KEYS)
    under the official keys, or the ones ``keys`` renames."""
    names = {**OFFICIAL_PROPERTY_KEYS, **(keys or {})}
    lines = ["# UNICORE TSI configuration written by gridvm for this instance"]
    lines += [f"{names[setting]}={value}" for setting, value in settings.items()]
    lines += ["tsi.use_syslog=0"]
    return ("\n".join(lines) + "\n").encode()


def start_script(start_command: list[str], properties: str, callback_port: int,
                 properties_file: str | None = None) -> bytes:
    """``tsi/start``: run as root by the guest's init; starts the TSI in the foreground.

    The official TSI calls back to the address the site's connection came from, the
    gateway 10.0.2.2, which an isolated guest cannot reach: its one way out is
    ``GUEST_CALLBACK_HOST:callback_port``.  With iptables or nft in the image the script
    redirects the one to the other; gridvm's agent takes the address from the environment.
    """
    target = properties_file or properties
    copy = ""
    if properties_file:
        directory = shlex.quote(posixpath.dirname(properties_file))
        copy = (f"mkdir -p {directory}\ncp {shlex.quote(properties)} "
                f"{shlex.quote(properties_file)}\nchmod 600 {shlex.quote(properties_file)}\n")
    peer, out, port = GUEST_PEER_ADDRESS, GUEST_CALLBACK_HOST, int(callback_port)
    rule = f"-p tcp -d {peer} --dport {port} -j DNAT --to-destination {out}:{port}"
    script = f"""#!/bin/sh
# Start the image's own TSI, as its metadata says (written by gridvm).
if command -v iptables >/dev/null 2>&1; then
    iptables -t nat -C OUTPUT {rule} 2>/dev/null || iptables -t nat -A OUTPUT {rule}
elif command -v nft >/dev/null 2>&1; then
    nft add table ip gridvm \\
        && nft 'add chain ip gridvm out {{ type nat hook output priority -100; }}' \\
        && nft add rule ip gridvm out ip daddr {peer} tcp dport {port} dnat to {out}:{port}
fi
export {CALLBACK_HOST_VARIABLE}={out}
{copy}exec {shlex.join([*start_command, target])}
"""
    return script.encode()


def unicore_tsi_files(*, agent_cert_pem: bytes, agent_key_pem: bytes, ca_pem: bytes,
                      server_cert_pem: bytes, callback_port: int,
                      listen_port: int, start_command: list[str],
                      properties_file: str | None = None,
                      property_keys: dict[str, str] | None = None,
                      directory: str = "tsi", mount: str = MEDIUM_MOUNT) -> dict[str, bytes]:
    """The medium of an image with a TSI of its own: ``tsi/tsi.properties`` (the official
    keys), the instance's certificate and key, a truststore (the CA and the site's server
    certificate, as the official TSI wants it) and ``tsi/start``."""
    prefix = directory.strip("/")
    on_medium = f"{mount}/{prefix}"
    server_dn = x509.load_pem_x509_certificate(server_cert_pem).subject.rfc4514_string()
    settings = {
        "my_addr": "", "my_port": str(listen_port),
        "unicorex_machine": GUEST_PEER_ADDRESS, "unicorex_port": str(callback_port),
        "keystore": f"{on_medium}/tsi.key", "certificate": f"{on_medium}/tsi-cert.pem",
        "truststore": f"{on_medium}/truststore.pem", "allowed_dn": server_dn,
    }
    return {
        f"{prefix}/tsi.properties": tsi_properties(settings, property_keys),
        f"{prefix}/tsi-cert.pem": agent_cert_pem,
        f"{prefix}/tsi.key": agent_key_pem,
        f"{prefix}/truststore.pem": ca_pem.rstrip(b"\n") + b"\n" + server_cert_pem,
        f"{prefix}/start": start_script(start_command, f"{on_medium}/tsi.properties",
                                        callback_port, properties_file),
    }
