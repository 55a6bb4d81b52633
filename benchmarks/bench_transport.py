"""Benchmark: what one image costs to move between actor pools, as the pipeline moves it
(large arrays as Ray Data tensor columns, pipeline/transport.py) against one pickled dict
per image (how masktok moved items before; the baseline here).

One generated photo is decoded and prepared with the paper's input settings (Deformable-DETR's
800/1333 processor, SAM's 1024 side, CLIP ViT-L/14-336 'pad'; no weights are needed), with
K synthetic masks. For each hop of the sam topology, the arrays that hop carries go through
Ray's real path: numpy batch -> Arrow block -> object store (``ray.put``) -> ``ray.get`` ->
numpy batch -> item; seconds are the median of ``--repeats``. Bytes are what the block
holds. The baseline is the graph before CPU preparation: one pickled dict per image over
three hops, carrying the full-resolution image to invert.

    .venv/bin/python benchmarks/bench_transport.py [--width 4000 --height 3000 --masks 101] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _hop(ray: Any, batch: dict[str, np.ndarray], unpack: Any, repeats: int) -> tuple[float, int]:
    from ray.data.block import BlockAccessor

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        block = BlockAccessor.batch_to_block(batch)
        ref = ray.put(block)
        got = BlockAccessor.for_block(ray.get(ref)).to_batch_format("numpy")
        items = unpack(got)
        assert len(items) == 1
        seconds.append(time.perf_counter() - start)
        del ref, got, items
    return statistics.median(seconds), int(BlockAccessor.for_block(block).size_bytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--masks", type=int, default=101)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import ray
    from transformers import DeformableDetrImageProcessor

    from masktok.models.clip_config import clip_preprocess
    from masktok.tiny.corpus import draw_scene
    from masktok.pipeline.graph import columns_after
    from masktok.stages.topology import topology
    from masktok.pipeline.transport import ARRAY_COLUMNS, from_columns, to_columns
    from masktok.schemas.spec import JobSpec
    from masktok.stages.batch import encode_masks
    from masktok.stages.prepare import PrepareImageStage, PrepareMaskStage

    import random

    image = np.asarray(draw_scene(random.Random(0), (args.width, args.height)).convert("RGB"))
    rng = np.random.default_rng(0)
    masks = np.zeros((args.masks, args.height, args.width), bool)
    for k in range(args.masks):
        y, x = rng.integers(0, args.height // 2), rng.integers(0, args.width // 2)
        masks[k, y : y + args.height // 3, x : x + args.width // 3] = True
    item = {"index": 0, "image_id": "big.jpg", "path": "big.jpg", "height": args.height, "width": args.width,
            "image": image, "boxes": rng.random((args.masks, 4), dtype=np.float32)}
    clip = clip_preprocess("ViT-L-14-336-quickgelu")
    (item,) = PrepareImageStage(clip, DeformableDetrImageProcessor(), 1024)([item])
    item["masks"] = encode_masks(masks)
    del masks
    (item,) = PrepareMaskStage(clip)([item])

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    arrays = set(ARRAY_COLUMNS)
    small = {k: v for k, v in item.items() if k not in arrays and k != "masks"}
    produced_by = {"prepare": {"detector_pixels", "sam_pixels", "clip_pixels"}, "prepare_masks": {"clip_masks"}}
    # the pipeline: each hop carries the arrays made so far that a later stage reads, the RLE
    # masks once segment made them
    groups = topology(JobSpec())
    hops, made, total, masks_made = {}, set(), [0.0, 0], False
    for i, group in enumerate(groups[:-1]):
        names = {stage.name for stage in group.stages}
        made |= set().union(*(produced_by.get(n, set()) for n in names))
        masks_made = masks_made or "segment" in names
        columns = tuple(c for c in columns_after(groups, i) if c in made)
        carried = {**small, **{c: item[c] for c in columns}, **({"masks": item["masks"]} if masks_made else {})}
        seconds, size = _hop(ray, to_columns([carried], columns_after(groups, i)), from_columns, args.repeats)
        hops[f"{group.name} -> {groups[i + 1].name}"] = {"arrays": list(columns), "seconds": round(seconds, 4),
                                                          "mb": round(size / 1e6, 2)}
        total[0] += seconds
        total[1] += size
    # the baseline: one pickled dict per image, the full-resolution image to invert (which
    # brought the masks into CLIP's frame itself), the RLE masks after segment
    base_hops, base_total = {}, [0.0, 0]
    for name, with_masks in (("decode -> detect", False), ("detect -> segment", False), ("segment -> invert", True)):
        old = {**small, "image": image, **({"masks": item["masks"]} if with_masks else {})}
        seconds, size = _hop(ray, {"item": np.array([pickle.dumps(old, protocol=5)], dtype=object)},
                             lambda b: [pickle.loads(x) for x in b["item"]], args.repeats)
        base_hops[name] = {"seconds": round(seconds, 4), "mb": round(size / 1e6, 2)}
        base_total[0] += seconds
        base_total[1] += size
    ray.shutdown()
    result = {"width": args.width, "height": args.height, "masks": args.masks,
              "columns": {"hops": hops, "seconds_per_image": round(total[0], 4), "mb_per_image": round(total[1] / 1e6, 1)},
              "pickled_dict_baseline": {"hops": base_hops, "seconds_per_image": round(base_total[0], 4),
                                        "mb_per_image": round(base_total[1] / 1e6, 1)}}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
