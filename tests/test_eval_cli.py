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


def _mmvet_questions(path: Path, ids) -> Path:
    path.write_text("".join(json.dumps({"question_id": i, "image": f"v1_{i}.png", "text": "?"}) + "\n" for i in ids))
    return path


def test_the_mmvet_submission_is_written_and_named(tmp_path: Path) -> None:
    out = tmp_path / "upload" / "results.json"
    result = CliRunner().invoke(submission, ["mmvet", "--answers", str(_answers(tmp_path / "a.jsonl")), "--questions",
                                             str(_mmvet_questions(tmp_path / "q.jsonl", range(3))), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out} (3 questions)" and result.stderr == ""
    assert json.loads(out.read_text()) == {"v1_0": "Yes", "v1_1": "Yes", "v1_2": "Yes"}


def test_an_incomplete_mmvet_submission_is_warned_of_and_its_missing_questions_written_empty(tmp_path: Path) -> None:
    """The issue's case: one answer, MM-Vet's questions 0-2 (the grader would stop at v1_1)."""
    answers = tmp_path / "one.jsonl"
    answers.write_text(json.dumps({"question_id": 0, "prompt": "?", "text": "Yes"}) + "\n")
    out = tmp_path / "results.json"
    result = CliRunner().invoke(submission, ["mmvet", "--answers", str(answers), "--questions",
                                             str(_mmvet_questions(tmp_path / "q.jsonl", range(3))), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == ("warning: 2 question(s) without an answer, written empty (MM-Vet's grader stops "
                                     "at a missing one)")
    assert json.loads(out.read_text()) == {"v1_0": "Yes", "v1_1": "", "v1_2": ""}
    missing_flag = CliRunner().invoke(submission, ["mmvet", "--answers", str(answers), "--out", str(out)])
    assert missing_flag.exit_code == 2 and "--questions" in missing_flag.output


def test_the_vqav2_upload_warns_only_of_the_split_s_questions_without_an_answer(tmp_path: Path) -> None:
    """test2015 has questions 1-4, test-dev 1 and 2; answers to 1 only: one test-dev question is
    unanswered (not three of test2015); every test2015 id is written ("" where unanswered)."""
    def questions(path: Path, ids) -> Path:
        path.write_text("".join(json.dumps({"question_id": i, "image": f"{i}.jpg", "text": "?"}) + "\n" for i in ids))
        return path

    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "prompt": "?", "text": "Two"}) + "\n")
    test2015, dev = questions(tmp_path / "test2015.jsonl", [1, 2, 3, 4]), questions(tmp_path / "test-dev.jsonl", [1, 2])
    out = tmp_path / "upload.json"
    result = CliRunner().invoke(submission, ["vqav2", "--answers", str(answers), "--questions", str(test2015),
                                             "--split", str(dev), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "warning: 1 question(s) of test-dev.jsonl without an answer, submitted empty"
    assert [e["answer"] for e in json.loads(out.read_text())] == ["2", "", "", ""]
    stray = CliRunner().invoke(submission, ["vqav2", "--answers", str(answers), "--questions", str(dev),
                                            "--split", str(test2015), "--out", str(out)])
    assert stray.exit_code == 1 and "question 3 is not in" in stray.stderr
