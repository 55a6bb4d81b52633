"""Training end to end on a tiny Llama over a tiny cache: overfitting, resume, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.cli.train import generate, train
from masktok.trainer.runtime import TrainConfig
from masktok.trainer.train import train as run_train


@pytest.fixture
def setup(tiny_trainer: dict[str, Path]) -> dict[str, Path]:
    return tiny_trainer


def cfg(s: dict[str, Path], out: str, **kw) -> TrainConfig:
    base = dict(stage=2, cache=s["job"], data=s["data"], llm=s["llm"], out=s["root"] / out, batch_size=4,
                lr=3e-3, warmup_ratio=0.0, schedule="constant", tokens="cls,patch:9,obj:5")
    return TrainConfig(**{**base, **kw})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_overfits_the_tiny_cache(setup) -> None:
    c = cfg(setup, "overfit", max_steps=30, grad_accum=2)
    summary = run_train(c)
    m = metrics(c.out)
    assert [r["step"] for r in m] == list(range(1, 31)) and summary["step"] == 30
    first, last = m[0]["loss"], sum(r["loss"] for r in m[-3:]) / 3
    assert last <= first / 2, (first, last)
    assert summary["counts"]["used"] == 12 and summary["counts"]["skipped_failed"] == 1
    state = json.loads((c.out / "checkpoint-0000030" / "state.json").read_text())
    assert state["step"] == 30 and state["tokens"] == "cls,patch:9,obj:5" and (c.out / "checkpoint-0000030/llm").is_dir()


def test_stage1_trains_the_projector_only(setup) -> None:
    import torch
    from safetensors.torch import load_file

    c = cfg(setup, "stage1", stage=1, max_steps=12, scaling="c7")
    run_train(c)
    m = metrics(c.out)
    assert m[-1]["loss"] < m[0]["loss"]
    ck = c.out / "checkpoint-0000012"
    assert not (ck / "llm").exists() and json.loads((ck / "state.json").read_text())["stats"]["images"] == 11
    assert json.loads((c.out / "run.json").read_text())["counts"]["skipped_text_only"] == 1
    proj = torch.load(ck / "projector.pt")
    assert set(k.split(".")[0] for k in proj) == {"patch_proj", "token_proj"}
    assert load_file(str(setup["llm"] / "model.safetensors"))  # the source LM folder is untouched and loadable
    from masktok.inference.generate import generate as run_generate

    answer = run_generate(ck, setup["job"], "img/001.jpg", "ignored in stage 1", max_new_tokens=4)
    # stage 1 is LLaVA's plain template: the image alone, so the prompt changes nothing
    assert answer == run_generate(ck, setup["job"], "img/001.jpg", "What is it?", max_new_tokens=4)
    s2 = run_train(cfg(setup, "stage2_from_1", max_steps=1, init_from=c.out, scaling="c7", lr=0.0))
    assert s2["step"] == 1  # stage 2 starts from the stage-1 projector (lr 0: it is unchanged)
    proj2 = torch.load(c.out.parent / "stage2_from_1" / "checkpoint-0000001" / "projector.pt")
    assert all(torch.equal(proj[k], proj2[k]) for k in proj)


def test_stage1_leaves_the_lm_bit_identical_and_out_of_the_optimizer(setup) -> None:
    """Stage 1 freezes the LM: its weights after the steps equal those it was built with, bit
    for bit, and the optimizer holds the projector's parameters only (which do change)."""
    from frozen_lm import freeze_report, recording_training

    with recording_training() as seen:
        run_train(cfg(setup, "stage1_frozen", stage=1, max_steps=3, scaling="c7"))
    report = freeze_report(seen)
    assert report["lm_tensors"] and report["lm_equal"], report
    assert report["projector_changed"], "the projector trains"
    assert report["optimizer_params"] and report["lm_in_optimizer"] == 0, report


