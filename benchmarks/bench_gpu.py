"""Benchmark: the pipeline's model stages per GPU (or CPU), fp32 against bf16 / tf32 (and
``tf32-emulated``: TF32's rounded inputs on any device, stages/tf32.py).

The stages run in one process on one device, back to back, on generated 640x480 scenes
(the packing: every stage in one process holding all three models; `masktok run` spreads
the same stages over Ray actors, docs/scale.md). Per precision: seconds per image of
decode (+ prepare), detect, segment (+ background + filter + prepare_masks), invert, and the end-to-end images/s of
the chain (and of the model stages alone: in a run, the CPU work, decode + prepare and
background + filter + prepare_masks, happens in CPU actors); per non-fp32 precision, its agreement with fp32 on the same images:

- detect: for each fp32 box, its best IoU with a box of the same image at this precision
  (median; ranks may swap near-equal scores), and the largest change of the sorted scores;
- segment (given fp32's boxes, so only SAM's precision differs): mask IoU with fp32's
  masks (median, min);
- invert (given fp32's masks): cosine of each object token with fp32's (median, min) and
  the largest change of the final dice loss.

``--models full`` builds the paper's architectures at full size with random weights and
saves them in the real formats once (``--model-dir``, default bench-out/full-models:
Deformable-DETR with a ResNet-50 backbone, 300 queries, 800/1333 resizing, ~160 MB; SAM
ViT-H 2.4 GB; CLIP ViT-L/14-336 QuickGELU 1.6 GB), then loads them through the real
loaders. ``--models tiny`` uses the tiny presets (the test runs that). Random weights
measure speed and numerical sensitivity, not detection quality.

    .venv/bin/python benchmarks/bench_gpu.py --models full --device cuda --images 16 [--out PATH]
    .venv/bin/python benchmarks/bench_gpu.py --models tiny --device cpu --images 2 --iterations 2
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def build_full_size(folder: Path) -> dict[str, Path]:
    """The paper's three models at full size, random weights (seed 0), in the real formats;
    built once, reused from ``folder`` afterwards."""
    from masktok.models.detector import save_detector
    from masktok.models.sam import save_sam

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"detector": folder / "deformable-detr", "sam": folder / "sam_vit_h.pth",
             "clip": folder / "clip_vit_l_14_336.pt"}
    torch.manual_seed(0)
    if not paths["detector"].exists():
        from transformers import (DeformableDetrConfig, DeformableDetrForObjectDetection,
                                  DeformableDetrImageProcessor, ResNetConfig)

        backbone = ResNetConfig(layer_type="bottleneck", depths=[3, 4, 6, 3], out_features=["stage2", "stage3", "stage4"])
        config = DeformableDetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                                      num_queries=300, num_labels=91)
        processor = DeformableDetrImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333})
        save_detector(DeformableDetrForObjectDetection(config), processor, paths["detector"])
    if not paths["sam"].exists():
        from segment_anything import sam_model_registry

        save_sam(sam_model_registry["vit_h"](), paths["sam"])
    if not paths["clip"].exists():
        import open_clip

        from masktok.models.clip import save_clip

        save_clip(open_clip.create_model("ViT-L-14-336-quickgelu", pretrained=None), paths["clip"])
    return paths


def _scenes(folder: Path, n: int) -> list[dict[str, Any]]:
    from masktok.pipeline.demo_corpus import draw_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    items = []
    for i in range(n):
        draw_scene(rng, (640, 480)).save(folder / f"{i:04d}.jpg", quality=90)
        items.append({"index": i, "image_id": f"{i:04d}.jpg", "path": str(folder / f"{i:04d}.jpg")})
    return items


def _timed(stage: Any, batch: list[dict], device: torch.device) -> tuple[list[dict], float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = stage(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(hi - lo, 0, None).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def _best_box_iou(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each box of ``ref``, its best IoU with a box of ``other``."""
    return np.array([_box_iou(np.repeat(r[None], len(other), 0), other).max() if len(other) else 0.0 for r in ref])


