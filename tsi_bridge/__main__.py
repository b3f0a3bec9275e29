"""``python -m tsi_bridge <command>``: operator tools for TSI links.

* ``probe`` — check any TSI end to end (see tsi_bridge.probe).
* ``ca init DIR`` / ``ca issue DIR NAME OUT_PREFIX`` — a CA for TSI links and certificates.
"""

from __future__ import annotations

import sys

USAGE = """usage: python -m tsi_bridge probe --host H --port P [--tls --ca F --cert F --key F] ...
       python -m tsi_bridge ca init DIR
       python -m tsi_bridge ca issue DIR COMMON_NAME OUT_PREFIX"""


def ca_command(argv: list[str]) -> int:
    from tsi_bridge.ca import CertificateAuthority

    if len(argv) == 2 and argv[0] == "init":
        CertificateAuthority.load_or_create(argv[1])
        print(f"CA in {argv[1]}/ca.pem")
        return 0
    if len(argv) == 4 and argv[0] == "issue":
        ca = CertificateAuthority.load(argv[1])
        issued = ca.issue(argv[2])
        issued.write(f"{argv[3]}.pem", f"{argv[3]}.key")
        print(f"issued {argv[2]}: {argv[3]}.pem {argv[3]}.key (sha256 {issued.fingerprint})")
        return 0
    print(USAGE, file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "probe":
        from tsi_bridge.probe import main as probe_main

        return probe_main(argv[1:])
    if argv[0] == "ca":
        try:
            return ca_command(argv[1:])
        except OSError as err:
            print(f"tsi_bridge ca: {err.strerror}: {err.filename}", file=sys.stderr)
            return 1
    print(f"tsi_bridge: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
