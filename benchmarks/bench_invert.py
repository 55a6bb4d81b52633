"""Speed of the invert stage's MaskInversion (issue 4): seconds per image and peak memory.

Default configuration (the issue's): open_clip ViT, width 768, 12 layers, head width 64,
patch 16, image 224, embed dim 384, random weights (seed 0), K = 101 masks, 10 iterations,
lr 0.5, fp32, CPU. ``--shape vit-l-14-336`` uses ViT-L/14-336 shapes (width 1024, 24 layers,
head width 64, patch 14, image 336, embed 768). Run each shape in its own process, since
peak RSS is per process:

    .venv/bin/python benchmarks/bench_invert.py
    .venv/bin/python benchmarks/bench_invert.py --shape vit-l-14-336

On a GPU: ``--device cuda --images 16 --group 8`` (images per optimisation group) and
``--precision bf16`` (also reports the bf16 tokens' cosine against fp32). Prints one JSON
line (wall and process-CPU seconds per image, the 1-minute load average of the machine
at the end, peak RSS of the process). Timing covers the whole per-image work after preprocessing: the vision forward, the
LeGrad operator and the optimisation; the model build and one warm-up image are excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from invert_inputs import SHAPES, build, make_image, make_masks
from masktok.stages.invert import invert_batch

def run(model, images, masks, args, precision: str) -> tuple[float, float, list[torch.Tensor]]:
    """(wall seconds per image, process CPU seconds per image, tokens), after one warm-up group."""
    device = torch.device(args.device)
    tokens, start, cpu_start = [], None, None
    for index in range(-args.group, len(images), args.group):  # first group: warm-up
        chunk = range(max(index, 0), min(max(index, 0) + args.group, len(images)))
        if index == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
        batch = images[list(chunk)].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, _, _ = invert_batch(model, batch, [masks[i].to(device) for i in chunk],
                                     iterations=args.iterations, lr=0.5)
        if index >= 0:
            tokens += [t.float().cpu() for t in out]
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = len(images)
    return (time.perf_counter() - start) / n, (time.process_time() - cpu_start) / n, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="issue")
    parser.add_argument("--masks", type=int, default=101)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--images", type=int, default=1, help="timed images")
    parser.add_argument("--group", type=int, default=1, help="images optimised together")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--quick-gelu", action="store_true", help="QuickGELU (OpenAI weights)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    model = build(args.shape, args.quick_gelu).to(args.device)
    size = SHAPES[args.shape]["image_size"]
    images = make_image(args.shape, args.images)
    masks = [make_masks(args.masks, size, seed=i) for i in range(args.images)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds, cpu_seconds, tokens = run(model, images, masks, args, args.precision)
    result = {
        "shape": args.shape, "masks": args.masks, "iterations": args.iterations,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}",
        "precision": args.precision, "images": args.images, "group": args.group,
        "seconds_per_image": round(seconds, 3), "images_per_second": round(1 / seconds, 3),
        "cpu_seconds_per_image": round(cpu_seconds, 3),
        "load_average_1m": os.getloadavg()[0],  # the machine is shared: wall time depends on it
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "rss_before_inversion_gib": round(rss_before, 3),
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if args.precision == "bf16":
        _, _, reference = run(model, images, masks, args, "fp32")
        cosines = torch.cat([F.cosine_similarity(a, b, dim=-1) for a, b in zip(tokens, reference)])
        result["bf16_vs_fp32_cosine_min"] = round(cosines.min().item(), 5)
        result["bf16_vs_fp32_cosine_mean"] = round(cosines.mean().item(), 5)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
