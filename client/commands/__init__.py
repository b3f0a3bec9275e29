"""The site commands of ``gridvm`` (over REST); each module has ``register(subparsers)``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from client.settings import add_connection_flags


def add_command(commands: argparse._SubParsersAction, name: str,
                handler: Callable[[argparse.Namespace], int], help_text: str, *,
                json_flag: bool = True, description: str = "") -> argparse.ArgumentParser:
    """A sub-command that talks to a site: connection flags, ``--json`` unless
    ``json_flag`` is false, and ``handler`` to run."""
    parser = commands.add_parser(name, help=help_text, description=description or help_text)
    add_connection_flags(parser)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parser.set_defaults(func=handler)
    return parser
