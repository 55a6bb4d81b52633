"""GQA scoring (evaluate/gqa.py): LLaVA's convert_gqa_for_eval.py normalisation and GQA
eval.py's balanced accuracy, binary/open split, per-type accuracy and distribution score.
A small hand-made testdev_balanced_questions.json; expected numbers by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masktok.evaluate.gqa import distribution_score, format_gqa_table, normalize_gqa_answer, score_gqa
from masktok.schemas.errors import DataError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def answer(qid, text: str) -> dict:
    return {"question_id": qid, "prompt": "Q?\nAnswer the question using a single word or phrase.", "text": text,
            "answer_id": f"a{qid}", "model_id": "mask-llava", "metadata": {}}


def question(answer_: str, structural: str, semantic: str, balanced: bool = True, group: str | None = None) -> dict:
    return {"imageId": "n1", "question": "Q?", "answer": answer_, "fullAnswer": "...", "isBalanced": balanced,
            "types": {"structural": structural, "semantic": semantic, "detailed": "x"},
            "groups": {"global": group, "local": "l"}, "semantic": [], "entailed": [], "equivalent": []}


def gqa_labels(tmp_path: Path) -> Path:
    questions = {
        "201": question("yes", "verify", "attr"),
        "202": question("left", "query", "rel", group="g1"),
        "203": question("dog", "query", "obj", group="g1"),
        "204": question("no", "logical", "obj"),
        "205": question("yes", "verify", "attr", balanced=False),
    }
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps(questions))
    return path


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"), ("end...", "end"), ("3.5", "3.5"),
    ("A dog", "a dog"),    # no article or punctuation handling, unlike VQA
    (" yes. ", " yes. "),  # only trailing periods go: a trailing space keeps the period
])
def test_gqa_answer_strips_trailing_periods_and_lowercases_only(text, expected):
    assert normalize_gqa_answer(text) == expected


def test_gqa_balanced_accuracy_binary_open_and_types(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [
        answer("201", "Yes."),  # binary, right
        answer(202, "Left"),    # open, right (int id pairs with "202")
        answer("203", "A dog"),  # open, wrong: "a dog" != "dog"
        answer("205", "no"),    # unbalanced: ignored
        answer("999", "yes"),   # of no question
    ])                          # 204 (binary) has no answer: wrong
    score = score_gqa(answers, gqa_labels(tmp_path))
    # 2 right of 4 balanced questions
    assert score.score == pytest.approx(50)
    assert score.parts["binary"] == {"accuracy": pytest.approx(50), "n": 2}
    assert score.parts["open"] == {"accuracy": pytest.approx(50), "n": 2}
    assert score.parts["structural/verify"]["accuracy"] == pytest.approx(100)
    assert score.parts["structural/logical"]["accuracy"] == 0
    assert score.parts["semantic/obj"] == {"accuracy": 0, "n": 2}
    assert (score.scored, score.missing, score.unpaired) == (4, ["204"], ["999"])
    # group g1: gold {left: 1, dog: 1}, predicted {left: 1, "a dog": 1}: (1-1)^2/1 + (0-1)^2/1 = 1,
    # weighted by 2 gold answers over 2 -> 1, / 100
    assert score.extra["distribution"] == pytest.approx(0.01)
    table = format_gqa_table(score)
    assert "binary" in table and "semantic object" in table and "50.00" in table


def test_distribution_score_weights_groups_by_gold_totals():
    # g1: (1-2)^2/2 + (1-1)^2/1 = 0.5 over 3 gold; g2: (0-1)^2/1 = 1 over 1 -> (1.5 + 1) / 4 / 100
    gold = {"g1": {"a": 2, "b": 1}, "g2": {"c": 1}}
    predicted = {"g1": {"a": 1, "b": 1, "z": 1}}
    assert distribution_score(gold, predicted) == pytest.approx(0.00625)
    assert distribution_score({}, {}) is None


def test_gqa_answers_of_another_question_set_are_an_error(tmp_path):
    with pytest.raises(DataError, match="pairs with"):
        score_gqa(write_jsonl(tmp_path / "a.jsonl", [answer("77", "yes")]), gqa_labels(tmp_path))


def test_gqa_labels_of_another_format_are_an_error(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"question_id": "201", "answer": "yes"}]))
    with pytest.raises(DataError, match="not GQA questions"):
        score_gqa(write_jsonl(tmp_path / "a.jsonl", [answer("201", "yes")]), labels)
    labels.write_text(json.dumps({"201": {"answer": "yes"}}))
    with pytest.raises(DataError, match="is not a GQA question"):
        score_gqa(write_jsonl(tmp_path / "a.jsonl", [answer("201", "yes")]), labels)


def test_gqa_second_answer_to_a_question_is_an_error(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [answer("201", "yes"), answer(201, "no")])
    with pytest.raises(DataError, match="second answer"):
        score_gqa(answers, gqa_labels(tmp_path))