def test_generate_with_the_kv_cache_equals_greedy_recomputation(setup) -> None:
    """MaskLlava.generate (KV cache, one new token per step) against recomputing the whole
    sequence each step. Conditioning: an argmax is only comparable when the top two logits
    are apart; the margin is asserted, so a tie would show up as what it is."""
    import torch

    from masktok.trainer.data import templates
    from masktok.trainer.visual.compose import compose
    from masktok.trainer.data.readers import ZarrImages
    from masktok.trainer.runtime import build_model, load_llm, load_tokenizer
    from masktok.trainer.visual.token_spec import parse_spec

    tokenizer = load_tokenizer(setup["llm"])
    images = ZarrImages(setup["job"])
    visual = compose(images[images.row_of("img/000.jpg")], parse_spec("cls,patch:9,obj:5"))
    torch.manual_seed(0)
    model = build_model(load_llm(setup["llm"]), ZarrImages(setup["job"]).dims).eval()
    ids = templates.v1_prompt("Describe the image.", tokenizer, has_image=True)
    cached = model.generate(ids, visual, max_new_tokens=6)  # no eos id: all 6 steps
    sequence = list(ids)
    with torch.no_grad():
        for _ in range(6):
            embeds, mask, _ = model.embed(torch.tensor([sequence]), torch.tensor([len(sequence)]), [visual])
            top2 = model.llm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1].topk(2)
            assert top2.values[0] - top2.values[1] > 1e-4, "near-tie: choose another prompt"
            sequence.append(int(top2.indices[0]))
    assert cached == sequence[len(ids):]
    # an LM folder's generation_config.json must not turn LLaVA's greedy decoding into sampling or
    # beam search: transformers fills every setting left unset (None) from it, so LLaVA's explicit
    # ones (do_sample, num_beams, ...) must be set on the config generate receives
    model.llm.generation_config.update(do_sample=True, temperature=50.0, num_beams=2, repetition_penalty=3.0)
    passed, generate = [], model.llm.generate
    model.llm.generate = lambda **kw: passed.append(kw["generation_config"]) or generate(**kw)
    assert model.generate(ids, visual, max_new_tokens=6) == cached
    (config,) = passed
    assert (config.do_sample, config.num_beams, config.repetition_penalty, config.max_new_tokens) == (False, 1, 1.0, 6)


@pytest.mark.parametrize("reader", ["zarr", "wds"])
def test_resume_continues_from_the_checkpoint_step(setup, reader: str) -> None:
    """Both readers: the resumed run sees the batches the straight run saw (the epoch's
    seeded order is replayed; 5 steps of 4 cross the end of the 12-example epoch)."""
    straight = cfg(setup, f"straight-{reader}", max_steps=5, reader=reader)
    run_train(straight)
    part = cfg(setup, f"resumed-{reader}", max_steps=3, reader=reader)
    run_train(part)
    with pytest.raises(Exception, match="--resume"):
        run_train(cfg(setup, f"resumed-{reader}", max_steps=5, reader=reader))
    summary = run_train(cfg(setup, f"resumed-{reader}", max_steps=5, resume=True, reader=reader))
    m = metrics(part.out)
    assert [r["step"] for r in m] == [1, 2, 3, 4, 5] and summary["step"] == 5
    ref = metrics(straight.out)
    for a, b in zip(ref, m):  # same batches, same optimizer state: the same losses
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
    assert (part.out / "latest").read_text().strip() == "checkpoint-0000005"
    assert json.loads((part.out / "checkpoint-0000005/state.json").read_text())["step"] == 5


def test_cli_train_generate_and_errors(setup) -> None:
    runner = CliRunner()
    out = setup["root"] / "cli"
    args = ["--stage", "2", "--cache", str(setup["job"]), "--data", str(setup["data"]), "--llm", str(setup["llm"]),
            "--out", str(out), "--tokens", "cls,patch:9,obj:5", "--max-steps", "2", "--batch-size", "2",
            "--grad-accum", "2", "--lr", "1e-3", "--scaling", "dataset-global", "--reader", "wds", "-q"]
    res = runner.invoke(train, args)
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in metrics(out)] == [1, 2] and all("loss" in r for r in metrics(out))
    res = runner.invoke(generate, ["--checkpoint", str(out), "--cache", str(setup["job"]), "--image-id", "img/000.jpg",
                                   "--prompt", "Describe the image.", "--tokens", "patch:4", "--max-new-tokens", "5"])
    assert res.exit_code == 0, res.output
    from masktok.inference.generate import generate as run_generate

    expected = run_generate(out, setup["job"], "img/000.jpg", "Describe the image.", tokens="patch:4", max_new_tokens=5)
    assert res.output == expected + "\n", "the command prints the model's answer and nothing else"
    bad = [
        (train, [*args[:-7], "--tokens", "cls,patch:7:pool"], "token spec"),
        (train, [*args[:2], "--cache", str(setup["root"] / "nope"), *args[4:-5]], "no token cache"),
        (train, args[:-1] + ["--tokens", "patch:4"], "--resume"),
        (generate, ["--checkpoint", str(out), "--cache", str(setup["job"]), "--image-id", "img/zzz.jpg"], "not in the cache"),
        (generate, ["--checkpoint", str(out), "--cache", str(setup["job"]), "--image-id", "img/005.jpg"], "failed"),
        (generate, ["--checkpoint", str(setup["root"]), "--cache", str(setup["job"]), "--image-id", "x"], "no checkpoint"),
    ]
    for cmd, argv, msg in bad:
        res = runner.invoke(cmd, argv)
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, (argv, res.output)


