"""The agent's configuration files for one VM instance, for the contextualization medium.

The guest init runs ``python3 -m tsi_bridge.agent --config /run/gridvm/ctx/tsi/agent.conf``
when that file exists; the TLS paths in it are relative to its directory.
"""

from __future__ import annotations

import json

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
