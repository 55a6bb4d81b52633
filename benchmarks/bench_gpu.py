"""Benchmark: the pipeline's model stages per GPU (or CPU) at each precision (issue 21).

The stages run in one process on one device, back to back, on generated 640x480 scenes
(the packing: every stage in one process holding all three models; `masktok run` spreads
the same stages over Ray actors, docs/scale.md). Per precision (fp32, tf32, bf16,
bf16-operator: invert's operator stored in bf16; tf32-emulated: TF32's rounded inputs on any
device, stages/tf32.py): seconds per image of decode (+ prepare), detect, segment,
background + filter + prepare_masks and invert, the end-to-end images/s (and of the model
stages alone: in a run the CPU work happens in CPU actors), peak GPU memory per stage, and
each stage's agreement with fp32, with segment given fp32's boxes and invert fp32's masks
so that only the stage's own precision differs (gpu_yardstick.py: box IoU and score, mask
IoU, token cosine, final dice). The yardstick is fp32's own sensitivity, measured the same
way on imperceptibly changed inputs (one-level noise, JPEG q95, masks optimised alone):
``passes_noise_floor`` says per precision and stage whether no figure is worse than that.
FLOPs per image per stage are counted on one untimed batch (gpu_flops.py), with the ceiling
images/s for H100 and H200 per precision and the achieved TFLOP/s of each measured time.
Estimated from the shapes, never measured: the bytes of one MaskInversion step with the torch
relevance (``invert_step_gb_estimate``) and the fused Triton one (``..._fused``), and per
kernel its arithmetic intensity and the invert ceiling per H100 (``invert_roofline_estimate``).

``--models full`` builds the paper's architectures at full size with random weights and
saves them in the real formats once (``--model-dir``, default bench-out/full-models:
Deformable-DETR with a ResNet-50 backbone, 300 queries, 800/1333 resizing, ~160 MB; SAM
ViT-H 2.4 GB; CLIP ViT-L/14-336 QuickGELU 1.6 GB), then loads them through the real
loaders. ``--models tiny`` uses the tiny presets (the test runs that). Random weights
measure speed and numerical sensitivity, not detection quality.

    .venv/bin/python benchmarks/bench_gpu.py --models full --device cuda [--quick] --out bench-out/gpu.json
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

import torch

from masktok.schemas.spec import DetectSpec
from masktok.stages.precision import INVERT_ONLY, INVERT_PRECISIONS, operator_dtype
from gpu_flops import PEAK_OF_MODE, achieved, ceilings, count_flops, device_peak, invert_roofline, invert_step_bytes
from gpu_yardstick import PERTURBATIONS, agreement, masks_alone, noise_floor as floor_of, passes, token_agreement

HERE = Path(__file__).resolve().parent
#: the boxes detect keeps: the spec's default, the paper's 100
TOP_K = DetectSpec().top_k


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
    from masktok.tiny.corpus import draw_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    items = []
    for i in range(n):
        draw_scene(rng, (640, 480)).save(folder / f"{i:04d}.jpg", quality=90)
        items.append({"index": i, "image_id": f"{i:04d}.jpg", "path": str(folder / f"{i:04d}.jpg")})
    return items


def _timed(call: Any, device: torch.device) -> tuple[list[dict], float, float]:
    """``call()``'s (output, seconds, peak GPU memory in GiB: 0 on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = call()
    peak = 0.0
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out, time.perf_counter() - t0, peak


#: A precision of this benchmark only: the fp32 stages with the inputs of their matmuls and
#: convolutions rounded to TF32 (stages/tf32.py), TF32's numerical effect measured on a CPU.
EMULATED_TF32 = "tf32-emulated"
MODEL_STAGES = ("detect", "segment", "invert")
#: What an item carries of its image: replaced by a perturbed image's, the rest kept.
IMAGE_FIELDS = ("image", "detector_pixels", "sam_pixels", "clip_pixels")


def _under_emulated_tf32(stage: Any) -> Any:
    from masktok.stages.tf32 import EmulatedTF32

    def call(batch: list[dict]) -> list[dict]:
        with EmulatedTF32():
            return stage(batch)
    return call


