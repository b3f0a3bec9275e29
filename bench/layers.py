"""Benchmark of layered images: bytes stored and staging time, layered against flattened.

    .venv/bin/python bench/layers.py [--runs 5] [--added-mib 16]

The base is gridvm's qcow2 image (built or taken from the build cache).  A recipe-like change
adds ``--added-mib`` MiB of files to its file system; the result is registered twice in one
repository: flattened (a whole qcow2 disk) and as a layer on the registered base
(``image_repo.layers.make_layer``).  Figures:

1. Bytes the repository stores for the new image: the layer's blob against the flattened
   disk's (the base is stored once either way).
2. Staging time on a host that has the base cached already (another image on it booted
   before): ``BaseImageCache.ensure_chain`` of base + layer (the layer travels and is
   verified, the base's stamp is checked) against ``ensure`` of the flattened disk (the whole
   disk travels and is hashed).  Median of ``--runs``, each on a fresh cache, interleaved.
3. The same on a cold host (nothing cached): base + layer against the flattened disk.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base.identity import Caller
from image_builder import build_image
from image_repo.layers import make_layer
from image_repo.repository import ImageRepository
from image_repo.schema import ContentRef
from image_repo.strict import to_json
from tests.support.disks import changed_disk
from vmm.storage import BaseImageCache

CREATOR = Caller.of("creator", groups=["images"])
IMAGES = Path("/var/tmp/gridvm-test/images")


def document(name: str, disk: Path, backing: str | None = None) -> dict:
    origin = {"content_type": "qcow2", "content": [to_json(ContentRef.for_file(disk, "disk"))],
              "boot": {"mode": "bootloader"}}
    if backing:
        origin["backing_image"] = backing
    return {"general": {"name": name}, "origin": origin}


def staging_times(work: Path, base, layer, flat, runs: int, warm: bool) -> tuple[list, list]:
    """(layered seconds, flattened seconds) per run, each on a fresh cache."""
    layered, flattened = [], []
    for run in range(runs):
        for kind in ("layered", "flat"):
            cache = BaseImageCache(work / f"cache-{kind}-{warm}-{run}")
            if warm:
                cache.ensure(*base)  # another image on this base booted here before
            os.sync()
            started = time.perf_counter()
            if kind == "layered":
                cache.ensure_chain([base, layer])
            else:
                cache.ensure(*flat)
            (layered if kind == "layered" else flattened).append(time.perf_counter() - started)
            shutil.rmtree(cache.root)
    return layered, flattened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--added-mib", type=int, default=16)
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    built = build_image("qcow2", output_root=IMAGES)
    disk = built.directory / "disk.qcow2"
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        added = {f"/etc/bench-{n}.bin": os.urandom(1 << 20) for n in range(args.added_mib)}
        flat_disk = changed_disk(disk, work / "flat.qcow2", added)
        layer_disk = make_layer(flat_disk, disk, work / "layer.qcow2")
        repository = ImageRepository(f"sqlite:///{work / 'catalogue.sqlite'}", work / "store")
        base = repository.register(document("base", disk), [disk], CREATOR)
        layered = repository.register(document("layered", layer_disk, base.id), [layer_disk],
                                      CREATOR)
        flattened = repository.register(document("flattened", flat_disk), [flat_disk],
                                        CREATOR)

        def member(record):
            ref = record.metadata.origin.content[0]
            return repository.store.path(ref.sha512), ref.sha512, ref.size

        (base_path, base_sha, base_bytes) = member(base)
        (layer_path, layer_sha, layer_bytes) = member(layered)
        (flat_path, flat_sha, flat_bytes) = member(flattened)
        warm = staging_times(work, (base_path, base_sha), (layer_path, layer_sha),
                             (flat_path, flat_sha), args.runs, warm=True)
        cold = staging_times(work, (base_path, base_sha), (layer_path, layer_sha),
                             (flat_path, flat_sha), args.runs, warm=False)
        repository.close()
    figures = {
        "added_mib": args.added_mib, "runs": args.runs,
        "base_bytes": base_bytes, "layer_bytes": layer_bytes, "flattened_bytes": flat_bytes,
        "staging_warm_layered_s": statistics.median(warm[0]),
        "staging_warm_flattened_s": statistics.median(warm[1]),
        "staging_cold_layered_s": statistics.median(cold[0]),
        "staging_cold_flattened_s": statistics.median(cold[1]),
    }
    ratios = {
        "stored_layer_vs_flattened": layer_bytes / flat_bytes,
        "staging_warm_layered_vs_flattened": figures["staging_warm_layered_s"]
        / figures["staging_warm_flattened_s"],
        "staging_cold_layered_vs_flattened": figures["staging_cold_layered_s"]
        / figures["staging_cold_flattened_s"],
    }
    for name, value in {**figures, **ratios}.items():
        print(f"{name:<40}{value:>16.4f}" if isinstance(value, float) else
              f"{name:<40}{value:>16}")
    print(json.dumps({**figures, "ratios": ratios}))


if __name__ == "__main__":
    main()
