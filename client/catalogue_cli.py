"""``gridvm image register|list|show|match|new-version|deprecate|delete``: the catalogue
commands for image creators, working on the local catalogue and blob store.

The catalogue is ``--db URL``, else ``$GRIDVM_DB_URL``, else the SQLite file
``$GRIDVM_HOME/catalogue.sqlite``; the store is ``--store DIR``, else ``$GRIDVM_HOME/store``.
The caller is the local user with their Unix groups (root is an administrator); ``--vo``
adds VO memberships.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from client.config import gridvm_home
from client.errors import EXIT_AUTH, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_USAGE, CliError

EXIT_BY_REASON = {
    "BAD_REQUEST": EXIT_USAGE,
    "IMAGE_CHECKSUM_MISMATCH": EXIT_USAGE,
    "NOT_AUTHORIZED": EXIT_AUTH,
    "NO_MATCHING_IMAGE": EXIT_NOT_FOUND,
}


def add_commands(image_commands: argparse._SubParsersAction) -> None:
    """Add the catalogue sub-commands to ``gridvm image``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="URL", default=None,
                        help="catalogue URL (default: $GRIDVM_DB_URL or SQLite in $GRIDVM_HOME)")
    common.add_argument("--store", metavar="DIR", type=Path, default=None,
                        help="blob store directory (default: $GRIDVM_HOME/store)")
    common.add_argument("--vo", action="append", default=[], metavar="VO",
                        help="act as a member of this VO (repeatable)")
    common.add_argument("--json", action="store_true", help="print JSON")

    def command(name: str, handler, help_text: str,
                description: str = "") -> argparse.ArgumentParser:
        parser = image_commands.add_parser(name, parents=[common], help=help_text,
                                           description=description or help_text)
        parser.set_defaults(func=handler)
        return parser

    register = command("register", _register, "register an image: metadata + its files",
                       "Verify the files against the metadata (sha512, size) and register "
                       "the image atomically.  Without FILEs, the files named in the metadata "
                       "are taken from the metadata file's directory.")
    register.add_argument("metadata", type=Path, metavar="META.json")
    register.add_argument("files", type=Path, nargs="*", metavar="FILE")

    listing = command("list", _list, "list the images you may see")
    listing.add_argument("--name", help="only versions of this name")
    listing.add_argument("--all", action="store_true", help="include deleted images")

    show = command("show", _show, "show an image's metadata (by id, name or name:version)")
    show.add_argument("image", metavar="IMAGE")
    show.add_argument("--lineage", action="store_true", help="also list its base versions")

    match = command("match", _match, "rank the images that fit a requirement, and say why "
                    "the others do not",
                    "Exit 0 when an image fits, 3 when none does.")
    match.add_argument("requirements", type=Path, metavar="REQ.json")
    match.add_argument("--limit", type=int, default=None, help="show at most N candidates")

    new_version = command("new-version", _new_version,
                          "register a new version of an image from a JSON merge patch",
                          "PATCH.json is an RFC 7386 merge patch applied to the image's "
                          "metadata; give FILEs for content that changed.")
    new_version.add_argument("image", metavar="IMAGE")
    new_version.add_argument("patch", type=Path, metavar="PATCH.json")
    new_version.add_argument("files", type=Path, nargs="*", metavar="FILE")

    for name, status in (("deprecate", "deprecated"), ("delete", "deleted")):
        parser = command(name, _set_status, f"mark an image {status}"
                         + (" (the record stays; unused blobs are removed)"
                            if status == "deleted" else ""))
        parser.add_argument("image", metavar="IMAGE")
        parser.set_defaults(status=status)


# --------------------------------------------------------------------------- plumbing --------

def local_caller(vos: list[str]):
    from image_repo.access import Caller

    user = pwd.getpwuid(os.getuid()).pw_name
    groups = [grp.getgrgid(os.getgid()).gr_name]
    for gid in os.getgroups():
        with contextlib.suppress(KeyError):
            name = grp.getgrgid(gid).gr_name
            if name not in groups:
                groups.append(name)
    return Caller.of(user, groups=groups, vos=vos, admin=os.getuid() == 0)


def database_url(args: argparse.Namespace) -> str:
    if args.db:
        return args.db
    if os.environ.get("GRIDVM_DB_URL"):
        return os.environ["GRIDVM_DB_URL"]
    home = gridvm_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(home / 'catalogue.sqlite').resolve()}"


