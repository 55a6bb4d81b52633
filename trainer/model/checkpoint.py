"""Checkpoints: ``OUT/checkpoint-{step:07d}/``, complete before they become visible.

Contents::

    state.json     step, the position in the epoch, stage, tokens spec, scaling mode and the
                   cache statistics used, projector widths, LM source, join counts
    dcp/           what training trains (stage 1: the projectors; stage 2: projectors + LM)
                   and AdamW's state, sharded: each rank writes its own part
                   (torch.distributed.checkpoint), so saving never gathers a 7B model
    scheduler.pt   the LR scheduler's state
    llm/           stage 2: the LM's config and tokenizer; plus its weights when consolidated
    projector.pt   when consolidated: the projectors' state dict

A run's last checkpoint is *consolidated* (``projector.pt``, and ``llm/`` as a complete
Hugging Face folder in stage 2): ``masktok generate`` and any transformers user load it as
it is. ``masktok export`` consolidates any other (trainer/model/consolidate.py). A stage-1
checkpoint never holds an LM: ``state.json`` names the frozen folder it was trained against.

``dcp/`` holds state dicts by parameter name, not by rank, so a run resumes from it on any
world size and with either strategy (ddp or fsdp). With several nodes, ``--out`` must be
on a file system every node sees.

A checkpoint is written to a temp folder and renamed, and ``OUT/latest`` (a one-line file
naming the newest checkpoint) is replaced atomically after it, so a run killed while saving
leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ...schemas.errors import CheckpointError
from ...schemas.refusals import save_torch

LATEST = "latest"
SHARDED = "dcp"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


@contextlib.contextmanager
def _one_process() -> Iterator[bool]:
    """DCP's ``no_dist`` (True: no process group, this process reads and writes alone),
    without DCP's warning that it assumes so (we know it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*unavailable or uninitialized")
        yield not (dist.is_available() and dist.is_initialized())


def _options(full: bool = False, strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # frozen parameters (stage 1's LM) are not the run's to save: they are the source folder
    return StateDictOptions(ignore_frozen_params=True, full_state_dict=full, cpu_offload=full, strict=strict)


def save(out: Path, step: int, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: Any, *, rank: int, world: int, write_llm_files: Callable[[Path], None] | None = None,
         consolidate: Callable[[Path, dict[str, torch.Tensor]], None] | None = None,
         keep: int | None = None) -> Path:
    """Write checkpoint ``step`` under ``out`` (a collective: every rank calls it).

    ``write_llm_files(dir)`` writes the LM's config and tokenizer (rank 0); with
    ``consolidate(dir, full_state_dict)`` the checkpoint is also consolidated: the full
    state dict is gathered onto rank 0's CPU, which writes the files.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    out = Path(out)
    final = out / checkpoint_name(step)
    tmp = out / f".{final.name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(world)
    latest_tmp = out / f".{LATEST}.tmp"
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_options())
        with _one_process() as single:
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp / SHARDED, no_dist=single)
        full = get_model_state_dict(model, options=_options(full=True)) if consolidate else None
        if rank == 0:
            save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
            if write_llm_files is not None:
                write_llm_files(tmp / "llm")
            if consolidate is not None:
                consolidate(tmp, full)
            (tmp / "state.json").write_text(json.dumps({**state, "step": step, "consolidated": consolidate is not None},
                                                       indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            latest_tmp.write_text(final.name + "\n")
            os.replace(latest_tmp, out / LATEST)
    except BaseException:  # a full disk: no half-written checkpoint stays (the previous ones do)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            latest_tmp.unlink(missing_ok=True)
        raise
    if rank == 0 and keep:
        for old in sorted(out.glob("checkpoint-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(world)
    return final


def restore(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Load a checkpoint's sharded state into a (wrapped) model, its optimizer and scheduler,
    whatever the world size and strategy that wrote it (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (Path(ckpt) / SHARDED).is_dir():
        raise CheckpointError(f"{ckpt} has no sharded state ({SHARDED}/): it cannot be resumed; "
                              "start a new run with --init-from instead")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options())
    sd = {"model": model_sd, "optimizer": optim_sd}
    with _one_process() as single:
        dcp.load(sd, checkpoint_id=Path(ckpt) / SHARDED, no_dist=single)
    # not strict: the state holds no frozen parameter (stage 1's LM, already loaded from its
    # source folder), which a strict load reports missing; any other missing key is an error
    result = set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"],
                            options=_options(strict=False))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    missing = [key for key in getattr(result, "missing_keys", []) if key not in frozen]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}: its state does not fit the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    scheduler.load_state_dict(torch.load(Path(ckpt) / "scheduler.pt", map_location="cpu", weights_only=True))


def saved_model_keys(ckpt: Path) -> set[str]:
    """The parameter names a checkpoint's sharded state holds (``llm.…``, ``projector.…``)."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(Path(ckpt) / SHARDED)).read_metadata()
    return {k[len("model."):] for k in meta.state_dict_metadata if k.startswith("model.")}


def load_weights(ckpt: Path, model: nn.Module) -> set[str]:
    """Fill an unwrapped model with the weights a checkpoint's sharded state holds (every
    rank reads them all: for a model before it is wrapped, or a single process). Returns
    the names loaded."""
    import torch.distributed.checkpoint as dcp

    keys = saved_model_keys(ckpt)
    sd = {k: v for k, v in model.state_dict().items() if k in keys}
    if missing := keys - set(sd):
        raise CheckpointError(f"{ckpt} holds weights this model does not have: {sorted(missing)[:3]}")
    with _one_process() as single:
        dcp.load({"model": sd}, checkpoint_id=Path(ckpt) / SHARDED, no_dist=single)
    model.load_state_dict(sd, strict=False)
    return keys


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


def has_weights(folder: Path) -> bool:
    """A Hugging Face folder with weights (not only a config and a tokenizer)."""
    return any(Path(folder).glob("*.safetensors")) or any(Path(folder).glob("pytorch_model*.bin"))


def llm_dir(ckpt: Path, state: dict[str, Any]) -> Path:
    """Where the checkpoint's LM config and tokenizer live: its own llm/ (stage 2) or the
    frozen source folder (stage 1)."""
    own = Path(ckpt) / "llm"
    return own if (own / "config.json").is_file() else Path(state["llm"])
