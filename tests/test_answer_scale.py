"""`masktok answer` at cluster scale (issue 32): a plan fixed before any work, one writer,
kill -9 and resume to the same bytes, repairs, refusals, the run record, device and dtype,
margins without every step's logits, and Ray replicas giving the bytes of one process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.evaluate.answer import answer
from masktok.evaluate.answer_files import answer_lock

SPECS = ["cls,patch:9,obj:5", "cls,patch:1,obj:2"]
RUN_KEYS = {"questions", "seconds", "questions_per_s", "device", "dtype", "workers", "checkpoint", "max_new_tokens",
            "temperature", "batch_size"}  # the contract with `score sweep`
SETTINGS = {"batch_size": 3, "max_new_tokens": 3, "device": "cpu"}  # 15 questions: not a multiple of 3 x 2 workers


def _files(out: Path) -> dict[str, bytes]:
    """The answer files and plans of ``out`` (run.json holds timings: not compared)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.endswith((".jsonl", ".plan.json"))}


@pytest.fixture(scope="module")
def reference(answer_model, tmp_path_factory) -> tuple[Path, object, list[str]]:
    """One uninterrupted in-process run at both specs: its folder, summary and echo lines."""
    out = tmp_path_factory.mktemp("answers") / "reference"
    said: list[str] = []
    summary = answer(answer_model["run"], answer_model["job"], answer_model["questions"], SPECS, out, **SETTINGS,
                     echo=said.append)
    return out, summary, said


def _cli(answer_model, out: Path, *extra: str) -> object:
    return CliRunner().invoke(main, ["answer", "--checkpoint", str(answer_model["run"]), "--cache",
                                     str(answer_model["job"]), "--questions", str(answer_model["questions"]),
                                     "--out", str(out), "--batch-size", "3", "--max-new-tokens", "3",
                                     *[a for s in SPECS for a in ("--tokens", s)], *extra])


def test_the_run_record_holds_the_sweeps_contract_and_the_lines_name_device_and_dtype(reference) -> None:
    out, summary, said = reference
    for spec in SPECS:
        record = json.loads((out / f"{spec}.run.json").read_text())
        assert set(record) == RUN_KEYS
        assert record["questions"] == 13 and record["seconds"] > 0 and record["questions_per_s"] > 0
        assert (record["device"], record["dtype"], record["workers"], record["batch_size"]) == ("cpu", "float32", 1, 3)
        lines = [json.loads(x) for x in (out / f"{spec}.jsonl").read_text().splitlines()]
        answered = [a["metadata"] for a in lines if "unanswered" not in a["metadata"]]
        assert {(m.get("device"), m.get("dtype")) for m in answered} == {("cpu", "float32")}
        # the prefill the sweep's TFLOP counts: the text prompt's ids (at least BOS and the
        # question's) beside the visual tokens
        assert all(m["prompt_tokens"] > m["visual_tokens"] + 2 for m in answered)
        plan = json.loads((out / f"{spec}.plan.json").read_text())
        assert sorted(x for b in plan["batches"] for x in b) == list(range(15))
        assert all(len(b) == 3 for b in plan["batches"])
    # off a terminal: one plain line per batch answered at every spec, with an ETA
    progress = [s for s in said if s.startswith("batch ")]
    assert len(progress) == summary.batches[SPECS[0]] and all("ETA" in s for s in progress)


