"""The real model loaders, exercised with the tiny presets (docs/architecture.md, "Models")."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from masktok.models import load_model, materialize_tiny
from masktok.models.clip import TINY_CLIP_NAME, build_tiny_clip, load_clip, save_clip
from masktok.models.detector import build_tiny_detector, load_detector, save_detector
from masktok.schemas.errors import ModelLoadError
from masktok.models.sam import build_tiny_sam, load_sam, save_sam

BOX = np.array([10, 12, 120, 80])


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: loaders must work fully offline."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def image() -> np.ndarray:
    return (np.random.RandomState(0).rand(96, 160, 3) * 255).astype(np.uint8)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _detect(model, processor, image: np.ndarray):
    inputs = processor(images=Image.fromarray(image), return_tensors="pt")
    with torch.no_grad():
        return inputs, model(**inputs)


def _sam_outputs(sam, image: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, _, low_res = predictor.predict(box=BOX, multimask_output=False, return_logits=True)
    return predictor.get_image_embedding(), masks, low_res


def _encode(model, seed: int = 1) -> torch.Tensor:
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.encode_image(pixels)


# --- detector -------------------------------------------------------------------------------


def test_detector_round_trip_through_hf_folder_is_bit_identical(tmp_path: Path, image) -> None:
    model, processor = build_tiny_detector(seed=0)
    folder = save_detector(model, processor, tmp_path / "det")
    assert {"config.json", "preprocessor_config.json", "model.safetensors"} <= {
        p.name for p in folder.iterdir()
    }

    loaded, loaded_processor = load_detector(folder)
    assert not loaded.training
    inputs, expected = _detect(model, processor, image)
    loaded_inputs, got = _detect(loaded, loaded_processor, image)
    assert torch.equal(inputs["pixel_values"], loaded_inputs["pixel_values"])
    assert inputs["pixel_values"].shape[-2] == 128  # shortest edge of a landscape image
    assert torch.equal(expected.logits, got.logits)
    assert torch.equal(expected.pred_boxes, got.pred_boxes)


def test_detector_keeps_at_least_100_queries(image) -> None:
    model, processor = build_tiny_detector()
    assert model.config.num_queries >= 100
    assert not model.config.use_pretrained_backbone
    _, out = _detect(model, processor, image)
    assert out.logits.shape == (1, model.config.num_queries, 91)
    assert out.pred_boxes.shape == (1, model.config.num_queries, 4)


def test_detector_seed_fixes_weights() -> None:
    assert _same_state(build_tiny_detector(seed=3)[0], build_tiny_detector(seed=3)[0])
    assert not _same_state(build_tiny_detector(seed=3)[0], build_tiny_detector(seed=4)[0])


def test_detector_missing_folder_or_files(tmp_path: Path, tiny_checkpoints) -> None:
    with pytest.raises(ModelLoadError, match=r"detector folder not found: .*nowhere"):
        load_detector(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty has no config\.json"):
        load_detector(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(
        (tiny_checkpoints["detector"] / "config.json").read_text()
    )
    with pytest.raises(ModelLoadError, match=r"has no preprocessor_config\.json"):
        load_detector(tmp_path / "empty")


@pytest.mark.parametrize("weights, content, reason", [
    ("model.safetensors", b"<html>404</html>", "model.safetensors is not a safetensors file"),
    ("model.safetensors", "first half", "model.safetensors is a safetensors file cut short"),
    ("pytorch_model.bin", b"<html>404</html>", "pytorch_model.bin is not a torch checkpoint"),
    ("pytorch_model.bin", b"", "pytorch_model.bin is empty"),
])
def test_detector_weights_that_are_no_weights_are_named(tmp_path: Path, tiny_checkpoints, weights, content,
                                                       reason) -> None:
    """A saved error page or a cut download in place of the weights: a ModelLoadError naming
    the file and what it is (the libraries raise SafetensorError "header too large" or
    UnpicklingError with advice to load it unpickled)."""
    folder = tmp_path / "detector"
    shutil.copytree(tiny_checkpoints["detector"], folder)
    real = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").unlink()
    (folder / weights).write_bytes(real[:len(real) // 2] if content == "first half" else content)
    with pytest.raises(ModelLoadError, match=re.escape(f"cannot load Deformable-DETR from {folder}: {reason}")):
        load_detector(folder)


def test_detector_folder_of_another_model_type(tmp_path: Path) -> None:
    folder = tmp_path / "detr"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "detr"}))
    (folder / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"holds a 'detr' model; expected 'deformable_detr'"):
        load_detector(folder)


# --- SAM ------------------------------------------------------------------------------------


def test_sam_round_trip_through_pth_is_bit_identical(tmp_path: Path, image) -> None:
    sam = build_tiny_sam(seed=0)
    path = save_sam(sam, tmp_path / "sam.pth")
    assert set(torch.load(path, weights_only=True)) == set(sam.state_dict())

    loaded = load_sam(path, "tiny")
    assert not loaded.training
    embedding, masks, low_res = _sam_outputs(sam, image)
    loaded_embedding, loaded_masks, loaded_low_res = _sam_outputs(loaded, image)
    assert embedding.shape == (1, 32, 16, 16)
    assert masks.shape == (1, *image.shape[:2])
    assert torch.equal(embedding, loaded_embedding)
    assert np.array_equal(low_res, loaded_low_res)
    assert np.array_equal(masks, loaded_masks)


def test_sam_seed_fixes_weights_including_position_embeddings() -> None:
    assert _same_state(build_tiny_sam(seed=5), build_tiny_sam(seed=5))
    a, b = build_tiny_sam(seed=5), build_tiny_sam(seed=6)
    assert not torch.equal(a.image_encoder.pos_embed, b.image_encoder.pos_embed)
    assert not torch.equal(
        a.image_encoder.blocks[0].attn.rel_pos_h, b.image_encoder.blocks[0].attn.rel_pos_h
    )
    assert a.image_encoder.pos_embed.abs().sum() > 0


def test_sam_errors(tmp_path: Path, tiny_checkpoints) -> None:
    with pytest.raises(ModelLoadError, match=r"SAM checkpoint not found: .*missing\.pth"):
        load_sam(tmp_path / "missing.pth", "vit_h")
    valid = r"vit_h, vit_l, vit_b, tiny"
    with pytest.raises(ModelLoadError, match=rf"unknown SAM model_type 'vit_x'.*{valid}"):
        load_sam(tiny_checkpoints["sam"], "vit_x")
    looks_tiny = r"does not match model_type 'vit_b' \(it looks like 'tiny'\)"
    with pytest.raises(ModelLoadError, match=looks_tiny):  # refused before building ViT-B
        load_sam(tiny_checkpoints["sam"], "vit_b")

    state = torch.load(tiny_checkpoints["sam"], weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ModelLoadError, match=r"does not match model_type 'tiny'.*iou_token"):
        load_sam(tmp_path / "broken.pth", "tiny")

    (tmp_path / "junk.pth").write_bytes(b"<html>404</html>")  # a saved error page
    with pytest.raises(ModelLoadError, match=r"cannot read SAM checkpoint .*junk\.pth: not a torch checkpoint") as bad:
        load_sam(tmp_path / "junk.pth", "tiny")
    assert "weights_only" not in str(bad.value)  # torch's advice to load it unsafely is wrong here
    data = Path(tiny_checkpoints["sam"]).read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])  # a download cut short
    with pytest.raises(ModelLoadError, match=r"cut\.pth: a zip archive cut short"):
        load_sam(tmp_path / "cut.pth", "tiny")
    legacy = tmp_path / "legacy.pth"  # torch.save's format before torch 1.6, a pickle: still read
    torch.save(torch.load(tiny_checkpoints["sam"], weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert load_sam(legacy, "tiny") is not None


# --- CLIP -----------------------------------------------------------------------------------


def _uses_quick_gelu(model) -> bool:
    blocks = list(model.visual.transformer.resblocks)
    return bool(blocks) and all(
        isinstance(b.mlp.gelu, open_clip.transformer.QuickGELU) for b in blocks
    )


def _openai_style_torchscript(model, path: Path) -> Path:
    """A TorchScript archive laid out like OpenAI's ViT-L-14-336px.pt: the CLIP state dict
    plus the input_resolution/context_length/vocab_size entries open_clip drops."""
    root = torch.nn.Module()
    extra = {"input_resolution": torch.tensor(96), "context_length": torch.tensor(77),
             "vocab_size": torch.tensor(49408)}
    for key, value in [*model.state_dict().items(), *extra.items()]:
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, torch.nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def test_clip_round_trip_through_state_dict_is_bit_identical(tmp_path: Path) -> None:
    model = build_tiny_clip(seed=0)
    loaded = load_clip(TINY_CLIP_NAME, save_clip(model, tmp_path / "clip.pt"))
    assert not loaded.training
    assert _uses_quick_gelu(model) and _uses_quick_gelu(loaded)
    expected = _encode(model)
    assert expected.shape == (2, 32)
    assert torch.equal(expected, _encode(loaded))


@pytest.mark.parametrize("form", ["safetensors", "training checkpoint"])
def test_clip_accepts_safetensors_and_open_clip_training_checkpoints(tmp_path: Path, form: str) -> None:
    """The other files open_clip reads: a .safetensors state dict, and a training checkpoint
    ({"state_dict": ...} with the "module." prefixes of a DistributedDataParallel model)."""
    model = build_tiny_clip(seed=0)
    state = model.state_dict()
    if form == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "epoch_32.pt"
        torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_clip(TINY_CLIP_NAME, path)
    assert torch.equal(_encode(model), _encode(loaded))
    other = build_tiny_clip(seed=1)
    assert not torch.equal(_encode(other), _encode(loaded)), "the weights came from the file"


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_clip_accepts_openai_torchscript_archive(tmp_path: Path) -> None:
    model = build_tiny_clip(seed=0)
    archive = _openai_style_torchscript(model, tmp_path / "ViT-tiny-openai.pt")
    assert torch.equal(_encode(model), _encode(load_clip(TINY_CLIP_NAME, archive)))
    with pytest.raises(ModelLoadError, match=r"TorchScript archive .*'ViT-L-14-336-quickgelu'"):
        load_clip("ViT-L-14-336", archive)  # GELU config: refused before building ViT-L


def test_clip_seed_fixes_every_tensor_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b = build_tiny_clip(seed=7), build_tiny_clip(seed=7)
    assert torch.equal(torch.rand(3), before)
    assert _same_state(a, b)
    c = build_tiny_clip(seed=8)
    assert not torch.equal(a.visual.conv1.weight, c.visual.conv1.weight)
    assert not torch.equal(a.visual.positional_embedding, c.visual.positional_embedding)


def test_clip_text_tower_accepts_the_standard_tokenizer() -> None:
    model = build_tiny_clip()
    tokens = open_clip.get_tokenizer(TINY_CLIP_NAME)(["a photo of a cat"])
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (1, 32)


def test_clip_errors(tmp_path: Path, tiny_checkpoints) -> None:
    with pytest.raises(ModelLoadError, match=r"unknown open_clip model name 'ViT-Q-99'"):
        load_clip("ViT-Q-99", tiny_checkpoints["clip"])
    with pytest.raises(ModelLoadError, match=r"CLIP checkpoint not found: .*absent\.pt"):
        load_clip(TINY_CLIP_NAME, tmp_path / "absent.pt")
    state = torch.load(tiny_checkpoints["clip"], weights_only=True)
    del state["visual.proj"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelLoadError, match=r"cannot load CLIP checkpoint .*visual\.proj"):
        load_clip(TINY_CLIP_NAME, tmp_path / "broken.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"cannot load CLIP checkpoint .*junk\.pt as .*: not a torch checkpoint"):
        load_clip(TINY_CLIP_NAME, tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"<html>404</html>")
    with pytest.raises(ModelLoadError, match=r"junk\.safetensors as .*: not a safetensors file"):
        load_clip(TINY_CLIP_NAME, tmp_path / "junk.safetensors")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.pt as .*: empty$"):
        load_clip(TINY_CLIP_NAME, tmp_path / "empty.pt")


# --- the shared presets ---------------------------------------------------------------------


def test_materialized_presets_load_through_the_real_loaders(tiny_checkpoints, image) -> None:
    assert set(tiny_checkpoints) == {"detector", "sam", "clip"}
    model, processor = build_tiny_detector(seed=0)
    detector, detector_processor = load_detector(tiny_checkpoints["detector"])
    assert torch.equal(_detect(model, processor, image)[1].logits,
                       _detect(detector, detector_processor, image)[1].logits)
    assert _same_state(load_sam(tiny_checkpoints["sam"], "tiny"), build_tiny_sam(seed=0))
    clip = load_clip(TINY_CLIP_NAME, tiny_checkpoints["clip"])
    assert _same_state(clip, build_tiny_clip(seed=0))


def test_materialize_twice_rewrites_nothing(tiny_checkpoints) -> None:
    folder = tiny_checkpoints["sam"].parent
    files = [p for p in folder.rglob("*") if p.is_file()]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = materialize_tiny(folder, seed=0)
    assert again == tiny_checkpoints
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert {p for p in folder.rglob("*") if p.is_file()} == set(files)  # no temp leftovers


def test_the_registry_loads_each_model_by_name(tiny_checkpoints) -> None:
    detector, _ = load_model("detector", tiny_checkpoints["detector"], device="cpu")
    assert _same_state(detector, build_tiny_detector(seed=0)[0])
    assert _same_state(load_model("sam", tiny_checkpoints["sam"], variant="tiny", device="cpu"), build_tiny_sam(seed=0))
    clip = load_model("clip", tiny_checkpoints["clip"], variant=TINY_CLIP_NAME, device="cpu")
    assert _same_state(clip, build_tiny_clip(seed=0))
    with pytest.raises(ModelLoadError, match="unknown model 'yolo'"):
        load_model("yolo", tiny_checkpoints["clip"])
    with pytest.raises(ModelLoadError, match="materialised first"):
        load_model("sam", "tiny", variant="tiny")

