"""``gridvm instances``: the VM instances behind the jobs (operators see all of them)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from client.output import age, phase_list, print_json, print_table
from client.settings import add_connection_flags, connect

INSTANCE_PHASES = ("REQUESTED", "STAGING", "BOOTING", "CONNECTING", "READY", "BUSY",
                   "DRAINING")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "instances", help="list VM instances: state, image, owner, age, health, timings",
        description="The VM instances you own (all of them for an administrator): state, "
        "image, owner, age, health (missed TSI pings / budget), jobs and phase timings.")
    add_connection_flags(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parser.add_argument("--all", action="store_true",
                        help="include TERMINATED and FAILED instances")
    parser.set_defaults(func=_instances)


def health(doc: dict[str, Any]) -> str:
    info = doc.get("health") or {}
    if doc.get("state") in ("TERMINATED", "FAILED"):
        return "-"
    missed, budget = info.get("missedPings", 0), info.get("budget")
    if not missed:
        return "ok"
    return f"missed {missed}/{budget}" if budget else f"missed {missed}"


def _instances(args: argparse.Namespace) -> int:
    docs = connect(args).instances()
    if not args.all:
        docs = [d for d in docs if d.get("state") not in ("TERMINATED", "FAILED")]
    if args.json:
        print_json(docs)
        return 0
    now = time.time()
    rows = []
    for doc in docs:
        state = doc.get("state", "?")
        if doc.get("reason"):
            state += f" ({doc['reason']})"
        rows.append((doc.get("id"), state, doc.get("image"), doc.get("owner"),
                     age(doc.get("created"), now), health(doc), len(doc.get("jobs") or []),
                     phase_list(doc.get("phases") or {}, INSTANCE_PHASES)))
    print_table(("INSTANCE", "STATE", "IMAGE", "OWNER", "AGE", "HEALTH", "JOBS", "PHASES"),
                rows, empty="no instances")
    return 0
