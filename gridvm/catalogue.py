"""``gridvm catalogue build|register|list|show|match|new-version|deprecate|delete|endorse|
withdraw|verify``: the commands of image creators and endorsers, working on this machine —
the guest image builder, a local catalogue and blob store — not on a site (the site's
images are ``gridvm image search``).

The catalogue is ``--db URL``, else ``$GRIDVM_DB_URL``, else the SQLite file
``$GRIDVM_HOME/catalogue.sqlite``; the store is ``--store DIR``, else ``$GRIDVM_HOME/store``.
The caller is the local user with their Unix groups (root is an administrator); ``--vo``
adds VO memberships.  ``endorse`` signs with a private key that stays on this machine: only
the statement, the signature and the certificate go into the catalogue.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import grp
import json
import os
import pwd
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from base.paths import gridvm_home
from base.reasons import Reason
from client.errors import EXIT_AUTH, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_USAGE, CliError

EXIT_BY_REASON = {
    Reason.BAD_REQUEST: EXIT_USAGE,
    Reason.IMAGE_CHECKSUM_MISMATCH: EXIT_USAGE,
    Reason.NOT_AUTHORIZED: EXIT_AUTH,
    Reason.NO_MATCHING_IMAGE: EXIT_NOT_FOUND,
    Reason.IMAGE_UNTRUSTED: EXIT_FAILED,
}
DEFAULT_DAYS = 365
#: The local commands that were ``gridvm image VERB`` and are now ``gridvm catalogue VERB``.
FORMER_IMAGE_VERBS = frozenset({"build", "register", "list", "show", "match", "new-version",
                                "deprecate", "delete", "endorse", "withdraw", "verify"})


#: former local verbs that ``gridvm image`` has again, against a site
SITE_IMAGE_VERBS = frozenset({"list", "register", "new-version", "deprecate", "delete",
                              "endorse", "withdraw"})
#: options only the local form had
_LOCAL_OPTIONS = ("--db", "--store")


def refuse_former_form(argv: Sequence[str]) -> None:
    """A usage error naming the new command for a former local ``gridvm image VERB …``: a
    verb the site commands lack, or one they have given with a local option (``--db``)."""
    words = [word for word in argv if not word.startswith("-")]
    local = any(word.split("=")[0] in _LOCAL_OPTIONS for word in argv)
    if len(words) > 1 and words[0] == "image" and words[1] in FORMER_IMAGE_VERBS and (
            local or words[1] not in SITE_IMAGE_VERBS):
        raise CliError(f"`gridvm image {words[1]}` moved: use `gridvm catalogue {words[1]}` "
                       "(local image work; a site's images: `gridvm image --help`)", EXIT_USAGE)


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "catalogue", help="build images and manage a local catalogue (image creators)",
        description="Build guest images and register, match and endorse them in a catalogue "
        "on this machine (--db).  A site's images: `gridvm image --help`.")
    catalogue_commands = group.add_subparsers(dest="catalogue_command",
                                              metavar="CATALOGUE_COMMAND")
    catalogue_commands.required = True
    _add_build(catalogue_commands)

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
        parser = catalogue_commands.add_parser(name, parents=[common], help=help_text,
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
                    "Exit 0 when an image fits, 3 when none does.  With --anchors and "
                    "--require-endorsement, only images a trusted, unexpired endorsement "
                    "vouches for fit (as on a site with require_endorsement = true).")
    match.add_argument("requirements", type=Path, metavar="REQ.json")
    match.add_argument("--limit", type=int, default=None, help="show at most N candidates")
    match.add_argument("--anchors", type=Path, metavar="BUNDLE.pem",
                       help="PEM bundle of the endorser or CA certificates to trust")
    match.add_argument("--require-endorsement", action="store_true",
                       help="reject images no endorsement by an anchor vouches for now")

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

    endorse = command("endorse", _endorse, "sign an endorsement of an image and attach it",
                      "Sign a statement about IMAGE (its id, name, version and the sha512 of "
                      "every content file, valid until the expiry) with KEY.pem, and attach "
                      "it with CERT.pem.  The key stays on this machine.  A newer endorsement "
                      "by the same certificate replaces the older one.  Exit 1 "
                      "(IMAGE_UNTRUSTED) when the catalogue refuses it, 2 for bad input.")
    endorse.add_argument("image", metavar="IMAGE")
    endorse.add_argument("--cert", type=Path, required=True, metavar="CERT.pem",
                         help="your endorser certificate")
    endorse.add_argument("--key", type=Path, required=True, metavar="KEY.pem",
                         help="its private key (RSA, ECDSA or Ed25519; PEM)")
    until = endorse.add_mutually_exclusive_group()
    until.add_argument("--expires", metavar="YYYY-MM-DD",
                       help="expire at 00:00 UTC of this day (or at an ISO time ending in Z)")
    until.add_argument("--days", type=int, metavar="N",
                       help=f"expire N days from now (default {DEFAULT_DAYS})")
    endorse.add_argument("--key-password-stdin", action="store_true",
                         help="read the key's passphrase from the first line of stdin "
                         "(else it is asked on the terminal when the key is encrypted)")

    withdraw = command("withdraw", _withdraw, "remove an endorsement from an image",
                       "Remove the endorsement of IMAGE by a certificate, named by the file "
                       "or by its SHA-256 fingerprint (or a unique prefix, 8 hex digits or "
                       "more).  The user who attached it, the image's owner and "
                       "administrators may.")
    withdraw.add_argument("image", metavar="IMAGE")
    which = withdraw.add_mutually_exclusive_group(required=True)
    which.add_argument("--cert", type=Path, metavar="CERT.pem")
    which.add_argument("--fingerprint", metavar="HEX")

    export = command("export", _export, "write an image with its bases as a bundle",
                     "Write IMAGE, its visible bases and their endorsements as a bundle (a "
                     "tar, image_repo/bundle.py) that `gridvm image import` registers on a "
                     "site with the ids kept, so that the endorsements still hold there.")
    export.add_argument("image", metavar="IMAGE")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")

    listing = command(
        "list-export", _list_export, "write a signed HEPiX image list of chosen images",
        "Write IMAGE... as a HEPiX image list (the JSON form vmcatcher and cloudkeeper read: "
        "dc:identifier, hv:uri, sl:checksum:sha512, hv:size, endorser DN and CA, "
        "dc:date:expires), clear-signed S/MIME with CERT.pem and KEY.pem.  Each file's "
        "hv:uri is BASE_URL/IMAGE_ID/FILE (a site serves them at "
        "BASE/imagelists/files/...).  The key stays on this machine.")
    listing.add_argument("images", nargs="+", metavar="IMAGE")
    listing.add_argument("--cert", type=Path, required=True, metavar="CERT.pem",
                         help="the endorser certificate that signs the list")
    listing.add_argument("--key", type=Path, required=True, metavar="KEY.pem",
                         help="its private key (PEM, not encrypted)")
    listing.add_argument("--base-url", required=True, metavar="URL",
                         help="where the files can be downloaded (BASE_URL/IMAGE_ID/FILE)")
    listing.add_argument("--days", type=int, default=28, metavar="N",
                         help="the list expires N days from now (default 28)")
    listing.add_argument("--title", default=None, help="the list's dc:title")
    listing.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")

    verify = command("verify", _verify, "check an image's endorsements against trust anchors",
                     "Verify every endorsement of IMAGE (signature, files, expiry, "
                     "certificate) and whether an anchor vouches for its certificate: the "
                     "anchor itself or the CA that directly issued it.  Exit 0 only when "
                     "IMAGE is trusted, 1 (IMAGE_UNTRUSTED) when not.")
    verify.add_argument("image", metavar="IMAGE")
    verify.add_argument("--anchors", type=Path, required=True, metavar="BUNDLE.pem",
                        help="PEM bundle of the endorser or CA certificates to trust")


def _add_build(catalogue_commands: argparse._SubParsersAction) -> None:
    build = catalogue_commands.add_parser(
        "build",
        help="build a guest image from Debian packages or a recipe (cached)",
        description="Assemble a guest (cloud kernel, busybox, python3, the gridvm TSI agent), "
        "or what a recipe asks for (docs/creators.md), and write it with a metadata file "
        "ready for `gridvm catalogue register`. Progress goes to standard error.",
    )
    what = build.add_mutually_exclusive_group()
    what.add_argument("--kind", choices=("initramfs", "qcow2", "erofs", "cloud", "cloud-crun",
                                         "container"), default=None,
                      help="gridvm's own image: initramfs, qcow2 or erofs (the micro guest, "
                      "default initramfs; erofs: a read-only root shared by every instance), "
                      "cloud (a standard cloud image: mmdebstrap, cloud-init, "
                      "python3, its own bootloader), cloud-crun (that with crun, for CONTAINER "
                      "jobs) or container (a busybox OCI container image packed by umoci)")
    what.add_argument("--recipe", type=Path, default=None, metavar="FILE.toml",
                      help="build the image this recipe describes (name, kind, packages, "
                      "files, users, applications, metadata)")
    build.add_argument("--base-disk", type=Path, default=None, metavar="PATH",
                       help="the disk of the registered image a recipe's base key names "
                       "(its build directory, with metadata.json): the recipe is built as a "
                       "layer on it")
    build.add_argument("--output", type=Path, default=None, help="image directory "
                       "(default: the build cache under $GRIDVM_HOME/images)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--json", action="store_true", help="print the result as JSON")
    build.set_defaults(func=_build)


# --------------------------------------------------------------------------- plumbing --------

def local_caller(vos: list[str]):
    from base.identity import Caller

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
        raise CliError(f"{path}: {err.strerror}", EXIT_USAGE, reason=Reason.BAD_REQUEST) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"{path}: not valid JSON: line {err.lineno} column {err.colno}: "
                       f"{err.msg}", EXIT_USAGE, reason=Reason.BAD_REQUEST) from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CliError(f"{path}: {err.strerror}", EXIT_USAGE, reason=Reason.BAD_REQUEST) from None


def _bad_input(err) -> CliError:
    return CliError(str(err), EXIT_USAGE, reason=Reason.BAD_REQUEST)


def _policy(anchors: Path, require: bool = False):
    from image_repo.errors import BadRequest
    from image_repo.trust import TrustPolicy

    try:
        return TrustPolicy.from_file(anchors, require=require)
    except BadRequest as err:
        raise _bad_input(err) from None


def _expiry(args: argparse.Namespace) -> dt.datetime:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    if args.expires is None:
        days = DEFAULT_DAYS if args.days is None else args.days
        if days < 1:
            raise CliError(f"--days must be 1 or more, got {days}", EXIT_USAGE,
                           reason=Reason.BAD_REQUEST)
        return now + dt.timedelta(days=days)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.expires):
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime(args.expires, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    from image_repo.errors import BadRequest
    from image_repo.trust import parse_utc

    try:
        return parse_utc(args.expires, "--expires")
    except BadRequest:
        raise CliError(f"--expires: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, got "
                       f"{args.expires!r}", EXIT_USAGE, reason=Reason.BAD_REQUEST) from None


def _sign(record, args: argparse.Namespace, cert_pem: bytes, key_pem: bytes,
          expires: dt.datetime):
    """The endorsement of ``record``, signed here; asks for the key's passphrase if needed."""
    from image_repo.errors import BadRequest
    from image_repo.trust import PassphraseNeeded, create_endorsement

    password = sys.stdin.readline().rstrip("\n").encode() if args.key_password_stdin else None
    try:
        try:
            return create_endorsement(record.identity, cert_pem, key_pem, expires=expires,
                                      password=password)
        except PassphraseNeeded:
            if not sys.stdin.isatty():
                raise CliError(f"{args.key} is encrypted: give its passphrase with "
                               "--key-password-stdin", EXIT_USAGE,
                               reason=Reason.BAD_REQUEST) from None
            password = getpass.getpass(f"passphrase of {args.key}: ").encode()
            return create_endorsement(record.identity, cert_pem, key_pem, expires=expires,
                                      password=password)
    except BadRequest as err:
        raise _bad_input(err) from None


