"""Benchmark: the trainer's step from cached tokens against the same step that also runs a
CLIP vision tower on the images, and the data loaders' samples/s from Zarr and WebDataset.

- train: stage-2 steps (projector + tiny Llama, batch B, fp32 on CPU) over a synthetic
  cache with the demo's widths (K=21, D=32, C=64), samples/s. "tower" runs, in each step,
  a frozen CLIP vision forward (``masktok.stages.vision.encode_vision``) on B random images
  and feeds its global and patch tokens instead of the cached ones (the object tokens stay
  the cached ones, or zeros of the tower's width, so both sequences have the same length).
  The ratio cached/tower is what the cache saves on the global/patch tokens alone; the
  object tokens' MaskInversion (seconds per image, README) is not even in the tower step.
- loaders: items/s of the training datasets (template + composition included) from Zarr
  (block shuffle, the trainer's default, and a plain random shuffle) and streaming from
  the WebDataset shards.

    .venv/bin/python benchmarks/bench_trainer.py [--tower tiny|vit-b-16] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rate(fn, seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tower", choices=["tiny", "vit-b-16"], default="tiny")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--llm-hidden", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--tokens", default="cls,patch:36,obj:21")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import open_clip
    import torch
    from torch.utils.data import DataLoader

    from masktok.models.clip import build_tiny_clip
    from masktok.tiny.cache import CAPTIONS, write_corpus, write_tiny_cache
    from masktok.stages.vision import encode_vision
    from masktok.stages.write import TokenDims
    from masktok.trainer.visual.compose import VisualTokens
    from masktok.trainer.data.datasets import ConversationDataset, ItemBuilder, StreamingConversations, collate
    from masktok.trainer.parallel.distributed import ResumableSampler
    from masktok.trainer.data.readers import WdsImages, ZarrImages
    from masktok.trainer.data.records import join_records, load_records
    from masktok.trainer.runtime import build_model, load_llm, load_tokenizer
    from masktok.tiny.llm import build_tiny_llm
    from masktok.trainer.visual.token_spec import parse_spec

    tmp = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    dims = TokenDims(K=21, D=32, C=64)
    job = write_tiny_cache(tmp / "job", n=args.images, shard_size=128, dims=dims, failed=())
    data = write_corpus(tmp / "data.json", args.images)
    llm_dir = build_tiny_llm(tmp / "llm", list(CAPTIONS) + ["Describe the image."], hidden=args.llm_hidden)
    tok = load_tokenizer(llm_dir)
    images = ZarrImages(job)
    examples, _ = join_records(load_records(data), images.image_ids, images.status)
    build = ItemBuilder(2, tok, parse_spec(args.tokens), "per-image")
    fn = partial(collate, pad_id=tok.pad_token_id)
    ds = ConversationDataset(examples, images, build)

    # --- data loaders ---------------------------------------------------------------------
    def loader_rate(make) -> float:
        t0 = time.perf_counter()
        n = sum(len(b["lengths"]) for b in make())
        return n / (time.perf_counter() - t0)

    block = ResumableSampler(len(ds), blocks=ds.blocks())
    loaders = {
        "zarr_block_shuffle": loader_rate(lambda: DataLoader(ConversationDataset(examples, ZarrImages(job), build),
                                                             batch_size=args.batch_size, sampler=block, collate_fn=fn)),
        "zarr_random_shuffle": loader_rate(lambda: DataLoader(ConversationDataset(examples, ZarrImages(job), build),
                                                              batch_size=args.batch_size, shuffle=True, collate_fn=fn)),
        "webdataset_stream": loader_rate(lambda: DataLoader(StreamingConversations(examples, WdsImages(job), build),
                                                            batch_size=args.batch_size, collate_fn=fn)),
    }
    print("loader items/s:", {k: round(v, 1) for k, v in loaders.items()}, flush=True)

    # --- training step: cached tokens vs a vision tower in the step -----------------------------
    if args.tower == "tiny":
        tower = build_tiny_clip(0)
    else:
        tower = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tower.requires_grad_(False)
    size = tower.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    t_d = tower.visual.output_dim
    t_c = tower.visual.transformer.width
    batches = list(DataLoader(ds, batch_size=args.batch_size, sampler=block, collate_fn=fn))

    def make_step(use_tower: bool):
        torch.manual_seed(0)
        model = build_model(load_llm(llm_dir), {"C": t_c, "D": t_d} if use_tower else dims.as_dict())
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        state = {"i": 0}

        def step() -> int:
            batch = dict(batches[state["i"] % len(batches)])
            state["i"] += 1
            if use_tower:
                b = len(batch["visual"])
                feats = encode_vision(tower, torch.rand(b, 3, size, size), keep_inputs_from=10**6)
                batch["visual"] = [VisualTokens(glob=feats.global_token[j:j + 1], patch=feats.patch_tokens[j],
                                                objects=v.objects if v.objects.shape[1] == t_d
                                                else torch.zeros(len(v.objects), t_d))
                                   for j, v in enumerate(batch["visual"])]
            loss = model(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return len(batch["lengths"])

        return step

    cached = _rate(make_step(False), args.seconds)
    towered = _rate(make_step(True), args.seconds)
    tower_params = sum(p.numel() for p in tower.visual.parameters())
    result = {
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "tokens": args.tokens,
        "llm_hidden": args.llm_hidden, "tower": args.tower, "tower_image_size": size,
        "tower_vision_params": tower_params,
        "train_samples_per_s_cached": round(cached, 2), "train_samples_per_s_with_tower": round(towered, 2),
        "ratio_cached_over_tower": round(cached / towered, 2),
        "loader_items_per_s": {k: round(v, 1) for k, v in loaders.items()}, "images": args.images,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
