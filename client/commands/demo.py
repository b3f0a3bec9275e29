"""``gridvm demo``: the README's main job, end to end on this machine."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="build the demo image, boot it and run the main job end to end"
    )
    demo.add_argument("--kind", choices=("initramfs", "qcow2"), default="initramfs")
    demo.add_argument("--uri", default="qemu:///system", help="libvirt URI")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from client.demo import run_demo

    return run_demo(kind=args.kind, uri=args.uri)
