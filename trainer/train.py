"""The training loop of both stages (paper 3.4): stage 1 trains the projector against a
frozen LM on captions (plain template), stage 2 trains projector + LM on conversations (v1).

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` examples per rank; the
logged loss is the mean of the micro-batch losses (each the mean over its learnt tokens),
averaged over ranks. ``--max-steps`` counts optimizer steps; without it, ``epochs`` passes.

Resume (``resume=True``): the newest checkpoint under ``out`` gives the projector, the LM
(stage 2), optimizer and scheduler, and the step; the Zarr reader's sampler then skips the
micro-batches of the epoch already consumed, so the run continues where it stopped (the
streaming reader re-reads and drops them). The checkpoint's tokens spec, scaling mode and
cache statistics are kept; asking for different ones is refused.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from ..schemas.errors import DataError, TrainError
from ..schemas.storage import is_remote
from .data.datasets import ItemBuilder
from .data.readers import ZarrImages
from .data.records import join_records, load_records, record_subset
from .data.stats import cache_stats
from .model import checkpoint as ckpt
from .model.consolidate import llm_for, load_checkpoint_model, write_consolidated, write_llm_files
from .parallel.distributed import DistEnv, mean_across, peak_memory, setup, teardown
from .parallel.sharding import autocast, frozen_llm_dtype, gradient_sync, resolve_strategy, use_bf16, wrap
from .runtime import (STAGE_LR, TrainConfig, build_model, load_llm, load_tokenizer, make_loader,
                      micro_batches_per_epoch, scheduler)
from .visual.refilter import require_refilterable
from .visual.scaling import DEFAULT_MODE, MODES, CacheStats
from .visual.token_spec import DEFAULT_SPEC, parse_spec, require_patches

DEFAULT_SCALING = DEFAULT_MODE


def _resolve_run(cfg: TrainConfig) -> tuple[Path | None, dict[str, Any] | None]:
    found = ckpt.latest(cfg.out)
    if found is not None and not cfg.resume:
        raise TrainError(f"{cfg.out} already holds {found.name}: pass --resume to continue it, or use a new --out")
    if found is None:
        return None, None
    state = ckpt.read_state(found)
    was = (state.get("fraction", 1.0), state.get("fraction_seed", 0) if state.get("fraction", 1.0) < 1 else 0)
    if was != (cfg.fraction, cfg.fraction_seed if cfg.fraction < 1 else 0):
        raise TrainError(f"resume: {found.name} was trained on --fraction {was[0]} (seed {was[1]}), not "
                         f"{cfg.fraction} (seed {cfg.fraction_seed}): the data would differ")
    for key, asked in (("tokens", cfg.tokens), ("scaling", cfg.scaling)):
        if asked is not None and str(parse_spec(asked) if key == "tokens" else asked) != state[key]:
            raise TrainError(f"resume: {found.name} was trained with {key} {state[key]!r}, not {asked!r} "
                             f"(drop --{key} or use a new --out)")
    if state["stage"] != cfg.stage:
        raise TrainError(f"resume: {found.name} is a stage-{state['stage']} checkpoint, not stage {cfg.stage}")
    return found, state


def train(cfg: TrainConfig, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (final step, last loss, data counts)."""
    if cfg.stage not in (1, 2):
        raise TrainError(f"--stage must be 1 or 2, not {cfg.stage}")
    started = not torch.distributed.is_initialized()  # a caller's process group is left to it
    env = setup(cfg.device)
    try:
        return _train(cfg, env, echo or (lambda s: None))
    finally:
        if started:
            teardown()