def _mask_iou(a: list[dict], b: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    from masktok.stages.batch import rle_from_json

    return np.array([float(mask_utils.iou([rle_from_json(x)], [rle_from_json(y)], [0])[0, 0]) if
                     mask_utils.area(rle_from_json(x)) + mask_utils.area(rle_from_json(y)) else 1.0
                     for x, y in zip(a, b)])


def run(models: str, device: torch.device, images: int, iterations: int, batch: int, precisions: list[str],
        work: Path, model_dir: Path | None) -> dict[str, Any]:
    from masktok.models import load_inputs, load_model, materialize_tiny
    from masktok.models.clip_config import PAPER_CLIP_NAME, TINY_CLIP_NAME
    from masktok.schemas.spec import DecodeSpec, FilterSpec, InvertSpec
    from masktok.stages.background import BackgroundStage
    from masktok.stages.decode import DecodeStage
    from masktok.stages.detect import DetectStage
    from masktok.stages.filter import FilterStage
    from masktok.stages.invert import InvertStage
    from masktok.stages.prepare import PrepareImageStage, PrepareMaskStage
    from masktok.stages.segment import SegmentStage

    full = models == "full"
    paths = build_full_size(model_dir or work / "full-models") if full else materialize_tiny(work / "models")
    detector = load_model("detector", paths["detector"], device=device)
    sam = load_model("sam", paths["sam"], variant="vit_h" if full else "tiny", device=device)
    clip = load_model("clip", paths["clip"], variant=PAPER_CLIP_NAME if full else TINY_CLIP_NAME, device=device)
    clip_variant = PAPER_CLIP_NAME if full else TINY_CLIP_NAME
    clip_inputs = load_inputs("clip", paths["clip"], variant=clip_variant)
    decode = DecodeStage(DecodeSpec(), work / "images")
    prepare = PrepareImageStage(clip_inputs, load_inputs("detector", paths["detector"]),
                                load_inputs("sam", paths["sam"], variant="vit_h" if full else "tiny"))
    items = _scenes(work / "images", images)
    result: dict[str, Any] = {"models": models, "device": str(device), "images": images, "batch": batch,
                              "invert_iterations": iterations, "packing": "one process, all stages on one device",
                              "seconds_per_image": {}, "images_per_s_end_to_end": {}, "images_per_s_model_stages": {},
                              "agreement_with_fp32": {}}
    reference: dict[str, list[dict]] = {}
    for mode in precisions:
        own = "fp32" if mode == EMULATED_TF32 else mode
        stages = {
            "detect": DetectStage(*detector, top_k=100, precision=own),
            "segment": SegmentStage(sam, precision=own),
            "background+filter": lambda b: PrepareMaskStage(clip_inputs)(FilterStage(FilterSpec())(BackgroundStage()(b))),
            "invert": InvertStage(clip, InvertSpec(iterations=iterations, precision=own)),
        }
        if mode == EMULATED_TF32:
            stages = {name: _under_emulated_tf32(s) if name in MODEL_STAGES else s for name, s in stages.items()}
        seconds = {name: 0.0 for name in ["decode", *stages]}
        outputs: dict[str, list[dict]] = {name: [] for name in stages}
        for start in range(0, images, batch):
            todo, took = _timed(lambda b: prepare(decode(b)), copy.deepcopy(items[start:start + batch]), device)
            seconds["decode"] += took
            for name, stage in stages.items():
                if mode != "fp32" and name in ("segment", "invert") and reference:  # fp32's inputs
                    todo = _inputs_like(reference, name, start, batch, todo)
                todo, took = _timed(stage, todo, device)
                seconds[name] += took
                outputs[name] += copy.deepcopy(todo)
        result["seconds_per_image"][mode] = {k: round(v / images, 4) for k, v in seconds.items()}
        result["images_per_s_end_to_end"][mode] = round(images / sum(seconds.values()), 4)
        # what the GPU actors of a run spend: the CPU groups (decode + prepare, background +
        # filter + prepare_masks) run in parallel on other cores
        result["images_per_s_model_stages"][mode] = round(
            images / sum(seconds[k] for k in MODEL_STAGES), 4)
        if mode == "fp32":
            reference = outputs
        elif reference:
            result["agreement_with_fp32"][mode] = _agreement(reference, outputs)
    return result


#: A precision of this benchmark only: the fp32 stages with the inputs of their matmuls and
#: convolutions rounded to TF32 (stages/tf32.py), TF32's numerical effect measured on a CPU.
EMULATED_TF32 = "tf32-emulated"
MODEL_STAGES = ("detect", "segment", "invert")


def _under_emulated_tf32(stage: Any) -> Any:
    from masktok.stages.tf32 import EmulatedTF32

    def call(batch: list[dict]) -> list[dict]:
        with EmulatedTF32():
            return stage(batch)
    return call


def _inputs_like(reference: dict[str, list[dict]], name: str, start: int, batch: int, todo: list[dict]) -> list[dict]:
    """This batch's input to ``name`` as fp32 produced it (so only the stage's own precision differs)."""
    before = {"segment": "detect", "invert": "background+filter"}[name]
    return copy.deepcopy(reference[before][start:start + batch])


def _agreement(ref: dict[str, list[dict]], out: dict[str, list[dict]]) -> dict[str, float]:
    box_iou = np.concatenate([_best_box_iou(a["boxes"], b["boxes"]) for a, b in zip(ref["detect"], out["detect"])])
    score = max(float(np.abs(np.sort(a["scores"]) - np.sort(b["scores"])).max()) for a, b in zip(ref["detect"], out["detect"]))
    masks = np.concatenate([_mask_iou(a["masks"], b["masks"]) for a, b in zip(ref["segment"], out["segment"])])
    cos, dice = [], []
    for a, b in zip(ref["invert"], out["invert"]):
        ta, tb = torch.from_numpy(a["object_tokens"]).float(), torch.from_numpy(b["object_tokens"]).float()
        cos.append(torch.nn.functional.cosine_similarity(ta, tb, dim=-1).numpy())
        dice.append(np.abs(a["inversion_loss"] - b["inversion_loss"]))
    cos_all, dice_all = np.concatenate(cos), np.concatenate(dice)
    return {"detect_box_iou_median": round(float(np.median(box_iou)), 4), "detect_score_max_change": round(score, 4),
            "segment_mask_iou_median": round(float(np.median(masks)), 4),
            "segment_mask_iou_min": round(float(masks.min()), 4),
            "invert_token_cosine_median": round(float(np.median(cos_all)), 5),
            "invert_token_cosine_min": round(float(cos_all.min()), 5),
            "invert_dice_loss_max_change": round(float(dice_all.max()), 5)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", choices=["tiny", "full"], default="full" if torch.cuda.is_available() else "tiny",
                    help="default: full on a GPU node, tiny elsewhere")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=16 if torch.cuda.is_available() else 4)
    ap.add_argument("--batch", type=int, default=4, help="images per stage call")
    ap.add_argument("--iterations", type=int, default=10 if torch.cuda.is_available() else 3,
                    help="MaskInversion iterations (the paper: 10)")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help=f"comma-separated; fp32 first is the reference; {EMULATED_TF32}: TF32 emulated on any device")
    ap.add_argument("--model-dir", type=Path, default=None, help="where full-size checkpoints are kept")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model_dir or (HERE.parent / "bench-out" / "full-models" if args.models == "full" else None)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        result = run(args.models, torch.device(args.device), args.images, args.iterations, args.batch,
                     args.precisions.split(","), Path(tmp), model_dir)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
