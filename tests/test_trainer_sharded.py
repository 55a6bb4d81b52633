"""Sharded training on CPU: 2 processes with gloo under torchrun, ddp against fsdp (FSDP2),
sharded checkpoints resumed on the same and on another world size, consolidation.

One torchrun launch (tests/sharded_runs.py) runs every 2-process training of this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from masktok.trainer.runtime import TrainConfig
from masktok.trainer.train import train as run_train

HERE = Path(__file__).resolve().parent
STEPS = 10


def base(s: dict[str, Path], **kw) -> dict:
    """Stage 2, 2 examples per rank per step (12 examples: an epoch is 3 steps, so 10 steps
    cross three epoch ends), lr 1e-3 so that the loss visibly falls in 10 steps."""
    return {**dict(stage=2, cache=str(s["job"]), data=str(s["data"]), llm=str(s["llm"]), batch_size=2, lr=1e-3,
                   warmup_ratio=0.0, schedule="constant", tokens="cls,patch:9,obj:5", device="cpu"), **kw}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(out)}


@pytest.fixture(scope="module")
def runs(tiny_trainer: dict[str, Path]) -> dict[str, Path]:
    """ddp and fsdp (with gradient checkpointing) for 10 steps, fsdp resumed from its step-5
    checkpoint, and a short stage-1 fsdp run: one torchrun, 2 CPU processes."""
    root = tiny_trainer["root"] / "sharded"
    root.mkdir()
    out = {name: root / name for name in ("ddp", "fsdp", "resumed", "stage1")}
    steps = [
        {"train": base(tiny_trainer, out=str(out["ddp"]), strategy="ddp", max_steps=STEPS)},
        {"train": base(tiny_trainer, out=str(out["fsdp"]), strategy="fsdp", max_steps=STEPS, save_every=5,
                       gradient_checkpointing=True)},
        {"copy": [str(out["fsdp"] / "checkpoint-0000005"), str(out["resumed"])]},
        {"train": base(tiny_trainer, out=str(out["resumed"]), strategy="fsdp", max_steps=STEPS, resume=True,
                       gradient_checkpointing=True)},
        {"train": base(tiny_trainer, out=str(out["stage1"]), stage=1, strategy="fsdp", max_steps=2),
         "frozen_report": str(root / "frozen")},
    ]
    (root / "runs.json").write_text(json.dumps(steps))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "sharded_runs.py"), str(root / "runs.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return {**out, "root": root}


def test_fsdp_loss_falls_on_two_processes(runs) -> None:
    loss = losses(runs["fsdp"])
    assert sorted(loss) == list(range(1, STEPS + 1))
    assert sum(loss[s] for s in (8, 9, 10)) / 3 < loss[1] - 0.8, loss
    summary = json.loads((runs["fsdp"] / "summary.json").read_text())
    assert summary["strategy"] == "fsdp" and summary["world_size"] == 2 and len(summary["peak_memory"]["rss_mb"]) == 2


def test_fsdp_matches_ddp_of_the_same_seed(runs) -> None:
    """Same init, same batches, fp32 on CPU: the runs differ only in the order of float
    sums (reduce-scatter per parameter vs all-reduce per bucket; checkpointing recomputes
    the same ops). AdamW turns a gradient that is zero up to rounding into a full lr step of
    either sign, so exact equality is not expected; 1e-4 relative over 10 steps is far
    below a real difference (a wrong shard or a missed reduction moves the loss by 1e-2)."""
    ddp, fsdp = losses(runs["ddp"]), losses(runs["fsdp"])
    assert sorted(ddp) == sorted(fsdp)
    for s in ddp:
        assert abs(ddp[s] - fsdp[s]) <= 1e-4 * abs(ddp[s]), (s, ddp[s], fsdp[s])


def test_a_resumed_fsdp_run_continues_at_its_step_with_the_same_batches(runs) -> None:
    """Steps 6-10 of the resumed run equal the straight run's: the same weights, optimizer
    state and scheduler came back from the sharded checkpoint, and the same next batches
    (different batches or state would change the losses)."""
    straight, resumed = losses(runs["fsdp"]), losses(runs["resumed"])
    assert sorted(resumed) == [6, 7, 8, 9, 10]
    for s in resumed:
        assert abs(resumed[s] - straight[s]) <= 1e-6 * straight[s], (s, resumed[s], straight[s])
    state = json.loads((runs["fsdp"] / "checkpoint-0000005/state.json").read_text())
    assert (state["epoch"], state["epoch_micro"], state["consolidated"]) == (1, 2, False)
    shards = sorted(p.name for p in (runs["fsdp"] / "checkpoint-0000005/dcp").glob("*.distcp"))
    assert len(shards) == 2, shards  # each rank wrote its own part


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tiny_trainer) -> None:
    """World 2 -> world 1 with the same global batch (4): the run continues at step 6 on the
    examples the 2-process run would have seen next. Its loss is a mean over all 4
    examples' tokens instead of the mean of two per-rank means, so it equals the 2-process
    step-6 loss only up to that weighting (0.1% here: the tiny model's token losses are
    nearly uniform); a bound of 0.2%."""
    out = runs["root"] / "world1"
    shutil.copytree(runs["fsdp"] / "checkpoint-0000005", out / "checkpoint-0000005")
    cfg = {**base(tiny_trainer, out=out, max_steps=6, resume=True), "batch_size": 4}
    cfg = {k: Path(v) if k in ("cache", "data", "llm") else v for k, v in cfg.items()}
    summary = run_train(TrainConfig(**cfg))
    assert summary["step"] == 6 and summary["world_size"] == 1
    assert abs(losses(out)[6] - losses(runs["fsdp"])[6]) <= 2e-3 * losses(runs["fsdp"])[6]


def test_the_last_checkpoint_is_consolidated_and_export_rebuilds_it_from_the_shards(runs, tiny_trainer) -> None:
    from click.testing import CliRunner
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from masktok.cli.train import export
    from masktok.inference.generate import generate

    last = runs["fsdp"] / "checkpoint-0000010"
    assert json.loads((last / "state.json").read_text())["consolidated"] is True
    out = runs["root"] / "exported"
    res = CliRunner().invoke(export, ["--checkpoint", str(last), "--out", str(out)])
    assert res.exit_code == 0, res.output
    a, b = torch.load(last / "projector.pt"), torch.load(out / "projector.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = load_file(str(last / "llm/model.safetensors")), load_file(str(out / "llm/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # gathered == read from the shards
    llm, info = AutoModelForCausalLM.from_pretrained(str(out / "llm"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ask = dict(cache=tiny_trainer["job"], image_id="img/001.jpg", prompt="Describe the image.", max_new_tokens=4)
    assert generate(out, **ask) == generate(last, **ask)
    res = CliRunner().invoke(export, ["--checkpoint", str(last), "--out", str(out)])
    assert res.exit_code == 1 and "not empty" in res.output
    half = runs["root"] / "exported-bf16"  # --dtype: the LM's weights cast, the projector as trained
    res = CliRunner().invoke(export, ["--checkpoint", str(last), "--out", str(half), "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    c = load_file(str(half / "llm/model.safetensors"))
    floats = [k for k in a if a[k].is_floating_point()]
    assert c.keys() == a.keys() and floats
    assert all(c[k].dtype == torch.bfloat16 and torch.equal(c[k], a[k].to(torch.bfloat16)) for k in floats)
    assert json.loads((half / "state.json").read_text())["llm_dtype"] == "bfloat16"
    p = torch.load(half / "projector.pt")
    assert all(p[k].dtype == torch.float32 for k in p)


def test_stage1_under_fsdp_trains_the_projector_against_the_frozen_lm(runs) -> None:
    from masktok.trainer.model.checkpoint import saved_model_keys

    for rank in (0, 1):  # the LM bit-identical after the steps, out of the optimizer (tests/sharded_runs.py)
        report = json.loads((runs["root"] / f"frozen.{rank}.json").read_text())
        assert report["lm_tensors"] and report["lm_equal"] and report["projector_changed"], report
        assert report["optimizer_params"] and report["lm_in_optimizer"] == 0, report
    ck = runs["stage1"] / "checkpoint-0000002"
    keys = saved_model_keys(ck)  # the frozen LM is the source folder's, not the run's to save
    assert keys and all(k.startswith("projector.") for k in keys), sorted(keys)[:3]
    assert not (ck / "llm").exists() and (ck / "projector.pt").is_file()
    assert sorted(losses(runs["stage1"])) == [1, 2]


def test_gradient_checkpointing_changes_memory_not_the_numbers(tiny_trainer, monkeypatch) -> None:
    """One process, fp32: with checkpointing on, each decoder layer runs its forward again in
    the backward (counted on the first layer's MLP: twice per micro-batch, against once); the recomputation
    repeats the same ops in the same order, so losses agree to rounding (1e-6 relative)."""
    import masktok.trainer.train as trainer

    out, calls = {}, {}
    build_model = trainer.build_model

    def counting_build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        mlp = model.llm.model.layers[0].mlp
        forward = mlp.forward

        def counted(*a, **k):  # not a forward hook: the recomputation runs without module hooks
            calls[ac] = calls.get(ac, 0) + 1
            return forward(*a, **k)

        mlp.forward = counted
        return model

    monkeypatch.setattr(trainer, "build_model", counting_build)
    for ac in (False, True):
        c = base(tiny_trainer, out=tiny_trainer["root"] / f"ac-{ac}", max_steps=3, gradient_checkpointing=ac)
        run_train(TrainConfig(**{k: Path(v) if k in ("cache", "data", "llm", "out") else v for k, v in c.items()}))
        out[ac] = losses(tiny_trainer["root"] / f"ac-{ac}")
    micro_batches = 3 * c.get("grad_accum", 1)
    assert calls == {False: micro_batches, True: 2 * micro_batches}
    for s in out[False]:
        assert abs(out[False][s] - out[True][s]) <= 1e-6 * out[False][s]


def test_resume_position_after_a_change_of_world_size() -> None:
    """A checkpoint's epoch position is per rank; on another world size (or batch size) the
    run skips the examples of the epoch's global order the old run had consumed."""
    from masktok.trainer.train import resume_position

    state = {"epoch": 1, "epoch_micro": 2, "world_size": 2, "batch_size": 2}
    assert resume_position(state, world=2, batch_size=2, n_examples=12) == (1, 2)  # exactly its next batches
    assert resume_position(state, world=1, batch_size=4, n_examples=12) == (1, 2)  # 8 consumed = 2 batches of 4
    assert resume_position(state, world=4, batch_size=1, n_examples=12) == (1, 2)
    assert resume_position({**state, "epoch_micro": 3}, world=1, batch_size=4, n_examples=12) == (1, 3)  # epoch done


def test_memory_accounting_of_vicuna_7b() -> None:
    """LLaMA-2-7B's published parameter count, 16 bytes per trained parameter replicated
    under ddp and split W ways under fsdp, and the stage-2 target: within 70 GB on 8 GPUs
    with LLaVA's micro-batch of 16 sequences (at 2048 tokens, the longest)."""
    from masktok.trainer.parallel.memory import GiB, VICUNA_7B, VIT_L_DIMS, activation_bytes, count, meta_model, state_bytes

    c = count(meta_model(VICUNA_7B, VIT_L_DIMS))
    assert c.llm == 6_738_415_616 and c.layers == 32
    assert c.projector == (1024 * 4096 + 4096) + (768 * 4096 + 4096) + 2 * (4096 * 4096 + 4096)
    n = c.llm + c.projector
    ddp, fsdp8 = state_bytes(c, 2, "ddp", 8), state_bytes(c, 2, "fsdp", 8)
    assert ddp["weights"] + ddp["grads"] + ddp["optimizer"] == 16 * n
    assert fsdp8["weights"] + fsdp8["grads"] + fsdp8["optimizer"] == 16 * n / 8
    stage1 = state_bytes(c, 1, "ddp", 8)
    assert stage1["grads"] == 4 * c.projector and stage1["weights"] == 2 * c.llm + 4 * c.projector
    assert (sum(fsdp8.values()) + 16 * activation_bytes(c, 2048)) / GiB < 70e9 / GiB < sum(ddp.values()) / GiB
