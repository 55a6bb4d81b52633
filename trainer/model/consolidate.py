"""A checkpoint as plain files: ``projector.pt`` and, after stage 2, ``llm/`` as a complete
Hugging Face folder (``AutoModelForCausalLM.from_pretrained`` loads it; no masktok needed).

Training consolidates its last checkpoint itself (trainer/model/checkpoint.py gathers the full
state onto rank 0). ``masktok export`` consolidates any checkpoint in one process, reading
its sharded state whatever world size wrote it; it needs the memory of the whole model
(fp32: 4 bytes per parameter, 27 GB at 7B). ``masktok generate`` loads either kind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...schemas.dtypes import WEIGHT_DTYPES
from ...schemas.errors import CheckpointError
from ...schemas.refusals import save_torch
from ..data.llama_text import save_tokenizer
from ..runtime import build_model, load_llm, load_tokenizer
from . import checkpoint as ckpt
from .mask_llava import MaskLlava

DTYPES = {name: getattr(torch, name) for name in WEIGHT_DTYPES}


def split_state(full: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """MaskLlava's state dict as (projector's, LM's), each with its own names."""
    projector = {k[len("projector."):]: v for k, v in full.items() if k.startswith("projector.")}
    llm = {k[len("llm."):]: v for k, v in full.items() if k.startswith("llm.")}
    return projector, llm


def write_llm_files(llm: nn.Module, tokenizer: Any, folder: Path) -> None:
    """The LM's config, generation config and tokenizer (the folder without weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    llm.config.save_pretrained(folder)
    if getattr(llm, "generation_config", None) is not None:
        llm.generation_config.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)


def write_consolidated(folder: Path, full: dict[str, torch.Tensor], llm: nn.Module, tokenizer: Any,
                       dtype: torch.dtype | None = None) -> None:
    """``folder/projector.pt``, and ``folder/llm/`` with weights when ``full`` holds the LM's.
    ``llm`` gives the class, config and tied-weight layout (its own tensors are not read)."""
    projector, llm_sd = split_state(full)
    save_torch(projector, Path(folder) / "projector.pt")
    if llm_sd:
        if dtype is not None:
            llm_sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in llm_sd.items()}
        llm.save_pretrained(Path(folder) / "llm", state_dict=llm_sd)  # weights, config, generation config
        save_tokenizer(tokenizer, Path(folder) / "llm")


def llm_for(path: Path, state: dict[str, Any], dtype: torch.dtype = torch.float32,
            device: torch.device | str = "cpu") -> nn.Module:
    """A checkpoint's LM: its own consolidated weights; else (sharded checkpoint) the run's
    source folder, or a model built from the checkpoint's config, to be filled from ``dcp/``
    (stage 1's frozen LM is always the source folder). Built on ``device`` in ``dtype``."""
    own = ckpt.llm_dir(path, state)
    for folder in (own, Path(state["llm"])):
        if ckpt.has_weights(folder):
            return load_llm(folder, dtype, device)
    if state["stage"] == 1:
        raise CheckpointError(f"{path} was trained against the frozen LM {state['llm']}, which is gone")
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(own), local_files_only=True)
    with torch.device(device):  # the weights dcp/ fills are allocated where they will live
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")


def load_checkpoint_model(checkpoint: Path, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> tuple[MaskLlava, Any, dict[str, Any], Path]:
    """(model on ``device`` in ``dtype``, tokenizer, state, checkpoint folder) of any
    checkpoint or run folder. The LM is built there in that dtype (:func:`llm_for`), never
    as an fp32 host copy first; the projectors (a few MB) are built, loaded and moved."""
    path = ckpt.resolve(checkpoint)
    state = ckpt.read_state(path)
    tokenizer = load_tokenizer(ckpt.llm_dir(path, state))
    model = build_model(llm_for(path, state, dtype, device), state["dims"])
    model.projector.to(device=device, dtype=dtype)
    if (path / "projector.pt").is_file():
        model.projector.load_state_dict(torch.load(path / "projector.pt", map_location="cpu", weights_only=True))
    else:
        loaded = ckpt.load_weights(path, model)
        if state["stage"] == 2 and (missing := {k for k in model.llm.state_dict() if f"llm.{k}" not in loaded}):
            raise CheckpointError(f"{path}: the LM weights {sorted(missing)[:3]} are not in its sharded state")
    return model, tokenizer, state, path


def export(checkpoint: Path, out: Path, dtype: str = "float32") -> Path:
    """Write a consolidated copy of ``checkpoint`` to ``out`` (a new folder); returns ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty: export writes a new folder")
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    model, tokenizer, state, path = load_checkpoint_model(checkpoint)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    full = {k: v for k, v in model.state_dict().items() if state["stage"] == 2 or k.startswith("projector.")}
    try:
        write_consolidated(tmp, full, model.llm, tokenizer, DTYPES[dtype])
        (tmp / "state.json").write_text(json.dumps({**state, "consolidated": True,
                                                    "exported_from": str(path.resolve()), "llm_dtype": dtype}, indent=1))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:  # a full disk: no half-written export stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
