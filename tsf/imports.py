"""Server-side ``Imports`` of a job: the site's rules on where they may come from, and their
fetching into the job's inputs directory (in parallel with the boot of its instance).

An import of this site's own file URL (``…/storages/JOBID-uspace/files/PATH``, how UNICORE
clients chain jobs) becomes ``uspace://JOBID/PATH``, copied by the site from the other job's
site storage; that job must be the caller's and finished.  Any other URL is fetched as
``target_system.transfers`` allows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

from twisted.internet import threads

from target_system.jobdesc import JobDescription
from target_system.jobfiles import PathError, confine
from target_system.jobs import Job
from target_system.transfers import (
    USPACE,
    TransferFailed,
    TransferPolicy,
    copy_file,
    fetch_url,
    parse_uspace,
    transfer_failed,
)
from tsf.errors import ImportRefused, NotFound

#: The storage of a job's working directory is ``<job id>-uspace``, as in UNICORE.
USPACE_SUFFIX = "-uspace"

#: The caller's job by id, else NotFound.
FindJob = Callable[[str], Job]


def same_site_imports(desc: JobDescription, storages_url: str, find_job: FindJob) -> None:
    """Rewrite the imports of files under ``storages_url`` (this site's ``…/storages/``) to
    ``uspace://JOBID/PATH``; ImportRefused for one that names no file of the caller's jobs."""
    for i, item in enumerate(desc.imports):
        if item.url is None or not item.url.startswith((storages_url, USPACE)):
            continue
        if item.url.startswith(storages_url):
            storage, found, path = item.url[len(storages_url):].partition("/files/")
            if not found or not storage.endswith(USPACE_SUFFIX) or not path:
                raise ImportRefused(f"Imports[{i}].From: {item.url} is not a file in a job's "
                                    "working directory")
            item.url = f"{USPACE}{storage[: -len(USPACE_SUFFIX)]}/{unquote(path)}"
            desc.raw["Imports"][i]["From"] = item.url  # what a restart re-reads
        job_id = item.url.removeprefix(USPACE).split("/", 1)[0]
        try:
            find_job(job_id)
        except NotFound:
            raise ImportRefused(f"Imports[{i}].From: no job {job_id}") from None


async def fetch_imports(job: Job, find_job: FindJob, policy: TransferPolicy) -> None:
    """Fetch the job's server-side imports into its inputs directory; a failed one fails
    the job ``STAGING_FAILED`` unless its ``FailOnError`` is false."""
    for item in job.description.imports:
        if item.url is None or job.state.terminal:
            continue
        destination = job.inputs_dir / item.to
        try:
            if item.url.startswith(USPACE):
                source = uspace_file(item.url, find_job)
                size = await threads.deferToThread(copy_file, source, destination)
            else:
                size = await threads.deferToThread(
                    fetch_url, item.url, destination, policy,
                    item.credentials.authorization() if item.credentials else None,
                    lambda: job.state.terminal)
        except TransferFailed as err:
            if transfer_failed(job, f"import of {item.url}", item.fail_on_error, err):
                return
            continue
        job.note(f"fetched {item.url} as {item.to} ({size} bytes)")


def uspace_file(url: str, find_job: FindJob) -> Path:
    """The site-storage file ``uspace://JOBID/PATH`` names: a finished job of the
    caller's, a path inside its directory."""
    job_id, path = parse_uspace(url)
    try:
        other = find_job(job_id)
    except NotFound:
        raise TransferFailed(f"no job {job_id}") from None
    if not other.finished.called:
        raise TransferFailed(f"job {job_id} has not finished: its files are still in its VM")
    try:
        rel = confine(path)
    except PathError as err:
        raise TransferFailed(str(err)) from None
    root = other.storage.resolve()
    source = (root / rel).resolve()
    if not source.is_relative_to(root) or not source.is_file():
        raise TransferFailed(f"job {job_id} has no file {rel}")
    return source