class _Bench:
    """The models, the inputs and the fp32 reference of one benchmark run."""

    def __init__(self, models: str, device: torch.device, images: int, iterations: int, batch: int,
                 work: Path, model_dir: Path | None, top_k: int = TOP_K) -> None:
        from masktok.models import load_inputs, load_model, materialize_tiny
        from masktok.models.clip_config import PAPER_CLIP_NAME, TINY_CLIP_NAME
        from masktok.schemas.spec import DecodeSpec
        from masktok.stages.decode import DecodeStage
        from masktok.stages.prepare import PrepareImageStage, PrepareMaskStage

        full = models == "full"
        paths = build_full_size(model_dir or work / "full-models") if full else materialize_tiny(work / "models")
        sam_variant, clip_variant = ("vit_h", PAPER_CLIP_NAME) if full else ("tiny", TINY_CLIP_NAME)
        self.detector = load_model("detector", paths["detector"], device=device)
        self.sam = load_model("sam", paths["sam"], variant=sam_variant, device=device)
        self.clip = load_model("clip", paths["clip"], variant=clip_variant, device=device)
        clip_inputs = load_inputs("clip", paths["clip"], variant=clip_variant)
        self.prepare_masks = PrepareMaskStage(clip_inputs)
        self.decode = DecodeStage(DecodeSpec(), work / "images")
        self.prepare = PrepareImageStage(clip_inputs, load_inputs("detector", paths["detector"]),
                                         load_inputs("sam", paths["sam"], variant=sam_variant))
        self.device, self.iterations, self.batch, self.images = device, iterations, batch, images
        self.top_k = top_k
        self.items = _scenes(work / "images", images)
        self.reference: dict[str, list[dict]] = {}
        self.inputs: dict[str, list[dict]] = {}  # fp32's input of each stage, all images

    def stages(self, mode: str) -> dict[str, Any]:
        from masktok.schemas.spec import FilterSpec, InvertSpec
        from masktok.stages.background import BackgroundStage
        from masktok.stages.detect import DetectStage
        from masktok.stages.filter import FilterStage
        from masktok.stages.invert import InvertStage
        from masktok.stages.segment import SegmentStage

        own = "fp32" if mode == EMULATED_TF32 else mode
        other = "fp32" if mode in INVERT_ONLY else own
        stages = {
            "detect": DetectStage(*self.detector, top_k=self.top_k, precision=other),
            "segment": SegmentStage(self.sam, precision=other),
            "background+filter": lambda b: self.prepare_masks(FilterStage(FilterSpec())(BackgroundStage()(b))),
            "invert": InvertStage(self.clip, InvertSpec(iterations=self.iterations, precision=own)),
        }
        if mode == EMULATED_TF32:
            stages = {name: _under_emulated_tf32(s) if name in MODEL_STAGES else s for name, s in stages.items()}
        return stages

    def decoded(self, start: int, perturb: Any = None) -> list[dict]:
        batch = self.decode(copy.deepcopy(self.items[start:start + self.batch]))
        if perturb is not None:
            for item in batch:
                if "image" in item:
                    item["image"] = perturb(item["image"], seed=item["index"])
        return self.prepare(batch)

    def run(self, mode: str, perturb: Any = None) -> tuple[dict[str, list[dict]], dict[str, float], dict[str, float]]:
        """One pass over the images at ``mode``: (outputs, seconds per image, peak GiB) per stage.
        fp32 unperturbed makes the reference; every other pass feeds segment and invert fp32's
        inputs (its boxes, its masks) so that only the stage's own precision, or the image, differs."""
        stages = self.stages(mode)
        if mode in INVERT_ONLY:
            stages = {"invert": stages["invert"]}
        seconds = {name: 0.0 for name in ["decode", *stages]}
        peaks = {name: 0.0 for name in stages}
        outputs: dict[str, list[dict]] = {name: [] for name in stages}
        making_reference = not self.reference
        for start in range(0, self.images, self.batch):
            todo, took, _ = _timed(lambda: self.decoded(start, perturb), self.device)
            seconds["decode"] += took
            images = {item["index"]: item for item in todo}
            for name, stage in stages.items():
                if making_reference:
                    self.inputs.setdefault(name, []).extend(copy.deepcopy(todo))
                elif name in ("segment", "invert"):
                    todo = _with_images(self.inputs[name][start:start + self.batch], images)
                todo, took, peak = _timed(lambda: stage(todo), self.device)
                seconds[name] += took
                peaks[name] = max(peaks[name], round(peak, 3))
                outputs[name] += copy.deepcopy(todo)
        if making_reference:
            self.reference = outputs
        return outputs, {k: round(v / self.images, 4) for k, v in seconds.items()}, peaks


def _with_images(inputs: list[dict], images: dict[int, dict]) -> list[dict]:
    """fp32's stage inputs carrying this pass's image fields (the same unless perturbed)."""
    out = copy.deepcopy(inputs)
    for item in out:
        source = images.get(item["index"], {})
        item.update({k: source[k] for k in IMAGE_FIELDS if k in item and k in source})
    return out


