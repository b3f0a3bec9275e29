"""How the CLI reads a site's error answers: exit code and one-line message."""

from __future__ import annotations

import json

from client.api import Response, Site
from client.errors import EXIT_AUTH, EXIT_FAILED


def answer(status: int, message: str, reason: str) -> Response:
    body = json.dumps({"errorMessage": message, "status": status, "reason": reason}).encode()
    return Response(status, {}, body)


def test_a_per_user_limit_is_a_refusal_not_an_authentication_failure():
    limit = Site._error("POST", "https://x/jobs", answer(
        403, "per-user limit jobs: you keep 1000 jobs, the limit per user is 1000",
        "QUOTA_EXCEEDED"))
    assert limit.exit_code == EXIT_FAILED and str(limit).startswith("per-user limit jobs")
    denied = Site._error("GET", "https://x/jobs", answer(403, "no", "NOT_AUTHORIZED"))
    assert denied.exit_code == EXIT_AUTH
