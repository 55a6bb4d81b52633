"""Throughput of the front-half stages with the tiny presets, of the CPU halves that prepare
the models' inputs (with the paper's input sizes), and the cost of the IoU matrix.

    .venv/bin/python benchmarks/bench_stages.py [--images 16] [--threads 1] [--out FILE.json]

Images are generated 640x480 demo scenes saved as JPEG. Each stage runs on batches of 4
after one warm-up batch, and is timed alone (its inputs prepared by the previous stages).
Tiny models are random: these figures measure the code paths (preprocessing, one SAM
embedding per image, 100-box prompts, RLE, IoU), not real model cost. The IoU matrix is
timed on 100 smooth ellipse masks (like SAM's, upsampled from 256x256 logits), exact on RLE
(pycocotools), next to a dense float matmul over the decoded masks for comparison.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from masktok.tiny.corpus import draw_scene
from masktok.models import load_model, materialize_tiny
from masktok.schemas.spec import DecodeSpec, DetectSpec, FilterSpec
from masktok.stages.background import BackgroundStage
from masktok.stages.batch import decode_mask, encode_masks
from masktok.stages.decode import DecodeStage
from masktok.stages.detect import DetectStage
from masktok.stages.filter import FilterStage, pairwise_mask_iou
from masktok.stages.masks import BoxMaskStage, TileMaskStage
from masktok.stages.prepare import PrepareImageStage, PrepareMaskStage
from masktok.stages.segment import SegmentStage
from masktok.models.clip_config import PAPER_CLIP_NAME, clip_preprocess
from masktok.models.sam_config import sam_input_size
from transformers import DeformableDetrImageProcessor

BATCH = 4


def _time_stage(stage, batches: list[list[dict]]) -> float:
    """Seconds for ``stage`` over deep copies of ``batches[1:]`` (``batches[0]``: warm-up)."""
    stage(copy.deepcopy(batches[0]))
    work = copy.deepcopy(batches[1:])
    start = time.perf_counter()
    for batch in work:
        stage(batch)
    return time.perf_counter() - start


def _ellipse_masks(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    out = np.empty((n, height, width), dtype=bool)
    for i in range(n):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(5, width / 3), rng.uniform(5, height / 3)
        out[i] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
    return out


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_iou(width: int, height: int, n: int = 100) -> dict[str, float]:
    rles = encode_masks(_ellipse_masks(n, width, height))
    exact_s = _best_of(lambda: pairwise_mask_iou(rles))
    background = BackgroundStage()

    def filter_item() -> None:
        item = {"width": width, "height": height, "boxes": np.zeros((n, 4), np.float32),
                "scores": np.linspace(1, 0, n, dtype=np.float32), "masks": list(rles),
                "mask_iou": np.ones(n, np.float32)}
        FilterStage(FilterSpec())(background([item]))

    dense = torch.from_numpy(np.stack([decode_mask(r) for r in rles]).reshape(n, -1)).float()
    dense_s = _best_of(lambda: dense @ dense.T, repeats=1)
    return {"masks": n, "width": width, "height": height, "rle_iou_s": exact_s,
            "background_plus_filter_s": _best_of(filter_item), "dense_matmul_s": dense_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images timed per stage")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_stages_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    checkpoints = materialize_tiny(work / "models")
    root = work / "images"
    root.mkdir()
    rng = random.Random(0)
    items = []
    for i in range(args.images + BATCH):  # + one warm-up batch
        draw_scene(rng, (640, 480)).save(root / f"{i:04d}.jpg", quality=90)
        items.append({"index": i, "image_id": f"{i:04d}.jpg", "path": str(root / f"{i:04d}.jpg")})
    batches = [items[k : k + BATCH] for k in range(0, len(items), BATCH)]

    stages = {
        "decode": DecodeStage(DecodeSpec(), root),
        "detect (tiny DETR, top 100)": DetectStage(*load_model("detector", checkpoints["detector"]),
                                                   top_k=DetectSpec().top_k),
        "segment (tiny SAM, 100 boxes)": SegmentStage(load_model("sam", checkpoints["sam"], variant="tiny")),
        "box masks (source=boxes)": BoxMaskStage(),
        "tiles (source=tiles, 54)": TileMaskStage(),
        "background (101 masks)": BackgroundStage(),
        "filter (IoU 0.8, 101 rows)": FilterStage(FilterSpec()),
        # the CPU halves with the paper's input settings (no weights needed): Deformable-DETR's
        # processor (shortest side 800, longest 1333), SAM's 1024, CLIP ViT-L/14-336
        "prepare (paper DETR, SAM, CLIP inputs)": PrepareImageStage(
            clip_preprocess(PAPER_CLIP_NAME), DeformableDetrImageProcessor(), sam_input_size("vit_h")),
        "prepare_masks (101 masks, CLIP 336)": PrepareMaskStage(clip_preprocess(PAPER_CLIP_NAME)),
    }
    chain = ["decode", "detect (tiny DETR, top 100)", "segment (tiny SAM, 100 boxes)",
             "background (101 masks)", "filter (IoU 0.8, 101 rows)"]
    inputs = {name: batches for name in stages}
    current = batches
    for name in chain:  # each stage's input is the previous stage's output
        inputs[name] = current
        current = [stages[name](copy.deepcopy(b)) for b in current]
    inputs["box masks (source=boxes)"] = inputs["segment (tiny SAM, 100 boxes)"]
    inputs["tiles (source=tiles, 54)"] = inputs["detect (tiny DETR, top 100)"]
    inputs["prepare (paper DETR, SAM, CLIP inputs)"] = inputs["detect (tiny DETR, top 100)"]  # decoded
    inputs["prepare_masks (101 masks, CLIP 336)"] = current  # filtered

    rows = []
    for name, stage in stages.items():
        seconds = _time_stage(stage, inputs[name])
        timed = sum(len(b) for b in inputs[name][1:])
        rows.append({"stage": name, "images": timed, "seconds": seconds, "images_per_s": timed / seconds})
    iou = [bench_iou(640, 480), bench_iou(2000, 1500)]

    print(f"front-half stages, 640x480 JPEG scenes, batch {BATCH}, torch threads "
          f"{torch.get_num_threads()}, device {stages['detect (tiny DETR, top 100)'].device}")
    print(f"{'stage':34s} {'images/s':>10s}")
    for row in rows:
        print(f"{row['stage']:34s} {row['images_per_s']:10.1f}")
    print(f"\n{'IoU matrix, 100 masks':24s} {'exact RLE':>10s} {'bg+filter':>10s} {'dense fp32':>11s}")
    for r in iou:
        size = f"{r['width']}x{r['height']}"
        print(f"{size:24s} {r['rle_iou_s'] * 1e3:8.1f}ms {r['background_plus_filter_s'] * 1e3:8.1f}ms "
              f"{r['dense_matmul_s'] * 1e3:9.1f}ms")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"python": platform.python_version(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
        args.out.write_text(json.dumps({"meta": meta, "stages": rows, "iou": iou}, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
