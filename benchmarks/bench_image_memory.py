"""Benchmark: the memory one large photo takes in a worker, from decode to invert.

One generated 4000 x 3000 JPEG (12 megapixels) goes through the stages in the pipeline's
order: decode, prepare (the models' inputs; the full-resolution image is then dropped, as
the Ray graph drops it), detect (top 100), segment (SAM, 100 boxes), background, filter,
prepare_masks (101 masks into the CLIP frame) and invert (2 iterations), with the tiny
presets, all in one fresh process (its own peak; in a run they are spread over actors, so
each actor's peak is at most this). Reports the process's peak RSS
above what it held after loading the models: what the image itself costs. The models'
sizes do not change the per-image buffers that dominate (full-resolution masks, logits,
the image), so the tiny presets measure them. Target: at most 1.5 GB (issue 14).

    .venv/bin/python benchmarks/bench_image_memory.py [--width 4000 --height 3000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
from pathlib import Path


def _rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**30


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from masktok.models import load_inputs, load_model, materialize_tiny
    from masktok.models.clip_config import TINY_CLIP_NAME
    from masktok.tiny.corpus import draw_scene
    from masktok.schemas.spec import DecodeSpec, FilterSpec, InvertSpec
    from masktok.stages.background import BackgroundStage
    from masktok.stages.decode import DecodeStage
    from masktok.stages.detect import DetectStage
    from masktok.stages.filter import FilterStage
    from masktok.stages.invert import InvertStage
    from masktok.stages.prepare import PrepareImageStage, PrepareMaskStage
    from masktok.stages.segment import SegmentStage

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_image_memory_") as tmp:
        work = Path(tmp)
        paths = materialize_tiny(work / "models")
        clip_inputs = load_inputs("clip", paths["clip"], variant=TINY_CLIP_NAME)
        stages = [DecodeStage(DecodeSpec(), work),
                  PrepareImageStage(clip_inputs, load_inputs("detector", paths["detector"]),
                                    load_inputs("sam", paths["sam"], variant="tiny")),
                  DetectStage(*load_model("detector", paths["detector"], device="cpu"), top_k=100),
                  SegmentStage(load_model("sam", paths["sam"], variant="tiny", device="cpu")),
                  BackgroundStage(), FilterStage(FilterSpec()), PrepareMaskStage(clip_inputs),
                  InvertStage(load_model("clip", paths["clip"], variant=TINY_CLIP_NAME, device="cpu"),
                              InvertSpec(iterations=2))]
        draw_scene(random.Random(0), (args.width, args.height)).save(work / "big.jpg", quality=90)
        batch = [{"index": 0, "image_id": "big.jpg", "path": str(work / "big.jpg")}]
        base_current, base_peak = _rss_gib(), _peak_gib()
        peaks = {}
        for stage in stages:
            batch = stage(batch)
            if isinstance(stage, PrepareImageStage):
                batch[0].pop("image", None)  # as the Ray graph does after prepare
            peaks[type(stage).__name__] = round(_peak_gib() - base_current, 3)
        item = batch[0]
    result = {"width": args.width, "height": args.height, "objects": len(item.get("object_tokens", [])),
              "failed": item.get("error"), "rss_after_models_gib": round(base_current, 3),
              "peak_before_image_gib": round(base_peak, 3),
              "peak_above_models_gib_after_each_stage": peaks,
              "peak_above_models_gib": round(_peak_gib() - base_current, 3)}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
