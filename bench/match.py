"""Matching and registration benchmark for the image repository.

    .venv/bin/python bench/match.py [--sizes 1000,10000,100000] [--queries 200] [--db URL]

The catalogue grows to each size in turn (synthetic but varied images: 12 OS releases,
3 architectures, applications from a pool of 300 with versions, 30% VO-restricted, 25%
private).  At each size it measures, with requirements and callers drawn at random:

* ``match``: ``repo.match(req, caller)`` — ranked candidates, change check against the
  catalogue included (median, p95);  the goal is <= 20 ms at 100k;
* the baseline measured in the same run: the same filters applied to every image one by one,
  without the index's pre-filtering (median) — and the ratio baseline / match;
* ``explain``: working out every visible rejected image's reasons (median of a few);
* the index's catch-up after the catalogue grew (one refresh).

Registration throughput is measured twice: single registrations with a file each (verify,
store, commit) and bulk registration (``register_many`` in batches of 1000).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.db import session_scope, sqlite_url
from base.identity import Caller
from image_repo.matching import Matcher, MatchResult
from image_repo.repository import ImageRepository
from image_repo.requirements import Requirements
from image_repo.schema import ContentRef

OS_RELEASES = [("debian", "10"), ("debian", "11"), ("debian", "12"), ("ubuntu", "20.04"),
               ("ubuntu", "22.04"), ("ubuntu", "24.04"), ("rocky", "8.9"), ("rocky", "9.3"),
               ("almalinux", "9.3"), ("fedora", "39"), ("opensuse", "15.5"), ("centos", "7")]
ARCHES = ["x86_64"] * 16 + ["aarch64"] * 3 + ["ppc64le"]
APPLICATIONS = [f"app{i:03d}" for i in range(300)]
VOS = [f"vo{i:02d}" for i in range(40)]
USERS = [f"user{i:03d}" for i in range(200)]
GROUPS = [f"group{i:02d}" for i in range(30)]


def synthetic_document(rng: random.Random, n: int, blob: ContentRef) -> dict:
    distro, release = rng.choice(OS_RELEASES)
    apps = [{"name": name, "version": f"{rng.randint(1, 6)}.{rng.randint(0, 20)}",
             "executable": f"/opt/{name}/bin/{name}"}
            for name in rng.sample(APPLICATIONS, rng.randint(2, 8))]
    if rng.random() < 0.5:
        apps.append({"name": "python3", "version": rng.choice(["3.8.10", "3.9.2", "3.10.12",
                                                               "3.11.2", "3.12.1"])})
    doc = {
        "general": {"name": f"img{n // 3:06d}", "title": f"synthetic image {n}",
                    "owner": rng.choice(USERS), "group": rng.choice(GROUPS),
                    "permissions": {"owner": "rw", "group": "r",
                                    "others": "" if rng.random() < 0.25 else "r"}},
        "origin": {"content_type": "qcow2", "content": [blob.__dict__ | {}],
                   "architecture": rng.choice(ARCHES), "hypervisor_type": "qemu",
                   "virtual_hardware": {"vcpus": 1, "memory_mib": 1024}},
        "semantic": {"os": {"distro": distro, "version": release},
                     "vos": rng.sample(VOS, rng.randint(1, 2)) if rng.random() < 0.3 else []},
        "idb": {"applications": apps,
                "resource_limits": {"cpus": rng.choice([2, 4, 8, 16]),
                                    "memory_mib": rng.choice([4096, 16384, 65536])}},
    }
    return doc


def typical_requirement(rng: random.Random) -> Requirements:
    distro, release = rng.choice(OS_RELEASES[:6])
    return Requirements.from_dict({
        "os": {"distro": distro, "version": f">={release}"}, "architecture": "x86_64",
        "applications": [{"name": rng.choice(APPLICATIONS), "version": ">=2"}],
        "cpus": 2, "memory_mib": 2048})


def a_caller(rng: random.Random) -> Caller:
    return Caller.of(rng.choice(USERS), groups=[rng.choice(GROUPS)],
                     vos=rng.sample(VOS, rng.randint(0, 3)))


class LinearMatcher(Matcher):
    """The baseline: no pre-filtering, every image goes through every filter."""

    @staticmethod
    def _pool(index, active, req):
        return None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(fn, *args) -> tuple[float, Any]:
    """Milliseconds ``fn(*args)`` took, and what it returned."""
    start = time.perf_counter()
    value = fn(*args)
    return (time.perf_counter() - start) * 1000, value


def baseline_match(repo: ImageRepository, req: Requirements, caller: Caller) -> MatchResult:
    with session_scope(repo._sessions) as session:
        repo._index.refresh(session)
    return LinearMatcher().match(repo._index, req, caller)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200, help="match calls per size")
    parser.add_argument("--baseline-queries", type=int, default=10)
    parser.add_argument("--explain-queries", type=int, default=3)
    parser.add_argument("--single", type=int, default=200, help="single registrations timed")
    parser.add_argument("--db", default=None, help="catalogue URL (default: SQLite in a tmpdir)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = random.Random(42)
    figures: dict[str, object] = {"sizes": sizes, "backend": "sqlite"}

    with tempfile.TemporaryDirectory(prefix="gridvm-bench-match-") as tmp:
        root = Path(tmp)
        url = args.db or sqlite_url(root / "catalogue.sqlite")
        figures["backend"] = url.split(":", 1)[0]
        repo = ImageRepository(url, root / "store")
        admin = Caller.of("bench", admin=True)

        # -- registration: single, with a file each --------------------------------------
        single_ms = []
        for i in range(args.single):
            path = root / f"file{i}.qcow2"
            path.write_bytes(f"image content {i}".encode() * 64)
            ref = ContentRef.for_file(path, "disk")
            doc = synthetic_document(rng, i, ref)
            doc["general"]["name"] = f"single{i:05d}"
            single_ms.append(timed(repo.register, doc, [path], admin)[0])
        figures["register_single_per_s"] = round(1000 / statistics.mean(single_ms), 1)
        figures["register_single_median_ms"] = round(statistics.median(single_ms), 2)
        print(f"single registration (verify + store + commit): "
              f"{figures['register_single_per_s']}/s, median "
              f"{figures['register_single_median_ms']} ms")

        blob_path = root / "shared.qcow2"
        blob_path.write_bytes(b"shared synthetic content" * 100)
        blob = ContentRef.for_file(blob_path, "disk")
        repo.register({"general": {"name": "seed"}, "origin": {
            "content_type": "qcow2", "content": [blob.__dict__]}}, [blob_path], admin)

        count = args.single + 1
        bulk_seconds, bulk_images = 0.0, 0
        results = []
        for size in sizes:
            # -- grow the catalogue to this size (bulk registration) ------------------------
            while count < size:
                batch = [(synthetic_document(rng, count + i, blob), [])
                         for i in range(min(1000, size - count))]
                start = time.perf_counter()
                repo.register_many(batch, admin)
                bulk_seconds += time.perf_counter() - start
                bulk_images += len(batch)
                count += len(batch)
            catch_up_ms, _ = timed(repo.match, {"image": "seed"}, admin)

            queries = [(typical_requirement(rng), a_caller(rng)) for _ in range(args.queries)]
            match_ms, candidates = [], []
            for req, caller in queries:
                ms, result = timed(repo.match, req, caller)
                match_ms.append(ms)
                candidates.append(len(result.candidates))
            baseline_ms = [timed(baseline_match, repo, req, caller)[0]
                           for req, caller in queries[:args.baseline_queries]]
            explain_ms, rejected = [], []
            for req, caller in queries[:args.explain_queries]:
                result = repo.match(req, caller)
                ms, explained = timed(lambda r: r.rejected, result)
                explain_ms.append(ms)
                rejected.append(len(explained))
            row = {
                "images": count,
                "match_median_ms": round(statistics.median(match_ms), 3),
                "match_p95_ms": round(percentile(match_ms, 0.95), 3),
                "baseline_median_ms": round(statistics.median(baseline_ms), 2),
                "explain_median_ms": round(statistics.median(explain_ms), 1),
                "index_catch_up_ms": round(catch_up_ms, 1),
                "candidates_median": statistics.median(candidates),
                "rejected_explained_median": statistics.median(rejected),
            }
            row["speedup_vs_baseline"] = round(row["baseline_median_ms"]
                                               / max(row["match_median_ms"], 1e-6), 1)
            results.append(row)
            print(f"{count:>7} images: match median {row['match_median_ms']:.2f} ms, "
                  f"p95 {row['match_p95_ms']:.2f} ms (baseline {row['baseline_median_ms']:.1f} "
                  f"ms, x{row['speedup_vs_baseline']}); explain {row['explain_median_ms']:.0f} "
                  f"ms for {row['rejected_explained_median']} rejected; catch-up "
                  f"{row['index_catch_up_ms']:.0f} ms; {row['candidates_median']} candidates")
        repo.close()

    figures["register_bulk_per_s"] = round(bulk_images / bulk_seconds, 1) if bulk_seconds else 0
    print(f"bulk registration (register_many, 1000 per transaction): "
          f"{figures['register_bulk_per_s']}/s")
    figures["by_size"] = results
    for previous, current in itertools.pairwise(results):
        growth = current["match_median_ms"] / max(previous["match_median_ms"], 1e-6)
        print(f"match cost x{growth:.1f} from {previous['images']} to {current['images']} images")
    largest = results[-1]
    figures["goal_match_p95_le_20ms_at_largest"] = largest["match_p95_ms"] <= 20
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
