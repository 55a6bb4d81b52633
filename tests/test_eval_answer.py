"""`masktok answer`: LLaVA's question file in, LLaVA's answer format out, at any token
budget, batched, resumable, on v1 and v2 caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.evaluate.answer import answer
from masktok.evaluate.questions import read_question_file
from masktok.cli.answer import answer as answer_cli
from masktok.schemas.errors import DataError, TokenSpecError
from masktok.trainer.runtime import TrainConfig
from masktok.trainer.train import train

SPECS = ["cls,patch:9,obj:5", "cls,patch:1,obj:2"]  # tests/conftest.py answer_model's questions: 15, 13 answerable


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(answer_model) -> dict[str, Path]:
    return answer_model


@pytest.fixture(scope="module")
def answered(trained) -> tuple[Path, object]:
    out = trained["root"] / "answers-b8"
    summary = answer(trained["run"], trained["job"], trained["questions"], SPECS, out, batch_size=8, max_new_tokens=6)
    return out, summary


def test_one_line_per_question_in_the_question_files_order(trained, answered) -> None:
    """Every question has its line, in file order; the two without a usable image (5 failed,
    99 unknown) an empty one marked in metadata, LLaVA's keys unchanged."""
    out, summary = answered
    questions = read_question_file(trained["questions"]).questions
    assert summary.skipped == {"image failed": [5], "image not in the cache": [99]}
    assert summary.max_new_tokens == 6
    for spec in SPECS:
        lines = _lines(out / f"{spec}.jsonl")
        assert [(a["question_id"], a["metadata"]["line"]) for a in lines] == [(q.question_id, q.line) for q in questions]
        empty = {a["question_id"]: a for a in lines if "unanswered" in a["metadata"]}
        assert set(empty) == {5, 99}
        assert empty[5]["text"] == "" and empty[5]["metadata"]["unanswered"] == "image failed"
        assert empty[99]["metadata"]["unanswered"] == "image not in the cache"
        assert set(empty[5]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert all(a["text"] for a in lines if "unanswered" not in a["metadata"])
        assert [a["prompt"] for a in lines if a["question_id"] == 7] == ["Is there a thing 7?", "Is it red?"]
        first = lines[0]
        assert set(first) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert first["prompt"] == "Is there a thing 0?" and first["model_id"] == "eval-run"
        assert first["metadata"]["tokens"] == spec and first["metadata"]["category"] == "popular"
        assert "category" not in lines[-1]["metadata"]  # q-extra has none
    small = _lines(out / f"{SPECS[1]}.jsonl")
    assert all(a["metadata"]["visual_tokens"] <= 1 + 1 + 2 for a in small)
    assert all(a["metadata"]["visual_tokens"] > 4 for a in _lines(out / f"{SPECS[0]}.jsonl")
               if "unanswered" not in a["metadata"])


def test_greedy_answers_do_not_depend_on_the_batch_size(trained, answered) -> None:
    """Batch 1 vs batch 8 (left padding, positions from the mask). Conditioning: argmax is
    only comparable across shapes when the two best logits are apart; the smallest gap
    met is asserted well above float32 noise, so a near-tie would show as what it is."""
    out8, summary8 = answered
    out1 = trained["root"] / "answers-b1"
    summary1 = answer(trained["run"], trained["job"], trained["questions"], SPECS, out1, batch_size=1,
                      max_new_tokens=6)
    for spec in SPECS:
        assert summary1.min_margin[spec] > 1e-4, "near-tie: choose other questions"
        assert _lines(out1 / f"{spec}.jsonl") == _lines(out8 / f"{spec}.jsonl")


def test_a_rerun_answers_only_what_is_missing_and_keeps_the_order(trained, answered) -> None:
    out8, _ = answered
    spec = SPECS[0]
    full = (out8 / f"{spec}.jsonl").read_text()
    out = trained["root"] / "answers-resumed"
    out.mkdir()
    lines = full.splitlines()
    kept = lines[:3] + lines[6:8]
    (out / f"{spec}.jsonl").write_text("\n".join(kept) + "\n" + lines[8][:20])  # a crash cut the last line
    summary = answer(trained["run"], trained["job"], trained["questions"], [spec], out, batch_size=4,
                     max_new_tokens=6)
    # the file has no plan (an older masktok wrote it): its lines are kept where their whole batch is there
    assert summary.kept[spec] + summary.answered[spec] == len(lines) - 2  # 2 empty: no image
    assert (out / f"{spec}.jsonl").read_text() == full
    again = answer(trained["run"], trained["job"], trained["questions"], [spec], out, batch_size=4, max_new_tokens=6)
    assert again.answered[spec] == 0 and (out / f"{spec}.jsonl").read_text() == full


def test_a_version_1_cache_still_trains_and_answers(trained) -> None:
    from masktok.tiny.cache import write_tiny_cache

    root = trained["root"]
    job = write_tiny_cache(root / "v1-job", record_version=1)
    run = root / "v1-run"
    train(TrainConfig(stage=2, cache=job, data=trained["data"], llm=trained["llm"], out=run, max_steps=2,
                      batch_size=4, tokens="cls,patch:9,obj:5"))
    summary = answer(run, job, trained["questions"], ["cls,patch:4,obj:3"], root / "v1-answers", max_new_tokens=3)
    assert summary.answered["cls,patch:4,obj:3"] == 13
    with pytest.raises(TokenSpecError, match="version 1"):
        answer(run, job, trained["questions"], ["obj:3@iou0.5"], root / "v1-iou", max_new_tokens=3)


def test_the_cli_answers_at_the_checkpoints_budget_and_reports_bad_input(trained) -> None:
    runner = CliRunner()
    out = trained["root"] / "cli-answers"
    args = ["--checkpoint", str(trained["run"]), "--cache", str(trained["job"]), "--out", str(out),
            "--max-new-tokens", "3", "-q"]
    res = runner.invoke(answer_cli, [*args, "--questions", str(trained["questions"])])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(str(out / "cls,patch:9,obj:5.jsonl"))  # the checkpoint's spec
    bad = trained["root"] / "bad.jsonl"
    bad.write_text('{"question_id": 1, "image": "img/000.jpg", "text": "x"}\n{"question_id": 2}\n')
    res = runner.invoke(answer_cli, [*args, "--questions", str(bad)])
    assert res.exit_code == 1 and "line 2" in res.output and "Traceback" not in res.output
    with pytest.raises(DataError, match="no LLaVA question file"):
        other = trained["root"] / "labels.txt"
        other.write_text("image\tquestion\tanswer\n")
        read_question_file(other)


def test_questions_on_images_still_pending_are_answered_empty_then_asked_again(trained, tmp_path) -> None:
    """A job still running: image 2's row is pending (status 0, its shard not yet rewritten)."""
    import shutil

    import zarr

    cache = tmp_path / "job"
    shutil.copytree(trained["job"], cache)
    zarr.open_group(cache / "tokens.zarr", mode="r+")["status"][2] = 0
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "image": f"img/{i:03d}.jpg", "text": "What?"})
                                   for i in (1, 2, 3)) + "\n")
    summary = answer(trained["run"], cache, questions, SPECS[:1], tmp_path / "out", batch_size=2, max_new_tokens=2)
    assert summary.skipped == {"image not processed yet": [2]}
    lines = _lines(tmp_path / "out" / f"{SPECS[0]}.jsonl")
    assert [a["question_id"] for a in lines] == [1, 2, 3]
    assert lines[1]["text"] == "" and lines[1]["metadata"]["unanswered"] == "image not processed yet"
    zarr.open_group(cache / "tokens.zarr", mode="r+")["status"][2] = 1  # the job went on
    again = answer(trained["run"], cache, questions, SPECS[:1], tmp_path / "out", batch_size=2, max_new_tokens=2)
    # its planned batch (lines 0 and 1: the prompts are equally long) is answered again whole
    assert again.answered[SPECS[0]] == 2 and again.kept[SPECS[0]] == 1 and not again.skipped
    lines = _lines(tmp_path / "out" / f"{SPECS[0]}.jsonl")
    assert [a["question_id"] for a in lines] == [1, 2, 3] and lines[1]["text"]
    assert "unanswered" not in lines[1]["metadata"]


def test_the_score_counts_the_empty_answers(trained, answered) -> None:
    """POPE over the answers of test 1: the two empty lines are counted, said, and wrong."""
    from masktok.cli import main

    out, _ = answered
    labels = []
    for category, parity in (("random", 1), ("popular", 0)):
        labels += ["--labels", str(trained["root"] / f"coco_pope_{category}.json")]
        Path(labels[-1]).write_text("".join(json.dumps({"question_id": i, "label": "no"}) + "\n"
                                            for i in range(12) if i % 2 == parity))
    answers = trained["root"] / "pope-answers.jsonl"  # without the second question on image 7 (POPE asks once)
    answers.write_text("".join(json.dumps(a) + "\n" for a in _lines(out / f"{SPECS[0]}.jsonl") if a["prompt"] != "Is it red?"))
    res = CliRunner().invoke(main, ["score", "pope", "--answers", str(answers), *labels, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[0])["counts"]["unanswered"] == 2
    assert "2 answer(s) written empty" in res.stderr