def run(models: str, device: torch.device, images: int, iterations: int, batch: int, precisions: list[str],
        work: Path, model_dir: Path | None, noise_floor: bool = True, alone_masks: int = 4,
        flops: bool = True, top_k: int = TOP_K) -> dict[str, Any]:
    began = time.perf_counter()
    bench = _Bench(models, device, images, iterations, batch, work, model_dir, top_k)
    result: dict[str, Any] = {"models": models, "device": str(device), "images": images, "batch": batch,
                              "detect_top_k": top_k, "invert_iterations": iterations, "packing": "one process, all stages on one device",
                              "seconds_per_image": {}, "images_per_s_end_to_end": {}, "images_per_s_model_stages": {},
                              "peak_gpu_memory_gib": {}, "agreement_with_fp32": {}}
    for mode in precisions:
        outputs, seconds, peaks = bench.run(mode)
        result["seconds_per_image"][mode] = seconds
        result["peak_gpu_memory_gib"][mode] = peaks
        if mode not in INVERT_ONLY:
            result["images_per_s_end_to_end"][mode] = round(1 / sum(seconds.values()), 4)
            # what the GPU actors of a run spend: the CPU groups (decode + prepare, background +
            # filter + prepare_masks) run in parallel on other cores
            result["images_per_s_model_stages"][mode] = round(1 / sum(seconds[k] for k in MODEL_STAGES), 4)
        if mode != "fp32":
            result["agreement_with_fp32"][mode] = agreement(bench.reference, outputs)
    if noise_floor:
        sensitivity = {name: agreement(bench.reference, bench.run("fp32", perturb)[0])
                       for name, perturb in PERTURBATIONS.items()}
        if alone_masks:
            invert = bench.stages("fp32")["invert"]
            sensitivity["mask_alone"] = token_agreement(*masks_alone(invert, bench.inputs["invert"], bench.reference["invert"], alone_masks))
        floor = floor_of(sensitivity)
        result["noise_floor"] = {**sensitivity, "floor": floor}
        result["passes_noise_floor"] = {mode: passes(figures, floor) for mode, figures in result["agreement_with_fp32"].items()}
    if flops:
        first = {name: bench.inputs[name][:batch] for name in MODEL_STAGES}
        stages = bench.stages("fp32")
        counted = {name: count_flops(lambda: stages[name](copy.deepcopy(first[name])), stages[name])
                   / len(first[name]) / 1e12 for name in MODEL_STAGES}
        tflop = {k: float(f"{v:.4g}") for k, v in {**counted, "total": sum(counted.values())}.items()}
        peak = device_peak(device)
        result["tflop_per_image"] = tflop
        result["ceiling_images_per_s"] = ceilings(tflop["total"])
        result["device_peak_tflops"] = peak
        result["achieved"] = {mode: achieved(counted, seconds, peak[PEAK_OF_MODE[mode]])
                              for mode, seconds in result["seconds_per_image"].items()}
    result["invert_step_gb_estimate"] = {mode: _step_bytes(bench.clip, mode) for mode in precisions}
    result["invert_step_gb_estimate_fused"] = {mode: _step_bytes(bench.clip, mode, fused=True) for mode in precisions}
    result["invert_roofline_estimate"] = {mode: _roofline(bench.clip, mode, iterations) for mode in precisions
                                          if mode in PEAK_OF_MODE}
    result["wall_seconds"] = round(time.perf_counter() - began, 1)
    return result


