"""``gridvm cluster up|status|scale|down``: virtual clusters from definitions (docs/cli.md,
docs/rest.md "Clusters")."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from client.commands import add_command
from client.commands.jobs import read_job_file
from client.errors import EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE, CliError
from client.output import age, print_json, print_table
from client.settings import connect

SETTLED = ("READY", "DEGRADED", "STOPPED", "FAILED")


def register(commands: argparse._SubParsersAction) -> None:
    cluster = add_command(
        commands, "cluster", _cluster, "virtual clusters: up, status, scale, down",
        description="Virtual clusters: services of VMs on a private network of their own, "
        "started in dependency order from a definition (JSON, see docs/rest.md).  "
        "'up FILE' starts one and prints its id, 'status [CLUSTER]' lists yours or shows "
        "one, 'scale CLUSTER SERVICE COUNT' adds or removes nodes of a scalable service, "
        "'down CLUSTER' ends it.")
    cluster.add_argument("action", choices=("up", "status", "scale", "down"))
    cluster.add_argument("operands", nargs="*", metavar="ARG",
                         help="up: FILE (- for stdin); status: [CLUSTER]; "
                         "scale: CLUSTER SERVICE COUNT; down: CLUSTER")
    cluster.add_argument("--wait", action="store_true",
                         help="wait until the cluster is READY, DEGRADED, STOPPED or FAILED "
                         "(exit 1 unless it is READY, or STOPPED after down)")
    cluster.add_argument("--timeout", type=float, default=1800.0,
                         help="seconds --wait waits at most (default 1800)")


_OPERANDS = {"up": (1, 1, "FILE"), "status": (0, 1, "[CLUSTER]"),
             "scale": (3, 3, "CLUSTER SERVICE COUNT"), "down": (1, 1, "CLUSTER")}


def _cluster(args: argparse.Namespace) -> int:
    low, high, usage = _OPERANDS[args.action]
    if not low <= len(args.operands) <= high:
        raise CliError(f"usage: gridvm cluster {args.action} {usage}", EXIT_USAGE)
    site = connect(args)
    if args.action == "status":
        return _status(site, args)
    if args.action == "up":
        cluster_id = site.create_cluster(read_job_file(args.operands[0], "a cluster definition"))
        print(cluster_id)
    elif args.action == "scale":
        cluster_id, service, count = args.operands
        if not count.isdigit() or len(count) > 6:
            raise CliError(f"COUNT must be a number of nodes, not {count!r}", EXIT_USAGE)
        site.scale_cluster(cluster_id, service, int(count))
        print(f"scaling {service} of {cluster_id} to {count}", file=sys.stderr)
    else:
        cluster_id = args.operands[0]
        site.end_cluster(cluster_id)
        print(f"ending {cluster_id}", file=sys.stderr)
    if not args.wait:
        return 0
    doc = _wait(site, cluster_id, args.timeout)
    wanted = "STOPPED" if args.action == "down" else "READY"
    _print_one(doc, args.json)
    if doc["state"] not in SETTLED:
        raise CliError(f"cluster {cluster_id} is still {doc['state']} after "
                       f"{args.timeout:g} s", EXIT_TIMEOUT)
    if doc["state"] != wanted:
        raise CliError(f"cluster {cluster_id} is {doc['state']}"
                       + (f" ({doc['reason']}: {doc['message']})" if doc.get("reason") else ""),
                       EXIT_FAILED, reason=doc.get("reason"))
    return 0


def _wait(site, cluster_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = site.cluster(cluster_id)
        if doc["state"] in SETTLED or time.monotonic() >= deadline:
            return doc
        time.sleep(1.0)


def _status(site, args: argparse.Namespace) -> int:
    if args.operands:
        _print_one(site.cluster(args.operands[0]), args.json)
        return 0
    docs = site.clusters()
    if args.json:
        print_json(docs)
        return 0
    now = time.time()
    print_table(("CLUSTER", "NAME", "STATE", "OWNER", "AGE", "SERVICES"),
                [(d["id"], d["name"], _state(d), d["owner"], age(d.get("created"), now),
                  ", ".join(f"{name} {len(s['nodes'])}/{s['count']}"
                            for name, s in d["services"].items())) for d in docs],
                empty="no clusters")
    return 0


def _state(doc: dict[str, Any]) -> str:
    return doc["state"] + (f" ({doc['reason']})" if doc.get("reason") else "")


def _print_one(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(doc)
        return
    print(f"cluster {doc['id']} ({doc['name']}): {_state(doc)}"
          + (f": {doc['message']}" if doc.get("message") else ""))
    rows = [(name, node["name"], node["address"], node["state"], node["instance"])
            for name, service in doc["services"].items() for node in service["nodes"]]
    print_table(("SERVICE", "NODE", "ADDRESS", "STATE", "INSTANCE"), rows, empty="no nodes")