def _check_files(files: list[Path]) -> None:
    for path in files:
        if not path.is_file():
            raise CliError(f"{path}: no such file", EXIT_USAGE, reason=Reason.BAD_REQUEST)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    print()


# --------------------------------------------------------------------------- commands --------

def _build(args: argparse.Namespace) -> int:
    from image_builder import BuildError, build_image, build_recipe, load_recipe

    report = ProgressReport(sys.stderr)
    try:
        if args.recipe is not None:
            built = build_recipe(load_recipe(args.recipe), output_root=args.output,
                                 force=args.force, progress=report, base_disk=args.base_disk)
        elif args.base_disk is not None:
            raise BuildError("--base-disk: only with --recipe", bad_input=True)
        else:
            built = build_image(args.kind or "initramfs", output_root=args.output,
                                force=args.force, progress=report)
        report.close()
    except BuildError as err:
        report.close()
        raise CliError(str(err), EXIT_USAGE if err.bad_input else EXIT_FAILED,
                       reason=err.reason) from None
    if args.json:
        _print_json(built.summary())
    else:
        state = "cached" if built.cached else f"built in {built.seconds:.1f} s"
        print(f"{built.kind} image {built.key[:12]} ({state})")
        print(f"  metadata: {built.metadata_path}")
        for path in built.files:
            print(f"  {path.name}: {path}")
    return 0


