"""What a training run tells its user (issue 35 item 3): the step line's samples/s, tokens/s
and ETA, a metrics file per run (JSON lines) to plot, and checkpoints every --save-every steps
by default, so that a killed run resumes from its last save with --resume alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import masktok.trainer.train as train_loop
from masktok.cli.train import SAVE_EVERY, train

RECORD = {"step", "loss", "lr", "samples_per_s", "tokens_per_s", "eta_s"}


def args(s: dict[str, Path], out: str, *more: str) -> list[str]:
    return ["--stage", "1", "--cache", str(s["job"]), "--data", str(s["data"]), "--llm", str(s["llm"]),
            "--out", str(s["root"] / out), "--tokens", "cls,patch:9,obj:5", "--batch-size", "2", "--lr", "1e-3",
            *more]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_step_line_shows_throughput_and_eta():
    rec = {"step": 10, "loss": 1.23456, "lr": 2e-5, "samples_per_s": 12.345, "tokens_per_s": 5432.1, "eta_s": 3725.4}
    assert train_loop.step_line(rec, 100) == ("step 10/100  loss 1.2346  lr 2.00e-05  12.35 samples/s  "
                                              "5,432 tokens/s  ETA 1:02:05")


def test_sequence_tokens_count_text_and_visual_positions():
    import torch

    batch = {"lengths": torch.tensor([7, 5]), "visual": [[0] * 20, None]}  # 7 - sentinel + 20, 5 text-only
    assert train_loop.sequence_tokens(batch) == 6 + 20 + 5


def test_save_every_is_on_by_default():
    help_text = CliRunner().invoke(train, ["--help"]).output
    assert SAVE_EVERY == 500 and re.search(r"--save-every[^\n]*\n(?:[^\n]*\n)*?[^\n]*\[default: 500", help_text)
    option = next(p for p in train.params if p.name == "save_every")
    assert option.default == SAVE_EVERY


def test_the_step_line_and_the_metrics_file_of_a_run(tiny_trainer):
    res = CliRunner().invoke(train, args(tiny_trainer, "progress", "--max-steps", "3"))
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if re.match(r"step \d+/", line)]
    assert len(lines) == 3
    assert all(re.fullmatch(r"step \d/3  loss \S+  lr \S+  [\d.]+ samples/s  [\d,]+ tokens/s  ETA \d+:\d\d:\d\d",
                            line) for line in lines), lines
    assert lines[-1].endswith("ETA 0:00:00")
    m = records(tiny_trainer["root"] / "progress")
    assert [r["step"] for r in m] == [1, 2, 3] and all(RECORD <= set(r) for r in m)
    # tokens: at least the visual positions (cls, 9 patches, the background: 11) per sample
    assert all(r["tokens_per_s"] >= 10 * r["samples_per_s"] > 0 for r in m)
    assert (tiny_trainer["root"] / "progress" / "checkpoint-0000003").is_dir()  # the last step, always


def test_a_killed_stage1_run_resumes_from_its_last_save_with_resume_alone(tiny_trainer, monkeypatch):
    out = tiny_trainer["root"] / "killed"
    command = args(tiny_trainer, "killed", "--max-steps", "5", "--save-every", "2")
    line = train_loop.step_line

    def killed_at_step_3(rec, total):
        if rec["step"] == 3:
            raise KeyboardInterrupt  # as a kill between two saves
        return line(rec, total)

    monkeypatch.setattr(train_loop, "step_line", killed_at_step_3)
    assert CliRunner().invoke(train, command).exit_code != 0
    assert (out / "latest").read_text().strip() == "checkpoint-0000002"
    monkeypatch.setattr(train_loop, "step_line", line)
    res = CliRunner().invoke(train, [*command, "--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming at step 2" in res.output
    # the metrics file is one curve: the killed run's step 3 (past its last save) is dropped
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4, 5]
    assert (out / "latest").read_text().strip() == "checkpoint-0000005"
