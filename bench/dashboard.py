"""Benchmark of the dashboard: every page's time with 1,000 jobs and 10,000 images.

    .venv/bin/python bench/dashboard.py [--images N] [--jobs N] [--rounds N]

One site in-process without VMs (a repository of synthetic images, as bench/match.py makes
them; a factory whose jobs are submitted without starting, a tenth of them aborted): the
dashboard and the REST app on a loopback port.  Each page is fetched ``rounds`` times with a
logged-in session by a client thread; the median time of a request is compared with that of
a trivial twisted.web resource on the same reactor measured in the same run (the ratio is
what to compare across machines).  Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from twisted.internet import threads
from twisted.web import resource

from base.db import make_engine, sqlite_url
from base.identity import Caller
from bench.match import synthetic_document
from image_repo.repository import ImageRepository
from image_repo.schema import ContentRef
from target_system.instance import SiteCredentials
from target_system.jobdesc import parse_job
from tsf.factory import TargetSystemFactory
from tsf.rest import build_app, build_site
from tsf.rest.auth import Authenticator, TokenIssuer
from tsf.users import User, UsersFile, hash_password

ROOT = Path("/var/tmp/gridvm-bench")
PASSWORD = "bench-password"
ADMIN = Caller.of("bench-admin", admin=True)


class Trivial(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"


def build(root: Path, images: int, jobs: int, reactor):
    users = UsersFile(root / "users.json")
    users.put(User("alice", hash_password(PASSWORD), ("users",), ("vo00",)))
    repository = ImageRepository(make_engine(sqlite_url(root / "catalogue.sqlite")),
                                 root / "store")
    blob_path = root / "shared.qcow2"
    blob_path.write_bytes(b"shared synthetic content" * 100)
    blob = ContentRef.for_file(blob_path, "disk")
    repository.register({"general": {"name": "seed"}, "origin": {
        "content_type": "qcow2", "content": [blob.__dict__]}}, [blob_path], ADMIN)
    rng = random.Random(7)
    for start in range(1, images, 1000):
        batch = [(synthetic_document(rng, n, blob), [])
                 for n in range(start, min(images, start + 1000))]
        repository.register_many(batch, ADMIN)
    factory = TargetSystemFactory(repository, None, SiteCredentials.load_or_create(root / "ca"),
                                  root / "storage", reactor)
    alice = Caller.of("alice", groups=["users"], vos=["vo00"])
    made = [factory.submit(parse_job({"Executable": "/bin/echo", "Arguments": [str(i)],
                                      "Resources": {"OperatingSystem": "debian"}}),
                           alice, start=False) for i in range(jobs)]
    for job in made[::10]:
        factory.abort(job.job_id, alice)
    tokens = TokenIssuer(b"bench-secret" * 3, "BENCH")
    app = build_app("BENCH", factory, Authenticator(users, tokens), tokens)
    site = build_site(app)
    site.resource.putChild(b"trivial", Trivial())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return port, made[0].job_id, repository


def measure(base: str, pages: dict[str, str], rounds: int) -> dict[str, float]:
    """Median milliseconds per page (blocking: runs in a thread)."""
    with httpx.Client(timeout=60) as client:
        login = client.get(f"{base}/BENCH/dashboard/login")
        token = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
        answer = client.post(f"{base}/BENCH/dashboard/login",
                             data={"csrf": token, "user": "alice", "password": PASSWORD})
        assert answer.status_code == 303, answer.text
        result = {}
        for name, path in pages.items():
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                reply = client.get(base + path)
                times.append((time.perf_counter() - start) * 1000)
                assert reply.status_code == 200, (path, reply.status_code, reply.text[:300])
            result[name] = statistics.median(times)
        return result


async def run(reactor, args) -> dict:
    root = ROOT / f"dashboard-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    try:
        started = time.perf_counter()
        port, job_id, repository = build(root, args.images, args.jobs, reactor)
        setup_s = time.perf_counter() - started
        image_id = repository.list(Caller.of("alice", groups=["users"], vos=["vo00"]))[-1].id
        base = f"http://127.0.0.1:{port.getHost().port}"
        pages = {"baseline": "/trivial", "jobs": "/BENCH/dashboard/jobs",
                 "job": f"/BENCH/dashboard/jobs/{job_id}",
                 "catalogue": "/BENCH/dashboard/images",
                 "search": "/BENCH/dashboard/images?os=debian&version=%3E%3D11",
                 "image": f"/BENCH/dashboard/images/{image_id}",
                 "instances": "/BENCH/dashboard/instances"}
        medians = await threads.deferToThread(measure, base, pages, args.rounds)
        await port.stopListening()
        repository.close()
        baseline = medians.pop("baseline")
        return {"images": args.images, "jobs": args.jobs, "setup_s": round(setup_s, 1),
                "baseline_ms": round(baseline, 2),
                **{f"{name}_ms": round(ms, 1) for name, ms in medians.items()},
                **{f"{name}_ratio": round(ms / baseline, 1) for name, ms in medians.items()},
                "slowest_ms": round(max(medians.values()), 1),
                "all_under_100ms": max(medians.values()) < 100}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    from twisted.internet import defer, task

    async def go(reactor):
        figures = await run(reactor, args)
        for key, value in figures.items():
            if key.endswith("_ms"):
                print(f"{key:<20}{value:>10}")
        print(json.dumps(figures, sort_keys=True))

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    main()