class ProgressReport:
    """Build progress as ``[build] downloading 3/17 packages`` lines; on a terminal a counted
    phase rewrites its line, elsewhere only its first and last count are printed."""

    def __init__(self, stream, prefix: str = "[build]") -> None:
        self.stream, self.prefix = stream, prefix
        self.tty = stream.isatty()
        self.open_line = False
        self.phase = ""

    def __call__(self, step) -> None:
        text = f"{self.prefix} {step}"
        if self.tty and step.total:
            self.stream.write(f"\r\033[K{text}")
            self.open_line = step.done < step.total
            if not self.open_line:
                self.stream.write("\n")
        elif not step.total or step.phase != self.phase or step.done == step.total:
            self.close()
            self.stream.write(text + "\n")
        self.phase = step.phase
        self.stream.flush()

    def close(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False


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
    rows = [("IMAGE", "STATUS", "OWNER", "ARCH", "OS", "APPLICATIONS", "ENDORSED", "ID")]
    for r in records:
        meta = r.metadata
        os_ = meta.semantic.os
        os_text = " ".join(x for x in (os_.distro, os_.version) if x) if os_ else ""
        apps = ",".join(a.name for a in meta.idb.applications)
        rows.append((r.ref, r.status, r.owner, meta.origin.architecture or "", os_text,
                     apps, _endorsed(r.endorsements), r.id[:12]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def _endorsed(endorsements) -> str:
    """``-``, or how many endorsements and until when the last one lasts (not a verdict:
    whom to trust is ``verify``'s and the site's business)."""
    if not endorsements:
        return "-"
    last = max(e.expires for e in endorsements)
    return f"{len(endorsements)} until {last:%Y-%m-%d}"


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
    if args.require_endorsement != (args.anchors is not None):
        raise CliError("--anchors and --require-endorsement go together", EXIT_USAGE,
                       reason=Reason.BAD_REQUEST)
    requirements = read_json(args.requirements)
    policy = _policy(args.anchors, require=True) if args.anchors else None
    with opened(args) as repo:
        result = repo.match(requirements, local_caller(args.vo), limit=args.limit,
                            policy=policy)
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
        raise CliError(result.summary(limit=3), EXIT_NOT_FOUND, reason=Reason.NO_MATCHING_IMAGE)
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


def _export(args: argparse.Namespace) -> int:
    from image_repo.bundle import export_bundle

    with opened(args) as repo:
        path = export_bundle(repo, args.image, local_caller(args.vo), args.output)
    print(f"{args.image}: {path.stat().st_size} bytes written to {path}")
    return 0


def _list_export(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from image_repo import imagelist, smime
    from image_repo.errors import BadRequest

    if args.days < 1:
        raise CliError(f"--days must be 1 or more, got {args.days}", EXIT_USAGE,
                       reason=Reason.BAD_REQUEST)
    if not args.base_url.startswith(("https://", "http://")):
        raise CliError(f"--base-url must be an http(s) URL, got {args.base_url!r}", EXIT_USAGE,
                       reason=Reason.BAD_REQUEST)
    try:
        certificate = x509.load_pem_x509_certificates(_read_bytes(args.cert))[0]
        key = serialization.load_pem_private_key(_read_bytes(args.key), None)
    except (ValueError, TypeError) as err:
        raise CliError(f"{args.cert} / {args.key}: not a usable certificate and unencrypted "
                       f"key: {err}", EXIT_USAGE, reason=Reason.BAD_REQUEST) from None
    base = args.base_url.rstrip("/")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    caller = local_caller(args.vo)
    with opened(args) as repo:
        records = [repo.get(ref, caller) for ref in args.images]
        try:
            built = imagelist.build(
                records, imagelist.Endorser(smime.slash_dn(certificate.subject),
                                            smime.slash_dn(certificate.issuer)),
                identifier=str(uuid.uuid4()), created=now,
                expires=now + dt.timedelta(days=args.days),
                url_of=lambda record, name: f"{base}/{record.id}/{name}", title=args.title)
        except BadRequest as err:
            raise _bad_input(err) from None
    args.output.write_bytes(smime.sign(built.to_json(), certificate, key))
    print(f"{len(built.images)} image(s) listed until {built.expires:%Y-%m-%dT%H:%M:%SZ}, "
          f"signed by {smime.slash_dn(certificate.subject)}: {args.output}")
    return 0


def _set_status(args: argparse.Namespace) -> int:
    with opened(args) as repo:
        record = repo.set_status(args.image, args.status, local_caller(args.vo))
    if args.json:
        _print_json(record.to_dict())
    else:
        print(f"{record.ref} is now {record.status}")
    return 0


def _endorsement_command(args: argparse.Namespace, change, said) -> int:
    """``change(repo, record, caller)`` on IMAGE gives a stored endorsement; print it as
    JSON or as ``said(record, stored)``."""
    caller = local_caller(args.vo)
    with opened(args) as repo:
        record = repo.get(args.image, caller)
        stored = change(repo, record, caller)
    if args.json:
        _print_json(stored.to_dict())
    else:
        print(said(record, stored))
    return 0


def _endorse(args: argparse.Namespace) -> int:
    cert_pem, key_pem = _read_bytes(args.cert), _read_bytes(args.key)
    expires = _expiry(args)
    return _endorsement_command(
        args, lambda repo, record, caller: repo.endorse(
            record.id, _sign(record, args, cert_pem, key_pem, expires), caller),
        lambda record, stored: f"endorsed {record.ref} as {stored.endorser} until "
        f"{stored.to_dict()['expires']} (certificate {stored.fingerprint[:16]})")


def _withdraw(args: argparse.Namespace) -> int:
    fingerprint = args.fingerprint
    if args.cert is not None:
        from image_repo.errors import BadRequest
        from image_repo.trust import fingerprint as fingerprint_of
        from image_repo.trust import load_certificate

        try:
            fingerprint = fingerprint_of(load_certificate(_read_bytes(args.cert),
                                                          str(args.cert)))
        except BadRequest as err:
            raise _bad_input(err) from None
    return _endorsement_command(
        args, lambda repo, record, caller: repo.withdraw(record.id, fingerprint, caller),
        lambda record, stored: f"withdrew the endorsement of {record.ref} by "
        f"{stored.endorser} (certificate {stored.fingerprint[:16]})")


def _verify(args: argparse.Namespace) -> int:
    policy = _policy(args.anchors)
    caller = local_caller(args.vo)
    with opened(args) as repo:
        record = repo.get(args.image, caller)
        verdict = repo.assess(record.id, caller, policy)
    if args.json:
        _print_json({"id": record.id, "ref": record.ref, **verdict.to_dict()})
    else:
        print(f"{record.ref} (id {record.id[:12]}): "
              + ("trusted" if verdict.trusted else "NOT trusted"))
        for finding in verdict.findings:
            print(f"  {finding.code:<22}{finding.message}")
    if not verdict.trusted:
        raise CliError(f"{record.ref} is not trusted by {args.anchors}: {verdict.message}",
                       EXIT_FAILED, reason=Reason.IMAGE_UNTRUSTED)
    return 0
