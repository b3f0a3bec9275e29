"""The ``gridvm`` command: the site commands of ``client.commands`` (over REST) and this
package's local ones (``catalogue``, ``serve``, ``demo``), one group per module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from client.commands import clusters, completion, config, hosts, image, instances, jobs
from client.errors import EXIT_CODES, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from gridvm import catalogue, demo, serve

COMMAND_GROUPS = (jobs, image, instances, clusters, hosts, config, completion, catalogue, demo,
                  serve)

EPILOG = """\
connection: --url/GRIDVM_URL, --user/GRIDVM_USER, --password-stdin/GRIDVM_PASSWORD,
  --token/GRIDVM_TOKEN, --insecure/GRIDVM_INSECURE, else ~/.config/gridvm/client.toml
  (see `gridvm config`).  JOB is a job id or its URL.

exit codes:
""" + "\n".join(f"  {code:<4}{text}" for code, text in EXIT_CODES) + """

docs/cli.md has the details; `source <(gridvm completion bash)` completes commands."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridvm",
        description="gridvm: jobs in virtual machines booted from an image repository.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.set_defaults(root_parser=parser)  # for `gridvm completion`
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = argparse.Namespace(verbose=0, command=None)
    try:
        catalogue.refuse_former_form(argv)
        args = build_parser().parse_args(argv)
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"gridvm: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("gridvm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as err:  # e.g. a file named on the command line cannot be read
        print(f"gridvm: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # a bug: still one line (the traceback with -v)
        if args.verbose:
            logging.exception("gridvm %s", args.command)
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"gridvm: internal error: {type(err).__name__}: {text} (-v shows where)",
              file=sys.stderr)
        return EXIT_FAILED
