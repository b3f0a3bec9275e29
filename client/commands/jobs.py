"""``gridvm submit|jobs|status|wait|output|ls|get|abort|rm``: jobs on a gridvm site.

JOB is a job id or its URL.  Every command takes the connection flags of
:mod:`client.settings`; ``--json`` prints what the server said, for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from base.reasons import Reason
from client.commands import add_command
from client.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CliError,
)
from client.output import phase_list, print_json, print_table
from client.requirements import KEYS, apply_requirements
from client.settings import connect

JOB_PHASES = ("READY", "STAGINGIN", "QUEUED", "RUNNING", "STAGINGOUT")


def register(commands: argparse._SubParsersAction) -> None:
    command = functools.partial(add_command, commands)

    submit = command(
        "submit", _submit, "submit a job (a UNICORE job description) and optionally wait",
        description="Submit JOB.json ('-' = stdin).  --image and --require add image "
        "requirements (KEY=VALUE; keys: " + ", ".join(KEYS) + "; see docs/cli.md); "
        "--input uploads local files into the job's directory before it starts.  With "
        "--wait: the phases of the job and its VM live on stderr, then the job's stdout.")
    submit.add_argument("job_file", metavar="JOB.json")
    submit.add_argument("--image", metavar="NAME", help="run in this image (name, "
                        "name:version or id); the same as --require image=NAME")
    submit.add_argument("--require", action="append", default=[], metavar="KEY=VALUE",
                        help="an image requirement (repeatable)")
    submit.add_argument("--input", action="append", default=[], metavar="FILE[:NAME]",
                        help="upload FILE (as NAME, default its base name) (repeatable)")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job to its end, then print its stdout")
    _wait_flags(submit)

    command("jobs", _jobs, "list your jobs (newest last)")

    status = command("status", _status, "a job's state, reason, image, instance and timings")
    status.add_argument("job", metavar="JOB")

    wait = command("wait", _wait, "wait for a job to finish (exit 0 if SUCCESSFUL)")
    wait.add_argument("job", metavar="JOB")
    _wait_flags(wait)

    output = command("output", _output, "print a job's stdout (or --stderr)", json_flag=False)
    output.add_argument("job", metavar="JOB")
    output.add_argument("--stderr", action="store_true", help="the job's stderr instead")

    listing = command("ls", _ls, "list the files of a job's working directory")
    listing.add_argument("job", metavar="JOB")
    listing.add_argument("path", nargs="?", default="", metavar="DIR")

    get = command("get", _get, "download a file of a job's working directory", json_flag=False)
    get.add_argument("job", metavar="JOB")
    get.add_argument("file", metavar="FILE")
    get.add_argument("-o", "--output", metavar="DEST",
                     help="local file or directory ('-' = stdout; default: ./<base name>)")
    get.add_argument("-f", "--force", action="store_true", help="overwrite DEST")

    abort = command("abort", _abort, "abort a job (it ends FAILED, JOB_ABORTED)",
                    json_flag=False)
    abort.add_argument("job", metavar="JOB", nargs="+")

    keep = command("keep", _keep, "keep a job and its files longer (or shorter): the site "
                   "destroys a job at its termination time", json_flag=False)
    keep.add_argument("job", metavar="JOB", nargs="+")
    keep.add_argument("--days", type=float, required=True, metavar="N",
                      help="keep it N days from now (at most the site's job lifetime)")

    remove = command("rm", _rm, "delete jobs and their files (aborting them if they run)",
                     json_flag=False)
    remove.add_argument("job", metavar="JOB", nargs="+")


def _wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="give up waiting after this long (exit 6; default 3600)")
    parser.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                        help="poll interval (default 0.5)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress display")


# --------------------------------------------------------------------------- submit ----------

def read_job_file(path: str, what: str = "a job description") -> dict[str, Any]:
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise CliError(f"{name}: {err.strerror}", EXIT_USAGE, reason=Reason.BAD_REQUEST) from None
    except UnicodeDecodeError:
        raise CliError(f"{name}: not a text file", EXIT_USAGE, reason=Reason.BAD_REQUEST) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"{name}: not valid JSON: line {err.lineno} column {err.colno}: "
                       f"{err.msg}", EXIT_USAGE, reason=Reason.BAD_REQUEST) from None
    if not isinstance(doc, dict):
        raise CliError(f"{name}: {what} is a JSON object", EXIT_USAGE,
                       reason=Reason.BAD_REQUEST)
    return doc


def read_inputs(specs: list[str]) -> dict[str, bytes]:
    """``FILE`` or ``FILE:NAME`` → {NAME: content}; every file is read before submitting."""
    inputs: dict[str, bytes] = {}
    for spec in specs:
        local, name = spec, ""
        if not Path(spec).exists() and ":" in spec:
            local, name = spec.rsplit(":", 1)
        path = Path(local)
        if not path.is_file():
            what = "is not a file" if path.exists() else "no such file"
            raise CliError(f"--input {local}: {what}", EXIT_USAGE, reason=Reason.BAD_REQUEST)
        name = name or path.name
        if name in inputs:
            raise CliError(f"--input: two files named {name}", EXIT_USAGE,
                           reason=Reason.BAD_REQUEST)
        try:
            inputs[name] = path.read_bytes()
        except OSError as err:
            raise CliError(f"--input {local}: {err.strerror}", EXIT_USAGE,
                           reason=Reason.BAD_REQUEST) from None
    return inputs


def _submit(args: argparse.Namespace) -> int:
    description = read_job_file(args.job_file)
    requirements = list(args.require) + ([f"image={args.image}"] if args.image else [])
    description = apply_requirements(description, requirements)
    inputs = read_inputs(args.input)
    site = connect(args)
    job = site.submit(description, inputs=inputs)
    if not args.wait:
        if args.json:
            print_json({"id": job.id, "url": job.url, "status": job.status})
        else:
            print(job.id)
        return 0
    print(f"submitted job {job.id}", file=sys.stderr)
    return _follow(job, args)


def _follow(job, args: argparse.Namespace) -> int:
    """Wait with a progress display; print the outcome and the job's stdout."""
    from client.progress import Progress

    progress = None if args.quiet or args.json else Progress(job)
    try:
        status = job.wait(timeout=args.timeout, interval=args.interval,
                          on_poll=progress.update if progress else None)
    except KeyboardInterrupt:
        if progress:
            progress.interrupted()
        print(f"gridvm: interrupted; job {job.id} goes on (gridvm status {job.id})",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except CliError:
        if progress:
            progress.interrupted()
        raise
    props = job.properties(refresh=False)
    if progress:
        progress.finish(props)
    if args.json:
        print_json(_job_summary(job, props))
    else:
        stdout_name, stderr_name = _output_names(job)
        _copy_out(job, stdout_name, sys.stdout.buffer)
        if status != "SUCCESSFUL":
            _copy_out(job, stderr_name, sys.stderr.buffer)
    if status != "SUCCESSFUL":
        raise _failure(job, props)
    return 0


def _failure(job, props: dict[str, Any]) -> CliError:
    gridvm = props.get("gridvm") or {}
    reason = gridvm.get("reason")
    message = props.get("statusMessage") or "FAILED"
    if reason and message.startswith(f"{reason}: "):
        message = message[len(reason) + 2:]
    return CliError(f"job {job.id} FAILED: {message}", EXIT_FAILED, reason=reason)


def _output_names(job) -> tuple[str, str]:
    """The job's Stdout and Stderr file names (the description may rename them)."""
    try:
        submitted = job.site.get(job._link("submitted"))
    except (CliError, KeyError):
        submitted = {}
    if not isinstance(submitted, dict):
        submitted = {}
    return str(submitted.get("Stdout") or "stdout"), str(submitted.get("Stderr") or "stderr")


def _copy_out(job, name: str, sink) -> None:
    """Write a job file to ``sink``; a file the job never wrote is skipped."""
    try:
        data = job.read(name)
    except CliError as err:
        if err.exit_code == EXIT_NOT_FOUND:
            return
        raise
    sink.write(data)
    sink.flush()


# --------------------------------------------------------------------------- queries ---------

def _job_summary(job, props: dict[str, Any]) -> dict[str, Any]:
    gridvm = props.get("gridvm") or {}
    return {"id": job.id, "url": job.url, "status": props.get("status"),
            "exitCode": props.get("exitCode"), "reason": gridvm.get("reason"),
            "statusMessage": props.get("statusMessage"), "name": props.get("name"),
            "image": gridvm.get("image"), "instance": gridvm.get("instance"),
            "submissionTime": props.get("submissionTime"),
            "terminationTime": props.get("terminationTime"),
            "consumedTime": props.get("consumedTime", {}), "tags": props.get("tags", [])}


def _jobs(args: argparse.Namespace) -> int:
    site = connect(args)
    summaries = [_job_summary(job, job.properties()) for job in site.all_jobs()]
    if args.json:
        print_json(summaries)
        return 0
    print_table(("JOB", "STATUS", "EXIT", "IMAGE", "INSTANCE", "SUBMITTED", "REASON"),
                [(s["id"], s["status"], s["exitCode"], s["image"], s["instance"],
                  (s["submissionTime"] or "").replace("T", " ")[:19], s["reason"])
                 for s in summaries], empty="no jobs")
    return 0


def _status(args: argparse.Namespace) -> int:
    site = connect(args)
    job = site.job(args.job)
    props = job.properties()
    if args.json:
        print_json(props)
        return 0
    summary = _job_summary(job, props)
    rows = [("job", job.id), ("status", summary["status"]),
            ("exit code", summary["exitCode"]), ("reason", summary["reason"]),
            ("message", summary["statusMessage"] or None), ("name", summary["name"]),
            ("image", summary["image"]), ("instance", summary["instance"]),
            ("submitted", summary["submissionTime"]),
            ("expires", summary["terminationTime"]),
            ("timings", phase_list(summary["consumedTime"], JOB_PHASES) or None)]
    for rejection in (props.get("gridvm") or {}).get("rejections") or []:
        rows.append(("rejected", _why_not(rejection)))
    for key, value in rows:
        if value not in (None, ""):
            print(f"{key + ':':<11}{value}")
    return 0


def _why_not(rejection: dict[str, Any]) -> str:
    reasons = "; ".join(r.get("message", r.get("code", "?"))
                        for r in rejection.get("reasons", []))
    return f"{rejection.get('ref', rejection.get('id', '?'))}: {reasons}"


def _wait(args: argparse.Namespace) -> int:
    site = connect(args)
    job = site.job(args.job)
    job.properties()  # unknown jobs fail here, before any display
    return _follow(job, args)


def _output(args: argparse.Namespace) -> int:
    site = connect(args)
    job = site.job(args.job)
    stdout_name, stderr_name = _output_names(job)
    name = stderr_name if args.stderr else stdout_name
    sink = sys.stdout.buffer
    job.download(name, sink)
    sink.flush()
    return 0


def _ls(args: argparse.Namespace) -> int:
    site = connect(args)
    job = site.job(args.job)
    content = job.files(args.path)
    if args.json:
        print_json(content)
        return 0
    rows = []
    for path, info in sorted(content.items()):
        rows.append((info.get("permissions"), "-" if info.get("isDirectory") else
                     info.get("size"), (info.get("lastAccessed") or "").replace("T", " ")[:19],
                     path.lstrip("/")))
    print_table(("PERMISSIONS", "SIZE", "MODIFIED", "NAME"), rows, empty="(empty)")
    return 0


def _get(args: argparse.Namespace) -> int:
    site = connect(args)
    job = site.job(args.job)
    if args.output == "-":
        job.download(args.file, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    target = Path(args.output or ".")
    if args.output is None or target.is_dir():
        target = target / Path(args.file.rstrip("/")).name
    if target.exists() and not args.force:
        raise CliError(f"{target} exists (use --force to overwrite)", EXIT_USAGE)
    # Write a temporary file next to the target: an interrupted download leaves no half file.
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise CliError(f"{directory}: no such directory", EXIT_USAGE)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{target.name}.",
                                     delete=False) as handle:
        try:
            size = job.download(args.file, handle)
            handle.close()
            os.chmod(handle.name, 0o666 & ~_umask())
            os.replace(handle.name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)
            raise
    print(f"{target} ({size} bytes)", file=sys.stderr)
    return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _abort(args: argparse.Namespace) -> int:
    site = connect(args)
    for ref in args.job:
        job = site.job(ref)
        job.abort()
        print(f"aborted {job.id}", file=sys.stderr)
    return 0


def _keep(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise CliError(f"--days must be positive, got {args.days:g}", EXIT_USAGE,
                       reason=Reason.BAD_REQUEST)
    until = datetime.now(UTC) + timedelta(days=args.days)
    text = until.strftime("%Y-%m-%dT%H:%M:%S+0000")
    site = connect(args)
    for ref in args.job:
        job = site.job(ref)
        job.keep_until(text)
        print(f"keeping {job.id} until {text}", file=sys.stderr)
    return 0


def _rm(args: argparse.Namespace) -> int:
    site = connect(args)
    for ref in args.job:
        job = site.job(ref)
        job.delete()
        print(f"removed {job.id}", file=sys.stderr)
    return 0
