"""`masktok score BENCH` and `masktok submission BENCH` as a user meets them: wrong input is one
line on stderr and exit status 1, never a traceback; --json prints one object with the score.
The rules themselves are tested per benchmark (tests/test_eval_<bench>.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.cli.score import score, submission


def _answers(path: Path) -> Path:
    rows = [{"question_id": i, "prompt": f"Is there a dog {i}?", "text": "Yes", "answer_id": str(i),
             "model_id": "m", "metadata": {}} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pope_labels(path: Path) -> Path:
    path.write_text("".join(json.dumps({"question_id": i, "label": "yes"}) + "\n" for i in range(3)))
    return path


@pytest.mark.parametrize("bench, option", [("mme", "--labels"), ("mmbench", "--labels"), ("sqa", "--questions"),
                                           ("gqa", "--labels"), ("textvqa", "--labels"), ("vqa", "--labels")])
def test_labels_of_another_benchmark_are_one_line_and_exit_1(tmp_path: Path, bench: str, option: str) -> None:
    """POPE's labels handed to every other scorer."""
    labels = _pope_labels(tmp_path / "coco_pope_random.json")
    result = CliRunner().invoke(score, [bench, "--answers", str(_answers(tmp_path / "a.jsonl")), option, str(labels)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_an_answer_file_in_no_known_format_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "answers.jsonl"
    bad.write_text("image\tquestion\tanswer\n")
    result = CliRunner().invoke(score, ["pope", "--answers", str(bad), "--labels",
                                        str(_pope_labels(tmp_path / "coco_pope_random.json"))])
    assert result.exit_code == 1 and "answers.jsonl:1" in result.stderr and "Traceback" not in result.output


def test_json_has_the_headline_score_and_counts(tmp_path: Path) -> None:
    result = CliRunner().invoke(score, ["pope", "--answers", str(_answers(tmp_path / "a.jsonl")), "--labels",
                                        str(_pope_labels(tmp_path / "coco_pope_random.json")), "--json"])
    data = json.loads(result.stdout)
    assert data["score"] == pytest.approx(100.0) and data["counts"] == {"scored": 3, "missing": 0, "unpaired": 0, "unanswered": 0}


def test_the_mmvet_submission_is_written_and_named(tmp_path: Path) -> None:
    out = tmp_path / "upload" / "results.json"
    result = CliRunner().invoke(submission, ["mmvet", "--answers", str(_answers(tmp_path / "a.jsonl")),
                                             "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out} (3 questions)"
    assert json.loads(out.read_text()) == {"v1_0": "Yes", "v1_1": "Yes", "v1_2": "Yes"}