def test_a_run_killed_after_two_batches_resumes_with_exactly_the_rest_and_the_same_bytes(answer_model, reference,
                                                                                        tmp_path) -> None:
    """kill -9 (the process kills itself the moment its second batch is written)."""
    ref, ref_summary, _ = reference
    out = tmp_path / "killed"
    script = f"""
import os, signal
from masktok.evaluate.answer import answer
seen = []
def echo(line):
    if line.startswith("batch "):
        seen.append(line)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
answer({str(answer_model['run'])!r}, {str(answer_model['job'])!r}, {str(answer_model['questions'])!r}, {SPECS!r},
       {str(out)!r}, batch_size=3, max_new_tokens=3, device="cpu", echo=echo)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = answer(answer_model["run"], answer_model["job"], answer_model["questions"], SPECS, out, **SETTINGS)
    for spec in SPECS:
        assert resumed.batches[spec] == ref_summary.batches[spec] - 2
    assert _files(out) == _files(ref)


def test_repeated_and_cut_lines_are_repaired_by_answering_only_the_cut_lines_batch(answer_model, reference,
                                                                                    tmp_path) -> None:
    ref, _, _ = reference
    out = tmp_path / "damaged"
    shutil.copytree(ref, out)
    target = out / f"{SPECS[0]}.jsonl"
    lines = target.read_text().splitlines()
    lines[4] = lines[4][:25]  # a line cut by a crash, more lines after it
    lines.insert(9, lines[2])  # a line written twice
    target.write_text("\n".join(lines) + "\n")
    said: list[str] = []
    summary = answer(answer_model["run"], answer_model["job"], answer_model["questions"], SPECS, out, **SETTINGS,
                     echo=said.append)
    assert summary.batches == {SPECS[0]: 1, SPECS[1]: 0}
    assert any("dropped 1 cut line(s) and 1 repeated" in s for s in said)
    assert _files(out) == _files(ref)


def test_a_second_answer_on_the_same_out_is_refused_in_one_line(answer_model, tmp_path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    with answer_lock(out):  # another `masktok answer` writing there
        res = _cli(answer_model, out, "--device", "cpu")
    assert res.exit_code == 1 and "another masktok answer" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not list(out.glob("*.jsonl")), "nothing was written"


@pytest.mark.parametrize("change, named", [(("--max-new-tokens", "4"), "max_new_tokens 3 (now 4)"),
                                           (("--dtype", "bfloat16"), "dtype 'float32' (now 'bfloat16')"),
                                           (("--batch-size", "4"), "batch_size 3 (now 4)")])
def test_a_resume_with_other_settings_is_refused_in_one_line(answer_model, reference, tmp_path, change, named) -> None:
    ref, _, _ = reference
    out = tmp_path / "other"
    shutil.copytree(ref, out)
    res = _cli(answer_model, out, "--device", "cpu", *change)
    assert res.exit_code == 1 and named in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert _files(out) == _files(ref)


def test_limit_answers_the_first_questions_in_the_dtype_asked(answer_model, tmp_path) -> None:
    from masktok.inference.generation import load_generation_model

    gm = load_generation_model(answer_model["run"], "cpu", "bfloat16")
    assert {p.dtype for p in gm.model.parameters()} == {__import__("torch").bfloat16}
    out = tmp_path / "smoke"
    res = _cli(answer_model, out, "--limit", "4", "--dtype", "bfloat16", "-q")
    assert res.exit_code == 0, res.output
    for spec in SPECS:
        lines = [json.loads(x) for x in (out / f"{spec}.jsonl").read_text().splitlines()]
        assert [a["metadata"]["line"] for a in lines] == [0, 1, 2, 3]
        assert {a["metadata"]["dtype"] for a in lines} == {"bfloat16"}
        assert json.loads((out / f"{spec}.run.json").read_text())["dtype"] == "bfloat16"


def test_greedy_margins_are_tracked_while_decoding_as_every_steps_logits_give_them(answer_model) -> None:
    """The running minimum equals the minimum over output_scores, the eos step counted and
    the steps after it not (an eos chosen so that one sequence stops early)."""
    import torch
    from transformers import GenerationConfig

    from masktok.inference.generation import load_generation_model, prompt_ids
    from masktok.trainer.model.mask_llava import left_padded

    gm = load_generation_model(answer_model["run"], "cpu", "float32")
    prompts = [prompt_ids(2, gm.tokenizer, q, has_image=False) for q in ("Say hi.", "Describe the image.", "hi")]
    first = gm.model.generate_batch(prompts, [None] * 3, 6, None, gm.tokenizer.pad_token_id)
    eos = first.tokens[0][1]  # the first prompt stops at its second step
    got = gm.model.generate_batch(prompts, [None] * 3, 6, eos, gm.tokenizer.pad_token_id)
    lengths = torch.tensor([len(p) for p in prompts])
    padded = torch.zeros(3, int(lengths.max()), dtype=torch.long)
    for b, p in enumerate(prompts):
        padded[b, :len(p)] = torch.tensor(p)
    embeds, mask = left_padded(*gm.model.embed(padded, lengths, [None] * 3)[:2])
    config = GenerationConfig(max_new_tokens=6, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=gm.tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
    ref = gm.model.llm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
    for b, tokens in enumerate(got.tokens):
        steps = min(len(tokens) + 1, len(ref.scores))
        top2 = torch.stack([ref.scores[t][b].float().topk(2).values for t in range(steps)])
        assert got.margins[b] == pytest.approx(float((top2[:, 0] - top2[:, 1]).min()), rel=1e-5)
    assert len(got.tokens[0]) == 1 and got.steps == len(ref.scores)


@pytest.mark.xdist_group("beside-ray")  # a local Ray of its own (address "local"): tests/test_demo.py
def test_two_ray_workers_one_and_in_process_give_the_same_answer_files_and_plans(answer_model, reference,
                                                                                 tmp_path) -> None:
    import ray

    ref, _, _ = reference
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        runs = {}
        for workers in (2, 1):
            out = tmp_path / f"workers-{workers}"
            runs[workers] = answer(answer_model["run"], answer_model["job"], answer_model["questions"], SPECS, out,
                                   **SETTINGS, workers=workers)
            assert _files(out) == _files(ref), f"--workers {workers} differs from one process"
            assert json.loads((out / f"{SPECS[0]}.run.json").read_text())["workers"] == workers
        assert runs[2].workers == 2 and runs[1].workers == 1
    finally:
        ray.shutdown()


def test_the_margin_of_a_finished_sequence_ignores_the_steps_after_its_eos() -> None:
    """Synthetic logits: sequence 0 picks eos (2) at step 1; its later, nearer tie is not its."""
    import torch

    from masktok.trainer.model.mask_llava import MarginTracker

    tracker = MarginTracker(2, eos_token_id=2)
    step1 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])  # gaps 1.0 and 2.0
    step2 = torch.tensor([[0.0, 0.1, 0.0], [0.5, 0.0, 0.0]])  # gaps 0.1 (after seq 0's eos) and 0.5
    assert torch.equal(tracker(torch.zeros(2, 0, dtype=torch.long), step1), step1)  # scores unchanged
    tracker(torch.tensor([[2], [1]]), step2)
    assert tracker.margins() == pytest.approx([1.0, 0.5])


def test_cache_rows_are_read_batches_ahead_each_once() -> None:
    """Before the first batch is handed out, the rows of the next ones are already asked for
    (on threads: an object-storage cache is never read one row after the other), and a row
    that several batches ask for (MME's two questions of one image) is read once, even when
    those batches are further apart than the read-ahead."""
    import time

    from masktok.evaluate.answer_replicas import prefetched

    rows = {7: [70, 71, 70], 8: [80, 71], 9: [90], 10: [100], 11: [110], 12: [120, 70]}
    read = []
    works = prefetched(list(rows), rows.__getitem__, lambda row: read.append(row) or f"record {row}",
                       lambda i, records: (i, records), depth=3)
    first = next(works)
    assert first == (7, {70: "record 70", 71: "record 71"})
    deadline = time.monotonic() + 30
    while len(read) < 5 and time.monotonic() < deadline:  # the reads of batches 8-10 finish on their threads
        time.sleep(0.01)
    time.sleep(0.05)
    assert sorted(read) == [70, 71, 80, 90, 100]  # 11 and 12 not yet: 3 batches ahead of the one handed out
    assert list(works) == [(8, {71: "record 71", 80: "record 80"}), (9, {90: "record 90"}), (10, {100: "record 100"}),
                           (11, {110: "record 110"}), (12, {70: "record 70", 120: "record 120"})]
    assert sorted(read) == [70, 71, 80, 90, 100, 110, 120]  # each row once


def test_auto_is_cuda_and_bfloat16_with_a_gpu_and_cpu_and_float32_without(monkeypatch) -> None:
    import torch

    from masktok.inference.device import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (resolve_device("auto").type, resolve_dtype("auto", resolve_device("auto"))) == ("cuda", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (resolve_device("auto").type, resolve_dtype("auto", resolve_device("auto"))) == ("cpu", torch.float32)
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