def _shapes(clip: torch.nn.Module, mode: str, masks: int) -> tuple[int, ...]:
    """(D, N, C, H, K, side, operator bytes, relevance bytes) of this CLIP at ``mode``."""
    visual = clip.visual
    side, patch = visual.image_size[0], visual.patch_size[0]
    tokens = (side // patch) ** 2 + 1
    width = visual.transformer.width
    heads = visual.transformer.resblocks[0].attn.num_heads
    relevance = 2 if mode == "bf16" else 4  # autocast runs the relevance in bf16
    return visual.output_dim, tokens, width, heads, masks, side, operator_dtype(mode).itemsize, relevance


def _step_bytes(clip: torch.nn.Module, mode: str, masks: int = 101, fused: bool = False) -> dict[str, float]:
    """Bytes one MaskInversion step of one image with ``masks`` masks moves at ``mode``
    (gpu_flops.invert_step_bytes: an estimate from this CLIP's shapes); ``fused``: with the
    Triton relevance (``invert.kernel``), which never writes the attention gradients."""
    return invert_step_bytes(*_shapes(clip, mode, masks), fused=fused)


def _roofline(clip: torch.nn.Module, mode: str, iterations: int, masks: int = 101) -> dict[str, dict]:
    """Per kernel (torch, triton): gpu_flops.invert_roofline on an H100 SXM: an estimate
    from the shapes and the datasheet, not a measurement."""
    D, N, C, H, K, side, op_bytes, rel_bytes = _shapes(clip, mode, masks)
    return {kernel: invert_roofline(D, N, C, H, K, side, iterations, mode, op_bytes, rel_bytes, kernel == "triton")
            for kernel in ("torch", "triton")}


def table(result: dict[str, Any]) -> str:
    """The figures as one Markdown table per precision: s/image, TFLOP/s, agreement, verdict."""
    lines = [f"{result['models']} models on {result['device']}, {result['images']} images, "
             f"{result['detect_top_k']} boxes each, {result['invert_iterations']} invert iterations, {result['wall_seconds']} s",
             "", "| precision | stage | s/image | TFLOP/s | of peak | peak GiB | agreement with fp32 | within noise floor |",
             "|---|---|---|---|---|---|---|---|"]
    floor_verdict = result.get("passes_noise_floor", {})
    for mode, seconds in result["seconds_per_image"].items():
        figures = result["agreement_with_fp32"].get(mode, {})
        for stage in MODEL_STAGES:
            if stage not in seconds:
                continue
            rate = result.get("achieved", {}).get(mode, {}).get(stage, {})
            mine = ", ".join(f"{k.split('_', 1)[1]} {v}" for k, v in figures.items() if k.startswith(stage))
            verdict = floor_verdict.get(mode, {}).get(stage, "")
            lines.append(f"| {mode} | {stage} | {seconds[stage]} | {rate.get('tflops', '')} | "
                         f"{rate.get('fraction_of_peak', '')} | {result['peak_gpu_memory_gib'][mode].get(stage, '')} | "
                         f"{mine} | {verdict} |")
    if "noise_floor" in result:
        lines += ["", "noise floor (fp32 against fp32 on an imperceptibly changed input): "
                  + ", ".join(f"{k} {v}" for k, v in result["noise_floor"]["floor"].items())]
    if "tflop_per_image" in result:
        lines += ["", "TFLOP per image: " + ", ".join(f"{k} {v}" for k, v in result["tflop_per_image"].items()),
                  "ceiling images/s per GPU at 100% of peak: " + "; ".join(
                      f"{gpu} " + ", ".join(f"{m} {v}" for m, v in modes.items())
                      for gpu, modes in result["ceiling_images_per_s"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", choices=["tiny", "full"], default="full" if cuda else "tiny",
                    help="default: full on a GPU node, tiny elsewhere")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--images", type=int, default=None, help="default: 16 on a GPU (--quick: 4), 4 elsewhere")
    ap.add_argument("--batch", type=int, default=4, help="images per stage call")
    ap.add_argument("--top-k", type=int, default=TOP_K,
                    help=f"boxes kept by detect (the paper: {TOP_K}; invert optimises one mask per box and the background)")
    ap.add_argument("--iterations", type=int, default=10 if cuda else 3,
                    help="MaskInversion iterations (the paper: 10)")
    ap.add_argument("--precisions", default=None,
                    help="comma-separated, fp32 first (the reference); default: fp32,tf32,bf16,bf16-operator "
                         f"on a GPU, fp32,{EMULATED_TF32},bf16,bf16-operator elsewhere ({EMULATED_TF32}: TF32 emulated)")
    ap.add_argument("--noise-floor", action=argparse.BooleanOptionalAction, default=True,
                    help="measure fp32's own sensitivity (one-level noise, JPEG q95, masks alone)")
    ap.add_argument("--alone-masks", type=int, default=None, help="masks per image optimised alone (default 4, --quick 2)")
    ap.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                    help="count FLOPs per stage on one untimed batch")
    ap.add_argument("--quick", action="store_true", help="4 images and 2 lone masks per image: the short GPU check")
    ap.add_argument("--model-dir", type=Path, default=None, help="where full-size checkpoints are kept")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--out", type=Path, help="write the JSON here and the table beside it (.md)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = args.images or (4 if args.quick or device.type != "cuda" else 16)
    precisions = (args.precisions or ("fp32,tf32,bf16,bf16-operator" if device.type == "cuda"
                                      else f"fp32,{EMULATED_TF32},bf16,bf16-operator")).split(",")
    known = (*INVERT_PRECISIONS, EMULATED_TF32)
    if precisions[0] != "fp32" or not set(precisions) <= set(known):
        ap.error(f"--precisions: fp32 first (the reference), then any of {', '.join(known[1:])}")
    alone = args.alone_masks if args.alone_masks is not None else (2 if args.quick else 4)
    model_dir = args.model_dir or (HERE.parent / "bench-out" / "full-models" if args.models == "full" else None)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        result = run(args.models, device, images, args.iterations, args.batch, precisions, Path(tmp), model_dir,
                     noise_floor=args.noise_floor, alone_masks=alone, flops=args.flops, top_k=args.top_k)
    print(json.dumps(result, indent=1))
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        args.out.with_suffix(".md").write_text(table(result) + "\n")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
