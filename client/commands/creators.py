"""``gridvm image register|new-version|app|deprecate|activate|delete|endorse|withdraw|export|
import``: creators' work on a site's images over REST.

``register`` computes each file's sha512 and size itself, sends the document, then each file
the site does not hold yet (with progress); ``--dry-run`` shows the validated document (for a
new version, the diff to its predecessor) and changes nothing.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from client.commands import add_command
from client.errors import EXIT_USAGE, CliError

#: fields the site keeps, left out of a new version's diff
KEPT = ("version", "status", "created", "updated", "counters", "ratings", "base_image")


def register(image_commands: argparse._SubParsersAction) -> None:
    reg = add_command(image_commands, "register", _register,
                      "register an image on the site: its metadata, then its files",
                      description="Register an image: METADATA.json (the document of "
                      "docs/image-metadata.md) and the files its origin.content lists.  The "
                      "sha512 and size of each FILE are computed here and filled in; files "
                      "the site holds already need not be given.  Needs the creator role.")
    reg.add_argument("metadata", metavar="METADATA.json")
    reg.add_argument("files", nargs="*", metavar="FILE", help="a content file (by its name)")
    reg.add_argument("--dry-run", action="store_true",
                     help="show the validated document; register nothing")

    ver = add_command(image_commands, "new-version", _new_version,
                      "make a new version of an image from a JSON merge patch",
                      description="A new version of IMAGE: PATCH.json is a JSON merge patch "
                      "(RFC 7386) of its document; each --file replaces the content file of "
                      "its name (sha512 and size computed here).")
    ver.add_argument("image", metavar="IMAGE", help="id, name or name:version")
    ver.add_argument("patch", nargs="?", metavar="PATCH.json", help="the merge patch")
    ver.add_argument("--file", action="append", default=[], metavar="FILE",
                     help="a new content file (repeatable)")
    ver.add_argument("--dry-run", action="store_true",
                     help="show the diff to the predecessor; change nothing")

    app = image_commands.add_parser("app", help="one IDB application more or less (a new "
                                    "version keeping the others)")
    app_commands = app.add_subparsers(dest="app_command", metavar="APP_COMMAND")
    app_commands.required = True
    add = add_command(app_commands, "add", _app_add, "add an application (a new version)")
    add.add_argument("image", metavar="IMAGE")
    add.add_argument("name", metavar="NAME")
    add.add_argument("version", nargs="?", metavar="VERSION")
    add.add_argument("--executable", metavar="PATH", help="absolute path in the guest")
    add.add_argument("--description")
    remove = add_command(app_commands, "remove", _app_remove,
                         "remove an application (a new version)")
    remove.add_argument("image", metavar="IMAGE")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("version", nargs="?", metavar="VERSION")

    for name, help_text in (("deprecate", "mark an image deprecated"),
                            ("activate", "make a deprecated image active again"),
                            ("delete", "delete an image (its files go unless others use them)")):
        status = add_command(image_commands, name, _status, help_text)
        status.add_argument("image", metavar="IMAGE")
        status.set_defaults(action=name)

    endorse = add_command(image_commands, "endorse", _endorse,
                          "attach an endorsement (statement, signature, certificate)")
    endorse.add_argument("image", metavar="IMAGE")
    endorse.add_argument("endorsement", metavar="ENDORSEMENT.json")
    export = add_command(image_commands, "export", _export,
                         "download an image with its bases as a bundle (a tar)",
                         json_flag=False)
    export.add_argument("image", metavar="IMAGE")
    export.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="the bundle file to write")
    imported = add_command(image_commands, "import", _import,
                           "register the images of a bundle on the site")
    imported.add_argument("bundle", metavar="FILE")

    withdraw = add_command(image_commands, "withdraw", _withdraw,
                           "withdraw an endorsement by its certificate's fingerprint",
                           json_flag=False)
    withdraw.add_argument("image", metavar="IMAGE")
    withdraw.add_argument("fingerprint", metavar="FINGERPRINT")


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except ValueError as err:
        raise CliError(f"{path} is not JSON: {err}", EXIT_USAGE) from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: {what} must be a JSON object", EXIT_USAGE)
    return doc


def _local_files(paths: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for text in paths:
        path = Path(text)
        if not path.is_file():
            raise CliError(f"{text} is not a file", EXIT_USAGE)
        if path.name in files:
            raise CliError(f"two files are named {path.name}", EXIT_USAGE)
        files[path.name] = path
    return files


def _fill_content(content: Any, files: dict[str, Path], where: str) -> None:
    """Set sha512 and size of the content refs named like ``files``."""
    from client.transfer import describe_file

    if not isinstance(content, list):
        raise CliError(f"{where}: origin.content must be a list of files", EXIT_USAGE)
    listed = {ref.get("file"): ref for ref in content if isinstance(ref, dict)}
    for name, path in files.items():
        if name not in listed:
            raise CliError(f"{name} is not in origin.content of {where} (listed: "
                           f"{', '.join(str(n) for n in listed) or 'none'})", EXIT_USAGE)
        listed[name]["sha512"], listed[name]["size"] = describe_file(path)


def _register(args: argparse.Namespace) -> int:
    from client.settings import connect

    metadata = _read_json(args.metadata, "the metadata")
    files = _local_files(args.files)
    _fill_content((metadata.get("origin") or {}).get("content", []), files, args.metadata)
    site = connect(args)
    if args.dry_run:
        return _show_preview(args, site.register_image(metadata, dry_run=True).json())
    return _finish(args, site, site.register_image(metadata), files)


def _new_version(args: argparse.Namespace) -> int:
    from client.settings import connect

    patch = _read_json(args.patch, "a merge patch") if args.patch else {}
    files = _local_files(args.file)
    site = connect(args)
    if files:
        origin = patch.setdefault("origin", {})
        if "content" not in origin:  # the predecessor's files, the given ones replaced
            origin["content"] = site.image(args.image)["metadata"]["origin"]["content"]
        _fill_content(origin["content"], files, args.patch or args.image)
    if args.dry_run:
        return _show_preview(args, site.new_image_version(args.image, patch, True).json())
    return _finish(args, site, site.new_image_version(args.image, patch), files)


def _show_preview(args: argparse.Namespace, preview: dict[str, Any]) -> int:
    from client.output import print_json

    if args.json:
        print_json(preview)
        return 0
    new = preview.get("metadata") or {}
    before = (preview.get("predecessor") or {}).get("metadata")
    if before is None:
        print_json(new)
    else:
        old_text, new_text = _comparable(before), _comparable(new)
        label = preview["predecessor"].get("ref", "the predecessor")
        diff = list(difflib.unified_diff(old_text, new_text, label, f"{label} + patch",
                                         lineterm=""))
        print("\n".join(diff) if diff else "no change to the document")
    for name, info in (preview.get("files") or {}).items():
        where = "held by the site" if info.get("inStore") else "to upload"
        print(f"{name}: {info.get('size')} bytes, {where}", file=sys.stderr)
    print("dry run: the document is valid; nothing was changed", file=sys.stderr)
    return 0


def _comparable(doc: dict[str, Any]) -> list[str]:
    doc = json.loads(json.dumps(doc))
    for key in KEPT:
        doc.get("general", {}).pop(key, None)
    return json.dumps(doc, indent=2, sort_keys=True).splitlines()


def _finish(args: argparse.Namespace, site, reply, files: dict[str, Path]) -> int:
    """Send the files a pending registration waits for; print the image made."""
    from client.output import print_json
    from client.transfer import ProgressReader

    doc = reply.json()
    if doc.get("status") == "WAITING_FOR_FILES":
        missing = doc.get("missing") or []
        absent = [name for name in missing if name not in files]
        if absent:
            raise CliError(f"the site waits for {', '.join(absent)}: give "
                           f"{'them' if len(absent) > 1 else 'it'} on the command line "
                           f"(registration {doc.get('id')} waits until {doc.get('expires')})",
                           EXIT_USAGE)
        for name in missing:
            info = doc["files"][name]
            with files[name].open("rb") as stream:
                reader = ProgressReader(stream, int(info["size"]), name)
                reply = site.upload_image_file(info["href"], reader, int(info["size"]))
                reader.finish()
        doc = reply.json()
    if args.json:
        print_json(doc)
    else:
        verb = "already registered" if reply.status == 200 else "registered"
        print(f"{verb} {doc.get('ref')} ({doc.get('id')})")
    return 0


def _print_image(args: argparse.Namespace, doc: dict[str, Any], what: str) -> int:
    from client.output import print_json

    if args.json:
        print_json(doc)
    else:
        print(f"{what} {doc.get('ref')} ({doc.get('id')}): {doc.get('status')}")
    return 0


def _app_add(args: argparse.Namespace) -> int:
    from client.settings import connect

    application = {"name": args.name}
    for key in ("version", "executable", "description"):
        if getattr(args, key):
            application[key] = getattr(args, key)
    doc = connect(args).add_application(args.image, application)
    return _print_image(args, doc, f"{args.name} added:")


def _app_remove(args: argparse.Namespace) -> int:
    from client.settings import connect

    doc = connect(args).remove_application(args.image, args.name, args.version)
    return _print_image(args, doc, f"{args.name} removed:")


def _status(args: argparse.Namespace) -> int:
    from client.settings import connect

    site = connect(args)
    if args.action == "delete":
        doc = site.delete_image(args.image)
    else:
        doc = site.image_action(args.image, args.action)
    return _print_image(args, doc, "image")


def _endorse(args: argparse.Namespace) -> int:
    from client.output import print_json
    from client.settings import connect

    stored = connect(args).endorse_image(args.image,
                                         _read_json(args.endorsement, "an endorsement"))
    if args.json:
        print_json(stored)
    else:
        print(f"endorsed by {stored.get('endorser')} ({stored.get('fingerprint')}) until "
              f"{stored.get('expires')}")
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    from client.settings import connect

    connect(args).withdraw_endorsement(args.image, args.fingerprint)
    print(f"endorsement {args.fingerprint} withdrawn from {args.image}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from client.settings import connect

    target = Path(args.output)
    partial = target.with_name(target.name + ".part")
    site = connect(args)
    try:
        with partial.open("wb") as sink:
            site.export_image(args.image, sink)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    print(f"{args.image}: {target.stat().st_size} bytes written to {target}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from client.output import print_json
    from client.settings import connect
    from client.transfer import ProgressReader

    path = Path(args.bundle)
    if not path.is_file():
        raise CliError(f"{args.bundle} is not a file", EXIT_USAGE)
    size = path.stat().st_size
    site = connect(args)
    with path.open("rb") as stream:
        reader = ProgressReader(stream, size, path.name)
        answer = site.import_bundle(reader, size)
        reader.finish()
    if args.json:
        print_json(answer)
        return 0
    for image in answer.get("imported") or []:
        print(f"imported {image.get('ref')} ({image.get('id')})")
    for image_id in answer.get("skipped") or []:
        print(f"already here: {image_id}")
    for note in answer.get("leftOut") or []:
        print(f"left out: {note}", file=sys.stderr)
    return 0
