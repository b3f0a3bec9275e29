"""Benchmark of layer recipes: a recipe built as a layer on the qcow2 base against the same
recipe built as a whole qcow2 image.

    .venv/bin/python bench/layer_recipe.py [--runs 3]

The recipe is tests/e2e/recipes/jq-layer.toml (jq with its closure, a user, a script); the
base is gridvm's qcow2 image (built or taken from the build cache).  Each run builds both
with ``force``, interleaved, in one fresh directory (the first run downloads the packages).
Figures: build seconds (median) and bytes of the image's disk that has to travel — the
layer against the whole disk (the base disk's size for scale).  The last line printed is one
JSON object with every figure.
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

from image_builder import build_image, build_recipe
from image_builder.recipe import load_recipe, parse_recipe

RECIPE = Path(__file__).resolve().parents[1] / "tests/e2e/recipes/jq-layer.toml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = build_image("qcow2")
    base_disk = base.directory / "disk.qcow2"
    layered = load_recipe(RECIPE)
    whole = parse_recipe("\n".join(line for line in RECIPE.read_text().splitlines()
                                   if not line.startswith("base =")), RECIPE.parent)
    times: dict[str, list[float]] = {"layer": [], "whole": []}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="gridvm-bench-", dir="/var/tmp") as tmp:
        for _run in range(args.runs):  # the first run downloads the packages
            for what, recipe in (("whole", whole), ("layer", layered)):
                started = time.monotonic()
                built = build_recipe(recipe, output_root=Path(tmp), force=True,
                                     base_disk=base_disk if what == "layer" else None)
                times[what].append(time.monotonic() - started)
                sizes[what] = built.files[-1].stat().st_size
    median = {what: statistics.median(values) for what, values in times.items()}
    figures = {
        "runs": args.runs, "base_disk_bytes": base_disk.stat().st_size,
        "layer_bytes": sizes["layer"], "whole_disk_bytes": sizes["whole"],
        "layer_vs_whole_bytes": round(sizes["layer"] / sizes["whole"], 4),
        "layer_s": round(median["layer"], 2), "whole_s": round(median["whole"], 2),
        "layer_vs_whole_time": round(median["layer"] / median["whole"], 3),
        "layer_s_all": [round(t, 2) for t in times["layer"]],
        "whole_s_all": [round(t, 2) for t in times["whole"]],
    }
    print(f"disk to ship: layer {sizes['layer'] / 1e6:.1f} MB vs whole image "
          f"{sizes['whole'] / 1e6:.1f} MB ({figures['layer_vs_whole_bytes']:.3f}x; base "
          f"{figures['base_disk_bytes'] / 1e6:.1f} MB)")
    print(f"build (median of {args.runs}): layer {median['layer']:.2f} s vs whole "
          f"{median['whole']:.2f} s ({figures['layer_vs_whole_time']:.3f}x)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
