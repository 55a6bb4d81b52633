"""Checkpoints: ``OUT/checkpoint-{step:07d}/``, complete before they become visible.

Contents::

    state.json       step, stage, epoch, position in the epoch, tokens spec, scaling mode and
                     the cache statistics used, projector widths, LLM source, join counts
    projector.pt     the projector's state dict
    optimizer.pt     optimizer + LR scheduler state
    llm/             the LM and its tokenizer (save_pretrained), only when the LM was trained

A checkpoint is written to a temp folder and renamed, and ``OUT/latest`` (a one-line file
naming the newest checkpoint) is replaced atomically after it, so a run killed while saving
leaves the previous checkpoint as the latest. A stage-1 checkpoint has no ``llm/``:
``state.json`` names the (frozen) LM folder it was trained against.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..schemas.errors import CheckpointError

LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def save(out: Path, step: int, state: dict[str, Any], projector: torch.nn.Module,
         optimizer: torch.optim.Optimizer, scheduler: Any, llm: Any | None, tokenizer: Any | None,
         keep: int | None = None) -> Path:
    """Write checkpoint ``step`` under ``out`` and point ``out/latest`` at it."""
    out = Path(out)
    final = out / checkpoint_name(step)
    tmp = out / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(projector.state_dict(), tmp / "projector.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    if llm is not None:
        llm.save_pretrained(tmp / "llm")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "llm")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = out / f".{LATEST}.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, out / LATEST)
    if keep:
        for old in sorted(out.glob("checkpoint-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint under ``out`` (None: there is none)."""
    marker = Path(out) / LATEST
    if marker.is_file():
        path = Path(out) / marker.read_text().strip()
        if (path / "state.json").is_file():
            return path
    found = sorted(p for p in Path(out).glob("checkpoint-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def resolve(path: Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    found = latest(path) if path.is_dir() else None
    if found is None:
        raise CheckpointError(f"no checkpoint at {path} (expected state.json, or a run folder with checkpoint-*/)")
    return found


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "state.json").read_text())


def llm_dir(ckpt: Path, state: dict[str, Any]) -> Path:
    """Where the checkpoint's LM lives: its own llm/ or the frozen source folder."""
    own = Path(ckpt) / "llm"
    return own if own.is_dir() else Path(state["llm"])
