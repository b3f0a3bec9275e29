"""The site's event stream (``/<SITE>/events``) as a "something changed" signal for waiting.

``ChangeWaiter.open(site, job_id)`` connects in a background thread and sets a flag on every
event; ``wait(seconds)`` returns as soon as one arrived (or the time is up).  A site without
the stream (an older gridvm, any UNICORE server) gives None, and the caller polls instead.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.error
import urllib.request
from urllib.parse import quote


class ChangeWaiter:
    def __init__(self, response) -> None:
        self._response = response
        self._changed = threading.Event()
        self.alive = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, site, job_id: str) -> ChangeWaiter | None:
        if not site.base.endswith("/rest/core"):
            return None
        url = f"{site.base.removesuffix('/rest/core')}/events?job={quote(job_id, safe='')}"
        request = urllib.request.Request(url, headers={"Accept": "text/event-stream",
                                                       **site.auth_headers()})
        try:
            response = urllib.request.urlopen(request, timeout=max(site.timeout, 30.0),
                                              context=site._context)
        except (urllib.error.URLError, OSError, ValueError):
            return None
        if not (response.headers.get("content-type") or "").startswith("text/event-stream"):
            response.close()
            return None
        return cls(response)

    def _read(self) -> None:
        try:  # read1: what has arrived, without waiting for a full buffer or line
            while self.alive and (data := self._response.read1(65536)):
                if b"data:" in data:
                    self._changed.set()
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # the stream ended or was shut down
        finally:
            self.alive = False
            self._changed.set()
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self._response.close()

    def wait(self, seconds: float) -> bool:
        """Whether something changed within ``seconds``."""
        changed = self._changed.wait(seconds)
        self._changed.clear()
        return changed

    def close(self) -> None:
        """End the stream now: the socket is shut down (closing the response would wait for
        the reader thread's read to return, until the site's next heartbeat)."""
        self.alive = False
        sock = getattr(getattr(getattr(self._response, "fp", None), "raw", None), "_sock", None)
        with contextlib.suppress(OSError):
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            else:
                self._response.close()
