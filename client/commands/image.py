"""``gridvm image …``: build, register, list and match VM images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from client.errors import EXIT_USAGE, CliError


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("image", help="build, register, search and manage VM images")
    image_commands = group.add_subparsers(dest="image_command", metavar="IMAGE_COMMAND")
    image_commands.required = True

    build = image_commands.add_parser(
        "build",
        help="build a small guest image from Debian packages (cached)",
        description="Assemble a guest (cloud kernel, busybox, python3, the gridvm TSI agent) "
        "and write it with a metadata file ready for registration.",
    )
    build.add_argument("--kind", choices=("initramfs", "qcow2"), default="initramfs")
    build.add_argument("--output", type=Path, default=None, help="image directory "
                       "(default: the build cache under $GRIDVM_HOME/images)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--json", action="store_true", help="print the result as JSON")
    build.set_defaults(func=_build)

    from client.catalogue_cli import add_commands

    add_commands(image_commands)


def _build(args: argparse.Namespace) -> int:
    from image_repo.builder import BuildError, build_image

    try:
        built = build_image(args.kind, output_root=args.output, force=args.force)
    except BuildError as err:
        raise CliError(str(err), EXIT_USAGE if err.bad_input else 1, reason=err.reason) from None
    if args.json:
        print(json.dumps(built.summary(), indent=2))
    else:
        state = "cached" if built.cached else f"built in {built.seconds:.1f} s"
        print(f"{built.kind} image {built.key[:12]} ({state})")
        print(f"  metadata: {built.metadata_path}")
        for path in built.files:
            print(f"  {path.name}: {path}")
    return 0
