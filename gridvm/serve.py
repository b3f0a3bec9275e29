"""``gridvm serve``: run the site (REST API, factory, VM manager) until SIGINT/SIGTERM.

``gridvm serve --add-user NAME [--vo VO] [--group G] [--role creator|admin]`` adds or replaces a
user in the users file (password from the terminal, or one line on stdin with
``--password-stdin``); ``--remove-user NAME`` removes one; ``--print-config`` shows the
effective configuration.  The configuration keys are documented in ``tsf/config.py`` and
docs/rest.md.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys

from base.reasons import Reason
from client.errors import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, CliError


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="run the UNICORE REST site with its VM target systems",
        description="Run the gridvm site until interrupted, or manage its users file.")
    serve.add_argument("--config", "-c", metavar="FILE",
                       help="TOML configuration file (default: built-in defaults)")
    serve.add_argument("--print-config", action="store_true",
                       help="print the effective configuration as JSON and exit")
    users = serve.add_argument_group("users file")
    users.add_argument("--add-user", metavar="NAME", help="add or replace a user and exit")
    users.add_argument("--remove-user", metavar="NAME", help="remove a user and exit")
    users.add_argument("--vo", action="append", default=[], help="VO of the user (repeat)")
    users.add_argument("--group", action="append", default=[],
                       help="group of the user, the first is the primary one (repeat)")
    users.add_argument("--role", choices=("user", "creator", "admin"), default="user")
    users.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of stdin")
    serve.set_defaults(func=_serve)


def _config(args: argparse.Namespace):
    from tsf.config import ConfigError, load_config

    try:
        config = load_config(args.config)
        config.trust_policy()  # an unreadable anchors file is a configuration error
    except ConfigError as err:
        raise CliError(str(err), EXIT_USAGE, reason=Reason.BAD_REQUEST) from None
    return config


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.add_user}: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the passwords differ", EXIT_USAGE, reason=Reason.BAD_REQUEST)
    else:
        raise CliError("no terminal to ask for a password: use --password-stdin", EXIT_USAGE,
                       reason=Reason.BAD_REQUEST)
    if len(password) < 8:
        raise CliError("a password needs at least 8 characters", EXIT_USAGE,
                       reason=Reason.BAD_REQUEST)
    return password


def _manage_users(args: argparse.Namespace, config) -> int:
    from tsf.users import User, UsersFile, UsersFileError, hash_password, parse_user

    try:
        users = UsersFile(config.users_file)
        if args.remove_user:
            if not users.remove(args.remove_user):
                raise CliError(f"no user {args.remove_user} in {config.users_file}", 3,
                               reason=Reason.NOT_FOUND)
            print(f"removed {args.remove_user} from {config.users_file}")
            return 0
        user = User(args.add_user, hash_password(_password(args)), tuple(args.group),
                    tuple(args.vo), args.role)
        parse_user(user.name, user.to_dict())  # the same checks as reading the file
        users.put(user)
    except UsersFileError as err:
        raise CliError(str(err), EXIT_USAGE, reason=Reason.BAD_REQUEST) from None
    print(f"{args.add_user} ({args.role}) written to {config.users_file}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.print_config:
        doc = config.to_dict()
        doc["derived"] = {"state_dir": str(config.state_dir),
                          "database": config.database_url,
                          "image_store": str(config.image_store),
                          "storage": str(config.storage), "users_file": str(config.users_file)}
        print(json.dumps(doc, indent=2))
        return 0
    if args.add_user or args.remove_user:
        return _manage_users(args, config)
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return run(config)


def run(config) -> int:
    """Start the site and serve until the reactor stops (SIGINT/SIGTERM); clean shutdown."""
    from twisted.internet import defer, error, task

    from tsf.service import start_site
    from tsf.users import UsersFileError
    from vmm.errors import VMMError

    failures: list[CliError] = []

    async def main(reactor):
        try:
            site = await start_site(config, reactor)
        except error.CannotListenError as err:
            failures.append(CliError(f"cannot listen on {err.interface}:{err.port}: "
                                     f"{err.socketError}", EXIT_UNAVAILABLE))
            return
        except VMMError as err:
            failures.append(CliError(f"hypervisor {config.site.libvirt_uri}: {err}",
                                     EXIT_UNAVAILABLE, reason=getattr(err, "reason", None)))
            return
        except (UsersFileError, OSError) as err:
            failures.append(CliError(str(err), EXIT_FAILED))
            return
        reactor.addSystemEventTrigger("before", "shutdown", site.stopService)
        await defer.Deferred()  # until SIGINT/SIGTERM stops the reactor

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    if failures:
        raise failures[0]
    return 0
