"""``gridvm instances``, ``instance log``, ``terminate`` and ``pools``: the VM instances
behind the jobs (operators see all of them), one's console log, ending one now, and the warm
pools."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from client.commands import add_command
from client.output import age, phase_list, print_json, print_table
from client.settings import connect

INSTANCE_PHASES = ("REQUESTED", "STAGING", "BOOTING", "CONNECTING", "READY", "BUSY",
                   "DRAINING")


def register(commands: argparse._SubParsersAction) -> None:
    listing = add_command(
        commands, "instances", _instances,
        "list VM instances: state, image, owner, age, health, timings",
        description="The VM instances you own (all of them for an administrator): state, "
        "image, owner, age, health (missed TSI pings / budget), jobs and phase timings.")
    listing.add_argument("--all", action="store_true",
                         help="include TERMINATED and FAILED instances")

    terminate = add_command(
        commands, "terminate", _terminate,
        "end VM instances now (yours; any for an administrator)", json_flag=False,
        description="End VM instances now.  One with unfinished jobs is refused unless "
        "--force, which aborts its jobs first (their files are kept).")
    terminate.add_argument("instance", metavar="INSTANCE", nargs="+")
    terminate.add_argument("--force", action="store_true",
                           help="abort the instance's unfinished jobs first")

    instance = add_command(
        commands, "instance", _instance, "one VM instance: its console log", json_flag=False,
        description="gridvm instance log INSTANCE: the end of the instance's serial console "
        "(its last 256 KiB), kept after the instance ended, so that a failed boot can be "
        "diagnosed.")
    instance.add_argument("what", choices=("log",), help="what to show")
    instance.add_argument("instance", metavar="INSTANCE")

    add_command(commands, "pools", _pools,
                "the warm pools: image, size, idle target, instances waiting",
                description="The warm pools that serve you (all of them for an "
                "administrator): the image, the size of its instances, how many it keeps "
                "booted and how many wait.")


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
        rows.append((doc.get("id"), state, doc.get("image"), doc.get("host") or "-",
                     doc.get("owner"),
                     age(doc.get("created"), now), health(doc), len(doc.get("jobs") or []),
                     phase_list(doc.get("phases") or {}, INSTANCE_PHASES)))
    print_table(("INSTANCE", "STATE", "IMAGE", "HOST", "OWNER", "AGE", "HEALTH", "JOBS", "PHASES"),
                rows, empty="no instances")
    return 0


def _terminate(args: argparse.Namespace) -> int:
    site = connect(args)
    for instance_id in args.instance:
        site.end_instance(instance_id, force=args.force)
        print(f"terminated {instance_id}", file=sys.stderr)
    return 0


def _instance(args: argparse.Namespace) -> int:
    text = connect(args).instance_log(args.instance)
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return 0


def _pools(args: argparse.Namespace) -> int:
    docs = connect(args).pools()
    if args.json:
        print_json(docs)
        return 0
    print_table(("POOL", "IMAGE", "SIZE", "IDLE", "WAITING", "READY", "VOS"),
                [(d["name"], d["image"], f"{d['vcpus']} vCPU, {d['memoryMiB']} MiB",
                  d["idle"], d["waiting"], d["ready"], ", ".join(d["vos"]) or "anyone")
                 for d in docs], empty="no pools")
    return 0