def _train(cfg: TrainConfig, env: DistEnv, echo: Callable[[str], None]) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # the same projector init on every rank: fsdp shards each rank's own copy
    if cfg.tokens is not None:
        parse_spec(cfg.tokens)  # bad inputs are reported before the state of --out
    images = ZarrImages(cfg.cache)
    records = record_subset(load_records(cfg.data), cfg.fraction, cfg.fraction_seed)
    resumed, state = _resolve_run(cfg)
    spec = parse_spec(state["tokens"] if state else (cfg.tokens or DEFAULT_SPEC))
    scaling = state["scaling"] if state else (cfg.scaling or DEFAULT_SCALING)
    if scaling not in MODES:
        raise TrainError(f"unknown scaling mode {scaling!r}: use one of {', '.join(MODES)}")
    if spec.iou is not None:
        require_refilterable(images.version, images.filter, cfg.cache)
    require_patches(spec, images.patch_grid, cfg.cache)

    examples, counts = join_records(records, images.image_ids, images.status,
                                    keep_text_only=cfg.stage == 2)
    if not examples:
        raise DataError(f"{cfg.data}: no usable example ({json.dumps({k: v for k, v in counts.to_dict().items() if k != 'examples'})})")
    if state and state.get("stats"):
        stats: CacheStats | None = CacheStats.from_dict(state["stats"])
    else:
        stats = cache_stats(cfg.cache) if scaling in ("dataset-global", "c7") else None

    strategy = resolve_strategy(cfg.strategy, env)
    llm_dtype = frozen_llm_dtype(env.device, cfg.precision) if cfg.stage == 1 else torch.float32
    if resumed:  # the weights come from the checkpoint's sharded state, after wrapping
        llm_src = Path(state["llm"])  # the run's source folder, whatever checkpoint it resumes
        model = build_model(llm_for(resumed, state, llm_dtype), images.dims)
    elif cfg.init_from:
        model, _, init_state, init = load_checkpoint_model(cfg.init_from)
        if any(init_state["dims"][k] != images.dims[k] for k in ("C", "D")):
            raise TrainError(f"--init-from {init} was trained on widths {init_state['dims']}, the cache has {images.dims}")
        llm_src = ckpt.llm_dir(init, init_state)
        model.llm.to(llm_dtype)
    else:
        llm_src = Path(cfg.llm)
        model = build_model(load_llm(llm_src, llm_dtype), images.dims)
    tokenizer = load_tokenizer(ckpt.llm_dir(resumed, state) if resumed else llm_src)
    if cfg.stage == 1:
        model.llm.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    run_model = wrap(model, strategy, env, cfg.precision)
    params = [p for p in model.parameters() if p.requires_grad]  # after wrapping: fsdp's are the shards
    optimizer = torch.optim.AdamW(params, lr=STAGE_LR[cfg.stage] if cfg.lr is None else cfg.lr,
                                  weight_decay=cfg.weight_decay)

    build = ItemBuilder(cfg.stage, tokenizer, spec, scaling, stats, cfg.max_length)
    loader, sampler = make_loader(cfg, env, examples, images, build, tokenizer.pad_token_id)
    per_epoch = micro_batches_per_epoch(cfg, env, len(examples))
    total = cfg.max_steps or max(1, cfg.epochs * per_epoch // cfg.grad_accum)
    sched = scheduler(optimizer, total, cfg.warmup_ratio, cfg.schedule)
    step, epoch, skip = 0, 0, 0
    if resumed:
        ckpt.restore(resumed, model, optimizer, sched)
        step = int(state["step"])
        epoch, skip = resume_position(state, env.world, cfg.batch_size, len(examples))

    meta = {"stage": cfg.stage, "tokens": str(spec), "scaling": scaling, "stats": stats.to_dict() if stats else None,
            "dims": images.dims, "llm": str(Path(llm_src).resolve()),
            "cache": str(cfg.cache if is_remote(cfg.cache) else Path(cfg.cache).resolve()), "data": str(Path(cfg.data).resolve()),
            "counts": counts.to_dict(), "world_size": env.world, "grad_accum": cfg.grad_accum,
            "batch_size": cfg.batch_size, "strategy": strategy, "fraction": cfg.fraction,
            "fraction_seed": cfg.fraction_seed, "grouped": cfg.grouped}
    if env.is_main:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "run.json").write_text(json.dumps(
            {**meta, "config": {k: str(v) if isinstance(v, Path) or is_remote(v) else v for k, v in asdict(cfg).items()}}, indent=1))
        echo(f"data: {counts.used} examples of {counts.records} records "
             f"({counts.text_only} text-only; skipped: {counts.skipped_missing} missing, {counts.skipped_failed} failed, "
             f"{counts.skipped_pending} pending, {counts.skipped_invalid} invalid, {counts.skipped_text_only} text-only)")
        echo(f"stage {cfg.stage}: tokens {spec} (max {spec.max_tokens(images.dims['K'])}), scaling {scaling}, "
             f"{'resuming at' if resumed else 'from'} step {step}, {total} steps")
        echo(f"device {env.device}, world {env.world}, strategy {strategy}, "
             f"{'bf16' if use_bf16(env.device, cfg.precision) else 'fp32'} compute"
             f"{', gradient checkpointing' if cfg.gradient_checkpointing else ''}")

    where = {"epoch": epoch, "epoch_micro": skip}  # this rank's position, saved with each checkpoint

    def batches():
        nonlocal epoch, skip
        while True:
            if sampler is not None:
                sampler.set_epoch(epoch, start=skip * cfg.batch_size)
                stream = enumerate(loader, start=skip)
            else:  # the stream of an epoch is deterministic: replay it, drop what was consumed
                loader.dataset.set_epoch(epoch)
                stream = ((i, b) for i, b in enumerate(loader) if i >= skip)
            for i, b in stream:
                where.update(epoch=epoch, epoch_micro=i + 1)
                yield b
            skip, epoch = 0, epoch + 1

    it = batches()
    metrics = _open_metrics(Path(cfg.out) / "metrics.jsonl", step) if env.is_main else None
    loss = float("nan")
    t0, seen, tokens, first = time.perf_counter(), 0, 0, step
    model.train()
    while step < total:
        losses = []
        for m in range(cfg.grad_accum):
            batch = next(it)
            with gradient_sync(run_model, strategy, env, last_micro_batch=m == cfg.grad_accum - 1):
                with autocast(env, strategy, cfg.precision):
                    micro_loss = run_model(batch) / cfg.grad_accum
                micro_loss.backward()
            losses.append(float(micro_loss.detach()) * cfg.grad_accum)
            seen += len(batch["lengths"])
            tokens += sequence_tokens(batch)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss = mean_across(sum(losses) / len(losses), env)
        if step % cfg.log_every == 0 or step == total:
            all_tokens = mean_across(float(tokens), env) * env.world  # every rank takes part
            if metrics:
                elapsed = time.perf_counter() - t0
                eta = (total - step) * elapsed / (step - first)  # at this run's pace so far
                rec = {"step": step, "loss": loss, "lr": sched.get_last_lr()[0], "epoch": where["epoch"],
                       "samples_per_s": seen * env.world / elapsed, "tokens_per_s": all_tokens / elapsed,
                       "eta_s": round(eta, 1), "elapsed_s": round(elapsed, 3)}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                echo(step_line(rec, total))
        if (cfg.save_every and step % cfg.save_every == 0) or step == total:
            _save(cfg, env, step, {**meta, **where}, model, optimizer, sched, tokenizer, final=step == total)
    summary = {"step": step, "loss": loss, "counts": counts.to_dict(), "tokens": str(spec), "scaling": scaling,
               "strategy": strategy, "world_size": env.world, "peak_memory": peak_memory(env),
               "samples_per_s": seen * env.world / (time.perf_counter() - t0),
               "checkpoint": str(ckpt.latest(cfg.out)) if env.is_main else None}
    if metrics:
        metrics.close()
        (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _open_metrics(path: Path, step: int):
    """The run's metrics file (JSON lines: step, loss, lr, epoch, samples_per_s, tokens_per_s,
    eta_s, elapsed_s), opened to append after ``step``: a resumed run first drops what the
    stopped one logged past its checkpoint, so the file stays one curve."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(kept))
    return path.open("a")


def sequence_tokens(batch: dict[str, Any]) -> int:
    """The LM positions of a batch, padding excluded: each example's text ids with its image
    sentinel replaced by the image's visual tokens."""
    return int(batch["lengths"].sum()) + sum(len(v) - 1 for v in batch["visual"] if v is not None)


def step_line(rec: dict[str, Any], total: int) -> str:
    """The step line people read: step, loss, lr, throughput over all ranks since the run
    (or the resume) started, and the ETA at that pace (h:mm:ss)."""
    eta = int(rec["eta_s"])
    return (f"step {rec['step']}/{total}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
            f"{rec['samples_per_s']:.2f} samples/s  {rec['tokens_per_s']:,.0f} tokens/s  "
            f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")


def resume_position(state: dict[str, Any], world: int, batch_size: int, n_examples: int) -> tuple[int, int]:
    """(epoch, micro-batches of it each rank skips) to continue from a checkpoint: exactly
    its next batches at the same world size and batch size; otherwise past the examples the
    checkpoint's run had consumed of the epoch (a ResumableSampler epoch is one global
    order, each rank taking every world-th example)."""
    epoch, done = int(state["epoch"]), int(state["epoch_micro"])
    if (state["world_size"], state["batch_size"]) == (world, batch_size):
        return epoch, done
    per_rank = math.ceil(n_examples / state["world_size"])
    consumed = min(done * state["batch_size"], per_rank) * state["world_size"]
    return epoch, consumed // (world * batch_size)


def _save(cfg: TrainConfig, env: DistEnv, step: int, state: dict[str, Any], model: Any, optimizer: Any,
          sched: Any, tokenizer: Any, final: bool) -> None:
    """A checkpoint (all ranks); the run's last one is consolidated (trainer/model/checkpoint.py)."""
    trained_llm = cfg.stage == 2
    ckpt.save(cfg.out, step, state, model, optimizer, sched, rank=env.rank, world=env.world,
              # config + tokenizer beside the shards; a consolidated checkpoint writes them with the weights
              write_llm_files=(lambda d: write_llm_files(model.llm, tokenizer, d)) if trained_llm and not final else None,
              consolidate=(lambda d, full: write_consolidated(d, full, model.llm, tokenizer)) if final else None,
              keep=cfg.keep_checkpoints)
