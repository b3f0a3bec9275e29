"""Test PKI: one CA, the server's certificate, an instance's, and a stranger's from another CA."""

from __future__ import annotations

from pathlib import Path

from tsi_bridge.ca import CertificateAuthority
from tsi_bridge.tls import TLSConfig


class TestPKI:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca = CertificateAuthority.create()
        self.server = self.ca.issue_server()
        self.instance = self.ca.issue_instance("test-1")
        self.other_instance = self.ca.issue_instance("test-2")
        self.stranger_ca = CertificateAuthority.create("stranger CA")
        self.stranger = self.stranger_ca.issue_server()
        (directory / "ca.pem").write_bytes(self.ca.cert_pem)
        for name, issued in (("server", self.server), ("agent", self.instance)):
            issued.write(directory / f"{name}.pem", directory / f"{name}.key")

    def agent_flags(self) -> list[str]:
        d = self.directory
        return ["--tls-cert", str(d / "agent.pem"), "--tls-key", str(d / "agent.key"),
                "--tls-ca", str(d / "ca.pem"), "--tls-peer-cert", str(d / "server.pem")]

    def client_tls(self) -> TLSConfig:
        """The server's identity, pinned to the instance's certificate."""
        return TLSConfig(self.server.cert_pem, self.server.key_pem, self.ca.cert_pem,
                         self.instance.cert_pem)

    def stranger_tls(self) -> TLSConfig:
        return TLSConfig(self.stranger.cert_pem, self.stranger.key_pem, self.ca.cert_pem,
                         self.instance.cert_pem)

    def impostor_tls(self) -> TLSConfig:
        """Valid under our CA but not the server (another instance's certificate)."""
        return TLSConfig(self.other_instance.cert_pem, self.other_instance.key_pem,
                         self.ca.cert_pem, self.instance.cert_pem)
