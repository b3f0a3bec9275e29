"""Server-side transfers: files a job description asks the site to fetch (UNICORE
``Imports`` with ``From``), written into the job's inputs directory in site storage — while
its VM boots — and staged into the guest with the files the client uploaded; and files it
asks the site to upload after the job (``Exports`` with an http(s) ``To``, HTTP PUT from the
site-storage copy).

Two sources for imports: http(s) URLs, only under the prefixes the site allows (a site
must not fetch from its own loopback services or internal networks on a user's behalf;
redirects are checked too; exports obey the same prefixes), and ``uspace://JOBID/PATH``,
a file another finished job of the same owner left in site storage (how jobs are chained).
Every transfer has a size limit and an overall deadline; a failure carries the URL and the
cause.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from base.errors import GridvmError
from base.reasons import Reason

USPACE = "uspace://"


@dataclass(frozen=True)
class TransferPolicy:
    """What the site fetches for a job: URL prefixes (none: no http(s) imports), the largest
    file, and the time one fetch may take in all."""

    url_prefixes: tuple[str, ...] = ()
    max_bytes: int = 1 << 30
    timeout: float = 300.0

    def allows(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self.url_prefixes)


class TransferFailed(GridvmError):
    """An import that could not be fetched; the message says which and why."""

    reason = Reason.STAGING_FAILED


def upload_file(source: Path, url: str, policy: TransferPolicy,
                authorization: str | None = None) -> int:
    """Blocking: ``PUT`` a file of site storage to ``url``; returns its size.  Raises
    :class:`TransferFailed` (redirects are not followed)."""
    if not policy.allows(url):
        raise TransferFailed(f"this site does not upload to {url} (allowed: "
                             f"{', '.join(policy.url_prefixes) or 'no URLs'})")
    try:
        size = source.stat().st_size
    except OSError:
        raise TransferFailed(f"the job left no file {source.name}") from None
    if size > policy.max_bytes:
        raise TransferFailed(f"{source.name} is larger than {policy.max_bytes} bytes")
    opener = urllib.request.build_opener(_NoRedirects())
    try:
        with source.open("rb") as body:
            request = urllib.request.Request(
                url, data=body, method="PUT",
                headers={"Content-Length": str(size), "User-Agent": "gridvm-exports",
                         "Content-Type": "application/octet-stream",
                         **({"Authorization": authorization} if authorization else {})})
            with opener.open(request, timeout=policy.timeout):
                pass
    except OSError as err:
        raise _failure(url, err, policy) from None
    return size


def _failure(url: str, err: OSError, policy: TransferPolicy) -> TransferFailed:
    """The transfer error for what urllib or the socket raised."""
    cause = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(err, urllib.error.HTTPError):
        return TransferFailed(f"{url}: HTTP {err.code} {err.reason}")
    if isinstance(cause, TimeoutError):
        return TransferFailed(f"{url}: no answer within {policy.timeout:g} s")
    return TransferFailed(f"{url}: {cause}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise TransferFailed(f"{req.full_url} redirected to {newurl}: not followed")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: TransferPolicy):
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not self.policy.allows(newurl):
            raise TransferFailed(f"redirected to {newurl}, which this site does not fetch from")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")  # credentials go to their own server only
        return new


def fetch_url(url: str, destination: Path, policy: TransferPolicy,
              authorization: str | None = None,
              cancelled: Callable[[], bool] = lambda: False) -> int:
    """Blocking: download ``url`` into ``destination`` (via a ``.part`` file); returns the
    number of bytes.  Raises :class:`TransferFailed` — also once ``cancelled()`` is true
    (checked after every piece, e.g. the job was aborted or deleted meanwhile)."""
    if not policy.allows(url):
        raise TransferFailed(f"this site does not fetch from {url} (allowed: "
                             f"{', '.join(policy.url_prefixes) or 'no URLs'})")
    opener = urllib.request.build_opener(_CheckedRedirects(policy))
    headers = {"User-Agent": "gridvm-imports"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, headers=headers)
    deadline = time.monotonic() + policy.timeout
    temporary = _temporary(destination)
    total = 0
    try:
        with opener.open(request, timeout=policy.timeout) as answer, \
                temporary.open("wb") as out:
            while piece := answer.read(1 << 20):
                total += len(piece)
                if total > policy.max_bytes:
                    raise TransferFailed(f"{url} is larger than {policy.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TransferFailed(f"{url} took longer than {policy.timeout:g} s")
                if cancelled():
                    raise TransferFailed(f"{url}: stopped, the job ended meanwhile")
                out.write(piece)
    except TransferFailed:
        temporary.unlink(missing_ok=True)
        raise
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise _failure(url, err, policy) from None
    os.replace(temporary, destination)
    return total


def copy_file(source: Path, destination: Path) -> int:
    """Blocking: copy a file of site storage into ``destination``; returns its size."""
    temporary = _temporary(destination)
    try:
        shutil.copyfile(source, temporary)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise TransferFailed(f"copying {source.name}: {err.strerror}") from None
    os.replace(temporary, destination)
    return destination.stat().st_size


def transfer_failed(job, what: str, fail_on_error: bool, err: TransferFailed) -> bool:
    """Record a failed transfer on ``job``: it fails ``STAGING_FAILED`` (True: stop), or
    with ``FailOnError`` false the log notes it (False: go on)."""
    if fail_on_error:
        job.fail(Reason.STAGING_FAILED, f"{what}: {err}")
        return True
    job.note(f"{what} failed, ignored (FailOnError false): {err}")
    return False


def parse_uspace(url: str) -> tuple[str, str]:
    """``uspace://JOBID/PATH`` → (JOBID, PATH)."""
    job_id, _, path = url.removeprefix(USPACE).partition("/")
    if not job_id or not path:
        raise TransferFailed(f"{url}: expected uspace://JOBID/PATH")
    return job_id, path


def _temporary(destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    return destination.with_name(destination.name + ".part")