@pytest.mark.skipif(os.environ.get("MASKTOK_SKIP_DDP") == "1", reason="MASKTOK_SKIP_DDP=1")
def test_the_cli_under_torchrun_shards_the_lm_on_two_cpu_processes(setup) -> None:
    """torchrun, 2 CPU processes, gloo, through the launch module and its flags: fsdp with
    gradient checkpointing; both ranks step together and each writes its part of dcp/."""
    out = setup["root"] / "torchrun-cli"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "masktok.trainer.launch", "train", "--stage", "2", "--cache", str(setup["job"]),
           "--data", str(setup["data"]), "--llm", str(setup["llm"]), "--out", str(out), "--max-steps", "2",
           "--batch-size", "2", "--grad-accum", "2", "--tokens", "cls,patch:4,obj:3", "--device", "cpu",
           "--strategy", "fsdp", "--gradient-checkpointing", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in metrics(out)] == [1, 2]
    run = json.loads((out / "run.json").read_text())
    assert (run["world_size"], run["strategy"], run["config"]["gradient_checkpointing"]) == (2, "fsdp", True)
    assert len(list((out / "checkpoint-0000002/dcp").glob("*.distcp"))) == 2
    assert res.stderr.count("Loading weights") == 0, "transformers' progress bars are off"


def _cli_train(setup, out: str, *extra: str):
    args = ["--stage", "2", "--cache", str(setup["job"]), "--data", str(setup["data"]), "--llm", str(setup["llm"]),
            "--out", str(setup["root"] / out), "--tokens", "cls,patch:9,obj:5", "--lr", "3e-3", "--warmup-ratio", "0",
            "--schedule", "constant", "-q", *extra]
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output
    return setup["root"] / out


def test_epochs_keep_checkpoints_max_length_and_clipping_off_reach_the_loop(setup, monkeypatch) -> None:
    """--epochs 2 over 12 examples in batches of 4: 6 steps across two epochs; --keep-checkpoints
    2 of a checkpoint per step leaves the last two; --max-length 24 cuts every sequence (its
    visual tokens included) to 24; --max-grad-norm 0 never clips."""
    import torch

    import masktok.trainer.train as trainer

    lengths, clipped = [], []

    class RecordingBuilder(trainer.ItemBuilder):
        def __call__(self, example, record):
            item = super().__call__(example, record)
            lengths.append(len(item["input_ids"]) + (len(item["visual"]) - 1 if item["visual"] is not None else 0))
            return item

    monkeypatch.setattr(trainer, "ItemBuilder", RecordingBuilder)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clipped.append(a) or torch.tensor(0.0))
    out = _cli_train(setup, "options", "--epochs", "2", "--batch-size", "4", "--save-every", "1",
                     "--keep-checkpoints", "2", "--max-length", "24", "--max-grad-norm", "0")
    m = metrics(out)
    assert [r["step"] for r in m] == list(range(1, 7)) and {r["epoch"] for r in m} == {0, 1}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000005", "checkpoint-0000006"]
    assert lengths and max(lengths) == 24, "sequences are cut at --max-length, visual tokens included"
    assert clipped == []


def test_clipping_precision_workers_and_grouping_reach_the_loop(setup, monkeypatch) -> None:
    """Defaults clip (max norm 1.0) every step; --precision bf16 turns autocast on (CPU);
    --workers 1 and --group-by-modality-length reach the DataLoader and its sampler (the
    grouped order itself is tests/test_trainer_order.py's)."""
    import torch

    import masktok.trainer.train as trainer

    norms, autocasts, loaders = [], [], []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n, **k: norms.append(n) or clip(p, n, **k))
    autocast = trainer.autocast
    monkeypatch.setattr(trainer, "autocast", lambda env, s, precision: autocasts.append(precision) or autocast(env, s, precision))
    make_loader = trainer.make_loader
    monkeypatch.setattr(trainer, "make_loader", lambda *a: loaders.append(make_loader(*a)) or loaders[-1])
    _cli_train(setup, "grouped", "--max-steps", "2", "--batch-size", "4", "--precision", "bf16", "--workers", "1",
               "--group-by-modality-length")
    assert norms == [1.0, 1.0] and set(autocasts) == {"bf16"}
    (loader, sampler), = loaders
    assert loader.num_workers == 1
    lengths, has_image, batch = sampler.grouped  # the grouping of tests/test_trainer_order.py, per batch of 4
    assert batch == 4 and list(has_image).count(False) == 1 and len(lengths) == len(loader.dataset)
