"""``gridvm hosts`` and ``gridvm host drain|enable NAME``: the site's hypervisor hosts, for
administrators — state, capacity, what gridvm uses of each, instances and cached images —
and taking a host out of placement (its instances go on) or back in."""

from __future__ import annotations

import argparse
import sys

from client.commands import add_command
from client.output import print_json, print_table
from client.settings import connect


def register(commands: argparse._SubParsersAction) -> None:
    add_command(commands, "hosts", _hosts,
                "the hypervisor hosts: state, capacity, used, instances, cached images",
                description="The site's hypervisor hosts (administrators only): UP, DRAINING "
                "(takes no new instance) or DOWN (unreachable past its grace period), CPUs "
                "and memory as libvirt reports them, what gridvm's instances use, the "
                "instances on each and the images cached there.")
    host = add_command(commands, "host", _host, "drain or enable a hypervisor host",
                       description="gridvm host drain NAME: the host takes no new instance "
                       "(its instances go on); gridvm host enable NAME: it takes them again. "
                       "Administrators only; kept across server restarts.")
    host.add_argument("action", choices=("drain", "enable"))
    host.add_argument("name", metavar="NAME")


def _row(doc: dict) -> tuple:
    used = doc.get("used") or {}
    state = doc.get("state", "?")
    if doc.get("message"):
        state += f" ({doc['message']})"
    return (doc.get("name"), state,
            f"{doc.get('cpus', 0)} CPU, {doc.get('memoryMiB', 0)} MiB "
            f"({doc.get('freeMemoryMiB', 0)} free)",
            f"{used.get('vcpus', 0)} vCPU, {used.get('memoryMiB', 0)} MiB",
            len(doc.get("instances") or []), len(doc.get("cachedImages") or []),
            doc.get("uri"))


HEADINGS = ("HOST", "STATE", "CAPACITY", "USED", "INSTANCES", "IMAGES", "URI")


def _hosts(args: argparse.Namespace) -> int:
    docs = connect(args).hosts()
    if args.json:
        print_json(docs)
        return 0
    print_table(HEADINGS, [_row(d) for d in docs], empty="no hosts")
    return 0


def _host(args: argparse.Namespace) -> int:
    doc = connect(args).set_host(args.name, args.action)
    if args.json:
        print_json(doc)
        return 0
    print(f"host {doc.get('name')} is {doc.get('state')}", file=sys.stderr)
    return 0
