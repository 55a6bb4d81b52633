"""Deformable-DETR, the paper's detector: the loader for a Hugging Face folder (the layout of
``SenseTime/deformable-detr``) and a tiny, seeded preset of the same architecture that tests
and the demo save and reload through that loader."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DeformableDetrImageProcessor,
    ResNetConfig,
)

from ..schemas.errors import ModelLoadError
from .detector_config import check_detector_folder, load_processor
from .weight_files import weights_file_problem

#: The pipeline keeps the top 100 boxes, so a detector needs at least this many queries.
MIN_QUERIES = 100
#: The weights files of a Hugging Face folder, in the order transformers prefers them.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def build_tiny_detector(
    seed: int = 0,
) -> tuple[DeformableDetrForObjectDetection, DeformableDetrImageProcessor]:
    """A randomly initialised Deformable-DETR with the paper's architecture, but tiny.

    The backbone is a 4-stage transformers ResNet (no timm, nothing pretrained, nothing
    downloaded) feeding 3 feature levels plus one extra conv level, as in the real model.
    The decoder has 2 layers: transformers ties the per-layer class/box heads and fails to
    build with a single decoder layer. The processor resizes the shortest edge to 128
    (longest edge at most 213, the real 800/1333 ratio).
    """
    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    config = DeformableDetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_n_points=2,
        decoder_n_points=2,
        num_feature_levels=4,
        num_queries=MIN_QUERIES,
        num_labels=91,  # COCO ids, as in SenseTime/deformable-detr
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeformableDetrForObjectDetection(config)
    processor = DeformableDetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 213})
    return model.eval(), processor


def save_detector(
    model: DeformableDetrForObjectDetection,
    processor: DeformableDetrImageProcessor,
    folder: Path,
) -> Path:
    """Save model and processor as a Hugging Face folder (config.json, model.safetensors,
    preprocessor_config.json), the layout :func:`load_detector` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _own_cpu_memory(model: torch.nn.Module) -> None:
    """Copy every CPU parameter and buffer into freshly allocated memory.

    from_pretrained leaves CPU weights memory-mapped from model.safetensors at unaligned
    offsets; CPU kernels then take other code paths and outputs differ from the same weights
    in ordinary memory in the last bits. Copying makes CPU results reproducible (bit-identical
    to the in-memory model) and releases the file. Tied parameters stay tied because each
    Parameter object is updated in place.
    """
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


def load_detector(
    folder: str | Path,
    device: str | torch.device = "cpu",
) -> tuple[DeformableDetrForObjectDetection, DeformableDetrImageProcessor]:
    """Load a Deformable-DETR detector and its image processor from a local folder.

    Accepts a Hugging Face folder as ``SenseTime/deformable-detr`` ships it (config.json,
    preprocessor_config.json, model.safetensors or pytorch_model.bin), including configs with
    a timm backbone (timm must then be installed; its weights come from the folder, never from
    a hub). Nothing is downloaded (local_files_only). The model is returned in eval mode.
    """
    folder = Path(folder)
    check_detector_folder(folder)
    weights = next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)
    problem = weights_file_problem(weights) if weights else None
    if problem:
        raise ModelLoadError(f"cannot load Deformable-DETR from {folder}: {weights.name} is {problem}")
    try:
        model = DeformableDetrForObjectDetection.from_pretrained(folder, local_files_only=True)
        processor = load_processor(folder)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load Deformable-DETR from {folder}: {first_line}"
        ) from exc
    if model.config.num_queries < MIN_QUERIES:
        raise ModelLoadError(
            f"detector in {folder} has {model.config.num_queries} queries; "
            f"expected at least {MIN_QUERIES} (the pipeline keeps the top {MIN_QUERIES} boxes)"
        )
    model = model.to(device)
    _own_cpu_memory(model)
    return model.eval(), processor