@contextlib.contextmanager
def opened(args: argparse.Namespace) -> Iterator[Any]:
    """The repository, with repository errors turned into one-line CLI errors."""
    from image_repo.errors import ImageNotFound, RepositoryError
    from image_repo.repository import ImageRepository

    try:
        repo = ImageRepository(database_url(args), args.store or gridvm_home() / "store")
    except RepositoryError as err:
        raise _cli_error(err) from None
    except Exception as err:  # a wrong URL, an unreachable server, …
        raise CliError(f"cannot open the catalogue: {_first_line(err)}", EXIT_FAILED) from None
    try:
        yield repo
    except ImageNotFound as err:
        raise CliError(err.message, EXIT_NOT_FOUND, reason=err.reason) from None
    except RepositoryError as err:
        raise _cli_error(err) from None
    finally:
        repo.close()


def _cli_error(err) -> CliError:
    return CliError(str(err), EXIT_BY_REASON.get(err.reason, EXIT_FAILED), reason=err.reason)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise CliError(f"{path}: {err.strerror}", EXIT_USAGE, reason="BAD_REQUEST") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"{path}: not valid JSON: line {err.lineno} column {err.colno}: "
                       f"{err.msg}", EXIT_USAGE, reason="BAD_REQUEST") from None


def _check_files(files: list[Path]) -> None:
    for path in files:
        if not path.is_file():
            raise CliError(f"{path}: no such file", EXIT_USAGE, reason="BAD_REQUEST")


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    print()


# --------------------------------------------------------------------------- commands --------

def _register(args: argparse.Namespace) -> int:
    doc = read_json(args.metadata)
    files = list(args.files)
    if not files and isinstance(doc, dict):
        content = (doc.get("origin") or {}).get("content") or []
        names = [ref.get("file") for ref in content if isinstance(ref, dict)]
        files = [args.metadata.parent / name for name in names if isinstance(name, str)
                 and (args.metadata.parent / name).is_file()]
    _check_files(files)
    with opened(args) as repo:
        record = repo.register(doc, files, local_caller(args.vo))
    if args.json:
        _print_json(record.to_dict())
    else:
        print(f"registered {record.ref} (id {record.id}, {record.metadata.origin.size} bytes)")
    return 0


def _list(args: argparse.Namespace) -> int:
    with opened(args) as repo:
        records = repo.list(local_caller(args.vo), name=args.name, include_deleted=args.all)
    if args.json:
        _print_json([r.to_dict() for r in records])
        return 0
    rows = [("IMAGE", "STATUS", "OWNER", "ARCH", "OS", "APPLICATIONS", "ID")]
    for r in records:
        meta = r.metadata
        os_ = meta.semantic.os
        os_text = " ".join(x for x in (os_.distro, os_.version) if x) if os_ else ""
        apps = ",".join(a.name for a in meta.idb.applications)
        rows.append((r.ref, r.status, r.owner, meta.origin.architecture or "", os_text,
                     apps, r.id[:12]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    caller = local_caller(args.vo)
    with opened(args) as repo:
        record = repo.get(args.image, caller)
        lineage = repo.lineage(record.id, caller) if args.lineage else None
    doc = record.to_dict()
    if lineage is not None:
        doc["lineage"] = [{"id": r.id, "ref": r.ref, "status": r.status} for r in lineage]
    _print_json(doc)
    return 0


def _match(args: argparse.Namespace) -> int:
    requirements = read_json(args.requirements)
    with opened(args) as repo:
        result = repo.match(requirements, local_caller(args.vo), limit=args.limit)
        rejected = result.rejected
    if args.json:
        _print_json(result.to_dict())
    else:
        if result.candidates:
            print("Candidates, best first:")
            for rank, candidate in enumerate(result.candidates, 1):
                stated = ", ".join(candidate.stated) or "nothing required is stated"
                note = "" if candidate.status == "active" else f" [{candidate.status}]"
                print(f"  {rank}. {candidate.ref}{note}  (id {candidate.id[:12]}; states: "
                      f"{stated})")
        if rejected:
            print("Rejected:")
            for rejection in rejected:
                print(f"  {rejection.ref}: " + "; ".join(r.message for r in rejection.reasons))
    if not result.candidates:
        raise CliError(result.summary(limit=3), EXIT_NOT_FOUND, reason="NO_MATCHING_IMAGE")
    return 0


def _new_version(args: argparse.Namespace) -> int:
    patch = read_json(args.patch)
    _check_files(args.files)
    with opened(args) as repo:
        record = repo.new_version(args.image, patch, local_caller(args.vo), files=args.files)
    if args.json:
        _print_json(record.to_dict())
    else:
        print(f"registered {record.ref} (id {record.id}, base {record.base_id})")
    return 0


def _set_status(args: argparse.Namespace) -> int:
    with opened(args) as repo:
        record = repo.set_status(args.image, args.status, local_caller(args.vo))
    if args.json:
        _print_json(record.to_dict())
    else:
        print(f"{record.ref} is now {record.status}")
    return 0
