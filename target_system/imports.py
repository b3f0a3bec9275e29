"""Server-side imports: files a job description asks the site to fetch (UNICORE ``Imports``
with ``From``), written into the job's inputs directory in site storage — while its VM
boots — and staged into the guest with the files the client uploaded.

Two sources: http(s) URLs, only under the prefixes the site allows (a site must not fetch
from its own loopback services or internal networks on a user's behalf; redirects are
checked too), and ``uspace://JOBID/PATH``, a file another finished job of the same owner
left in site storage (how jobs are chained).  Every fetch has a size limit and an overall
deadline; a failure carries the URL and the cause.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

USPACE = "uspace://"


@dataclass(frozen=True)
class ImportPolicy:
    """What the site fetches for a job: URL prefixes (none: no http(s) imports), the largest
    file, and the time one fetch may take in all."""

    url_prefixes: tuple[str, ...] = ()
    max_bytes: int = 1 << 30
    timeout: float = 300.0

    def allows(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self.url_prefixes)


class ImportFailed(Exception):
    """An import that could not be fetched; the message says which and why."""

    reason = "STAGING_FAILED"


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: ImportPolicy):
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not self.policy.allows(newurl):
            raise ImportFailed(f"redirected to {newurl}, which this site does not fetch from")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(url: str, destination: Path, policy: ImportPolicy) -> int:
    """Blocking: download ``url`` into ``destination`` (via a ``.part`` file); returns the
    number of bytes.  Raises :class:`ImportFailed`."""
    if not policy.allows(url):
        raise ImportFailed(f"this site does not fetch from {url} (allowed: "
                           f"{', '.join(policy.url_prefixes) or 'no URLs'})")
    opener = urllib.request.build_opener(_CheckedRedirects(policy))
    request = urllib.request.Request(url, headers={"User-Agent": "gridvm-imports"})
    deadline = time.monotonic() + policy.timeout
    temporary = _temporary(destination)
    total = 0
    try:
        with opener.open(request, timeout=policy.timeout) as answer, \
                temporary.open("wb") as out:
            while piece := answer.read(1 << 20):
                total += len(piece)
                if total > policy.max_bytes:
                    raise ImportFailed(f"{url} is larger than {policy.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise ImportFailed(f"{url} took longer than {policy.timeout:g} s")
                out.write(piece)
    except ImportFailed:
        temporary.unlink(missing_ok=True)
        raise
    except urllib.error.HTTPError as err:
        temporary.unlink(missing_ok=True)
        raise ImportFailed(f"{url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        temporary.unlink(missing_ok=True)
        raise ImportFailed(f"{url}: {err.reason}") from None
    except TimeoutError:
        temporary.unlink(missing_ok=True)
        raise ImportFailed(f"{url}: no answer within {policy.timeout:g} s") from None
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise ImportFailed(f"{url}: {err}") from None
    os.replace(temporary, destination)
    return total


def copy_file(source: Path, destination: Path) -> int:
    """Blocking: copy a file of site storage into ``destination``; returns its size."""
    temporary = _temporary(destination)
    try:
        shutil.copyfile(source, temporary)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise ImportFailed(f"copying {source.name}: {err.strerror}") from None
    os.replace(temporary, destination)
    return destination.stat().st_size


def parse_uspace(url: str) -> tuple[str, str]:
    """``uspace://JOBID/PATH`` → (JOBID, PATH)."""
    job_id, _, path = url.removeprefix(USPACE).partition("/")
    if not job_id or not path:
        raise ImportFailed(f"{url}: expected uspace://JOBID/PATH")
    return job_id, path


def _temporary(destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    return destination.with_name(destination.name + ".part")
