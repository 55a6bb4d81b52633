"""The reference ``maskinversion-torch`` 1.1 on ``benchmarks/bench_invert.py``'s inputs: seconds
and peak RSS per image, the upstream half of the side-by-side in docs/scale.md ("MaskInversion
on a CPU"). Runs in the reference environment that ``tools/reference_parity.py`` describes
(open_clip 2.23, maskinversion-torch 1.1, legrad-torch 1.1) and imports nothing from masktok:

    /tmp/refenv/bin/python tools/upstream_invert.py                 # issue shape, K = 101
    .venv/bin/python benchmarks/bench_invert.py                      # masktok, same inputs

Each in its own process (peak RSS is per process). Same tower (seeded random weights), image,
masks, 10 iterations, lr 0.5, fp32. Upstream encodes the image once per mask and keeps
LeGrad's double-backward graph, so its memory grows with K. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from invert_inputs import SHAPES, build, make_image, make_masks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="issue")
    parser.add_argument("--masks", type=int, default=101)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--quick-gelu", action="store_true")
    args = parser.parse_args()
    from maskinversion import MaskInversion  # the reference package: only in its environment

    torch.set_num_threads(os.cpu_count() or 1)
    wrapper = MaskInversion(build(args.shape, args.quick_gelu), layer_index=-1, lr=0.5,
                            iterations=args.iterations)
    size = SHAPES[args.shape]["image_size"]
    image, masks = make_image(args.shape), make_masks(args.masks, size, seed=0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start, cpu_start = time.perf_counter(), time.process_time()
    wrapper.compute_maskinversion(image, masks)
    print(json.dumps({
        "implementation": "maskinversion-torch 1.1", "shape": args.shape, "masks": args.masks,
        "iterations": args.iterations, "device": f"cpu x{torch.get_num_threads()}",
        "seconds_per_image": round(time.perf_counter() - start, 3),
        "cpu_seconds_per_image": round(time.process_time() - cpu_start, 3),
        "load_average_1m": os.getloadavg()[0],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "rss_before_inversion_gib": round(rss_before, 3),
    }))


if __name__ == "__main__":
    main()
