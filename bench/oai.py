"""OAI-PMH harvesting benchmark: records/s a real harvester (sickle) gets over HTTP.

A catalogue of ``--images`` synthetic images (SQLite, a temporary directory) is served by
``image_repo.oaipmh.OaiProvider`` on 127.0.0.1; sickle harvests every record an anonymous
harvester may see (ListRecords, oai_dc and gridvm) and ListIdentifiers, page by page
with resumption tokens.  Baseline, measured in the same run: the catalogue's own
``ImageRepository.list()`` over the same images (as an anonymous caller), records/s.  The
ratio is harvested/s divided by baseline/s.  The last line is one JSON object.

    .venv/bin/python bench/oai.py [--images 5000] [--page 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sickle import Sickle

from image_repo.oaipmh import ANONYMOUS, OaiProvider, ProviderInfo
from image_repo.repository import ImageRepository
from tests.image_repo.oai_catalogue import anonymous_visible, fill, serve_provider


def timed(action, rounds: int) -> tuple[float, int]:
    """Median seconds of ``action()`` over ``rounds``, and what it returned (a count)."""
    seconds, count = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        count = action()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--page", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridvm-bench-oai-") as scratch:
        root = Path(scratch)
        repository = ImageRepository(f"sqlite:///{root / 'c.sqlite'}", root / "store")
        started = time.perf_counter()
        fill(repository, options.images)
        print(f"catalogue of {options.images} images in {time.perf_counter() - started:.1f} s;"
              f" {anonymous_visible(options.images)} visible to an anonymous harvester")
        provider = OaiProvider(repository, ProviderInfo(
            "bench", "http://127.0.0.1/oai", "bench@localhost", "bench.gridvm",
            options.page))
        baseline_s, baseline_n = timed(lambda: len(repository.list(ANONYMOUS)), options.rounds)
        figures = {"images": options.images, "page": options.page,
                   "baseline_list_records_per_s": round(baseline_n / baseline_s, 1)}
        print(f"baseline ImageRepository.list(): {baseline_n} records in {baseline_s:.2f} s "
              f"= {figures['baseline_list_records_per_s']}/s")
        with serve_provider(provider) as url:
            harvester = Sickle(url, max_retries=0, timeout=60)
            for name, verb, prefix in (("list_records_oai_dc", "ListRecords", "oai_dc"),
                                       ("list_records_gridvm", "ListRecords", "gridvm"),
                                       ("list_identifiers", "ListIdentifiers", "oai_dc")):
                method = getattr(harvester, verb)
                seconds, count = timed(lambda m=method, p=prefix: sum(
                    1 for _ in m(metadataPrefix=p)), options.rounds)
                rate = count / seconds
                figures[f"{name}_per_s"] = round(rate, 1)
                figures[f"{name}_ratio_vs_baseline"] = round(
                    rate / figures["baseline_list_records_per_s"], 2)
                figures[f"{name}_count"] = count
                print(f"{verb} {prefix}: {count} records in {seconds:.2f} s = {rate:.0f}/s "
                      f"(x{figures[f'{name}_ratio_vs_baseline']} of the baseline)")
        repository.close()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
