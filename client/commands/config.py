"""``gridvm config``: the connection settings in effect and where each comes from."""

from __future__ import annotations

import argparse
import sys

from client.output import print_json
from client.settings import add_connection_flags, load_settings


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "config", help="show the server URL and credentials in effect (never the secrets)",
        description="Flags override environment variables (GRIDVM_URL, GRIDVM_USER, "
        "GRIDVM_PASSWORD, GRIDVM_TOKEN, GRIDVM_INSECURE), which override the config file "
        "($GRIDVM_CONFIG or ~/.config/gridvm/client.toml).  --check also asks the server "
        "who you are.")
    add_connection_flags(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--check", action="store_true",
                        help="connect and show the server's view of you")
    parser.set_defaults(func=_config)


def _config(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    for warning in settings.warnings:
        print(f"gridvm: warning: {warning}", file=sys.stderr)
    doc = settings.shown()
    if args.check:
        info = settings.site().info()
        client = info.get("client") or {}
        doc["server"] = {"role": (client.get("role") or {}).get("selected"),
                         "dn": client.get("dn"), "vos": client.get("vos"),
                         "version": (info.get("server") or {}).get("version")}
    if args.json:
        print_json(doc)
        return 0
    print(f"{'config file':<12}{doc['config_file']}")
    for key in ("url", "user", "password", "token", "insecure", "timeout"):
        entry = doc[key]
        value = "-" if entry["value"] is None else entry["value"]
        print(f"{key:<12}{value!s:<50} ({entry['source']})")
    if "server" in doc:
        server = doc["server"]
        print(f"{'server':<12}gridvm {server['version']}, you are {server['dn']} "
              f"(role {server['role']})")
    return 0
