"""Benchmark: evaluation figures.

- answers/s of ``masktok answer`` (evaluate/answer.py) with a tiny Llama (hidden 64, 2
  layers) trained 4 steps on a tiny cache, 64 questions, spec cls,patch:9,obj:5, 16 new
  tokens at most, greedy, at batch sizes 1 and 16 (one torch thread, CPU); the time
  includes loading the checkpoint and opening the cache (a fraction of a second).
- bytes per image that record v2's ``mask_iou`` adds at K = 101 (100 objects + the
  background): the IoU triangle of 101 rows (5,050 float16 = 10,100 bytes raw) on disk in
  Zarr (zstd, one-row chunks in the sharded layout) and in the WebDataset tar (the npy
  member, its header and tar blocks), for IoU matrices of 100 random boxes on a 640 x 480
  image (box IoU stands in for mask IoU: the same sparsity, about 5-10% of pairs overlap).

    .venv/bin/python benchmarks/bench_eval.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def answers_per_s(tmp: Path) -> dict[str, float]:
    import torch

    from masktok.evaluate.answer import answer
    from masktok.tiny.cache import CAPTIONS, write_corpus, write_tiny_cache
    from masktok.trainer.runtime import TrainConfig
    from masktok.tiny.llm import build_tiny_llm
    from masktok.trainer.train import train

    torch.set_num_threads(1)
    job = write_tiny_cache(tmp / "job", n=64, shard_size=16, failed=())
    data = write_corpus(tmp / "data.json", 64)
    llm = build_tiny_llm(tmp / "llm", list(CAPTIONS) + ["Describe the image."])
    run = tmp / "run"
    train(TrainConfig(stage=2, cache=job, data=data, llm=llm, out=run, max_steps=4, batch_size=8,
                      tokens="cls,patch:9,obj:5"))
    questions = tmp / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": f"img/{i:03d}.jpg",
                                             "text": "Is there a dog in the image?"}) + "\n" for i in range(64)))
    rates = {}
    for batch in (1, 16):
        t0 = time.perf_counter()
        answer(run, job, questions, ["cls,patch:9,obj:5"], tmp / f"answers-{batch}", batch_size=batch,
               max_new_tokens=16)
        rates[f"batch_{batch}"] = round(64 / (time.perf_counter() - t0), 1)
    return rates


def iou_bytes(tmp: Path, images: int = 64, k: int = 101) -> dict[str, float]:
    import numpy as np

    from masktok.pipeline.commit import write_shard
    from masktok.schemas.jobdir import JobDir
    from masktok.stages.write import TokenDims, open_store

    rng = np.random.default_rng(0)
    dims = TokenDims(K=k, D=8, C=8)
    items = []
    for i in range(images):
        x0, y0 = rng.uniform(0, 560, k), rng.uniform(0, 400, k)
        boxes = np.stack([x0, y0, x0 + rng.uniform(10, 200, k), y0 + rng.uniform(10, 150, k)], 1)
        boxes[-1] = [0, 0, 640, 480]
        lo, hi = np.maximum(boxes[:, None, :2], boxes[None, :, :2]), np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        inter = np.clip(hi - lo, 0, None).prod(-1)
        area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
        iou = inter / (area[:, None] + area[None] - inter)
        items.append({"index": i, "image_id": f"im{i}", "width": 640, "height": 480, "patch_norm_mean": 1.0,
                      "patch_norm_std": 0.1, "object_tokens": np.zeros((k, 8), np.float16),
                      "boxes": boxes.astype(np.float32), "scores": np.zeros(k, np.float32),
                      "keep_rank": np.arange(k, dtype=np.int16), "inversion_loss": np.zeros(k, np.float32),
                      "global_token": np.zeros(8, np.float16), "patch_tokens": np.zeros((36, 8), np.float16),
                      "pairwise_iou": iou.astype(np.float16)})
    jd = JobDir(tmp / "iou-job")
    group = open_store(jd.tokens, images, images, dims)
    write_shard(jd, group, 0, 0, images, items, dims, "sha256:bench")
    zarr_bytes = sum(f.stat().st_size for f in (jd.tokens / "mask_iou").rglob("*") if f.is_file())
    with tarfile.open(jd.wds_path(0)) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith("mask_iou.npy")]
    tar_bytes = sum(512 + -(-m.size // 512) * 512 for m in members)  # header block + padded data
    overlapping = float(np.mean([(it["pairwise_iou"][np.triu_indices(k, 1)] > 0).mean() for it in items]))
    return {"raw_bytes_per_image": k * (k - 1) // 2 * 2, "zarr_bytes_per_image": round(zarr_bytes / images),
            "wds_bytes_per_image": round(tar_bytes / images), "overlapping_pairs": round(overlapping, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        result = {"answers_per_s": answers_per_s(Path(tmp)), "mask_iou_k101": iou_bytes(Path(tmp))}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
