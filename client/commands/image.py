"""``gridvm image …``: a site's VM images, over REST: ``list`` and ``search`` for users;
``register``, ``new-version``, ``app add|remove``, ``deprecate``, ``activate``, ``delete``,
``endorse`` and ``withdraw`` for creators (the site's ``creator`` role) and administrators."""

from __future__ import annotations

import argparse

from base.reasons import Reason
from client.errors import CliError


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("image", help="search, register and change a site's VM images",
                                description="The images of a site, over REST.  Operators' "
                                "work on a local catalogue (build, bundles, ...): "
                                "`gridvm catalogue`.")
    image_commands = group.add_subparsers(dest="image_command", metavar="IMAGE_COMMAND")
    image_commands.required = True
    _add_list(image_commands)
    _add_search(image_commands)
    from client.commands import creators

    creators.register(image_commands)


def _add_list(image_commands: argparse._SubParsersAction) -> None:
    from client.settings import add_connection_flags

    listing = image_commands.add_parser(
        "list", help="the site's images you may use: status, owner, OS, trust",
        description="The images of the site that you may see, newest first per name: status "
        "(active, deprecated), owner (a subscription's images are owned by it), OS, "
        "architecture, applications and whether the site trusts them.")
    listing.add_argument("--json", action="store_true", help="print the server's answer")
    add_connection_flags(listing)
    listing.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    from client.output import print_json, print_table
    from client.settings import connect

    images = connect(args).images()
    if args.json:
        print_json(images)
        return 0
    rows = [(image.get("ref"), image.get("status"), image.get("owner"), _os_text(image),
             image.get("architecture"), _applications(image), _trust_text(image))
            for image in images]
    if rows:
        print_table(("IMAGE", "STATUS", "OWNER", "OS", "ARCH", "APPLICATIONS", "TRUST"), rows)
    else:
        print("no image is visible to you on this site")
    return 0


def _os_text(image: dict) -> str | None:
    os_ = image.get("os") or {}
    return " ".join(str(x) for x in (os_.get("distro"), os_.get("version")) if x) or None


def _applications(image: dict) -> str | None:
    return ",".join(a.split("---v")[0] for a in image.get("applications") or []) or None


def _trust_text(image: dict) -> str | None:
    trust = image.get("trust") or {}
    if "trusted" not in trust:
        return None
    return "trusted" if trust["trusted"] else "untrusted"


def _add_search(image_commands: argparse._SubParsersAction) -> None:
    from client.requirements import KEYS
    from client.settings import add_connection_flags

    search = image_commands.add_parser(
        "search", help="search the site's images for a job's requirements, with why-not",
        description="Ask the server which of the images you may use would run a job with "
        "these requirements (best first) and why each other image would not.  "
        "Requirements come from JOB.json and/or --require KEY=VALUE (keys: "
        + ", ".join(KEYS) + ").  Exit 0 when an image fits, 3 (NO_MATCHING_IMAGE) when "
        "none does.")
    search.add_argument("job_file", nargs="?", metavar="JOB.json",
                        help="take the requirements of this job description")
    search.add_argument("--require", action="append", default=[], metavar="KEY=VALUE",
                        help="a requirement (repeatable)")
    search.add_argument("--json", action="store_true", help="print the server's answer")
    add_connection_flags(search)
    search.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from client.commands.jobs import read_job_file
    from client.errors import EXIT_NOT_FOUND
    from client.output import print_json, print_table
    from client.requirements import apply_requirements
    from client.settings import connect

    description = read_job_file(args.job_file) if args.job_file else {"Executable": "true"}
    description = apply_requirements(description, args.require)
    site = connect(args)
    answer = site.match(description)
    candidates = answer.get("candidates") or []
    if args.json:
        print_json(answer)
    else:
        images = {i.get("id"): i for i in site.images()} if candidates else {}
        rows = []
        for rank, candidate in enumerate(candidates, 1):
            image = images.get(candidate.get("id"), {})
            rows.append((rank, candidate.get("ref"), candidate.get("status"), _os_text(image),
                         image.get("architecture"), _applications(image),
                         ", ".join(candidate.get("stated") or []) or None))
        if rows:
            print_table(("#", "IMAGE", "STATUS", "OS", "ARCH", "APPLICATIONS", "STATES"), rows)
        rejected = answer.get("rejected") or []
        if rejected:
            print("\nRejected:" if rows else "Rejected:")
            for rejection in rejected:
                reasons = "; ".join(r.get("message") or r.get("code", "?")
                                    for r in rejection.get("reasons") or [])
                print(f"  {rejection.get('ref')}: {reasons}")
    if not candidates:
        rejected = answer.get("rejected") or []
        message = answer.get("summary") or "no image matches"
        if rejected and not args.json:
            count = f"{len(rejected)} visible image" + ("s" if len(rejected) > 1 else "")
            message = f"no image matches ({count} rejected, above)"
        raise CliError(message, EXIT_NOT_FOUND, reason=Reason.NO_MATCHING_IMAGE)
    return 0
