"""ScienceQA scoring (evaluate/scienceqa.py): LLaVA's question file, prompts and
eval_science_qa.py's letter rule. Small hand-made files; no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masktok.evaluate.scienceqa import (FAILED, SINGLE_PREDICTION_SUFFIX, ScienceItem, answer_prompt,
                                        count_choices, extract_letter, format_scienceqa_table,
                                        question_text, read_scienceqa, score_scienceqa)
from masktok.schemas.errors import DataError


def entry(qid: str, question: str, letter: str, image: str | None = None) -> dict:
    """One item of llava_test_CQM-A.json."""
    row = {"id": qid, "conversations": [
        {"from": "human", "value": f"<image>\n{question}" if image else question},
        {"from": "gpt", "value": letter}]}
    if image:
        row["image"] = image
    return row


TWO = "Which is a mammal?\nA. whale\nB. shark"
THREE = "Context: A map.\nWhich state is farthest north?\nA. Ohio\nB. Maine\nC. Texas"


def write(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def write_answers(path: Path, rows: list[tuple[object, str]]) -> Path:
    path.write_text("".join(json.dumps({"question_id": qid, "prompt": "p", "text": text, "answer_id": "x",
                                        "model_id": "m", "metadata": {}}) + "\n" for qid, text in rows))
    return path


@pytest.mark.parametrize("text, n_choices, letter", [
    ("B", 2, "B"),
    ("B. shark", 2, "B"),
    ("The answer is C.", 3, "C"),
    ("The answer is CD", 3, "C"),     # the pattern's '.' is unescaped: any character follows
    ("The answer is C", 3, FAILED),   # ...but one must follow
    ("The answer is A. No wait, The answer is B.", 3, FAILED),  # two matches
    ("C", 2, FAILED),                 # a letter beyond the item's choices counts wrong
    ("The answer is F.", 5, FAILED),  # beyond A-E
    ("B.", 2, FAILED),                # too short for "X. ", and no pattern match
    ("b", 2, FAILED),
    ("B is the run-on sentence.", 2, FAILED),
    (" B", 2, FAILED),
])
def test_extract_letter_follows_eval_science_qa(text, n_choices, letter):
    assert extract_letter(text, n_choices) == letter


def test_count_choices_counts_option_lines_even_when_a_choice_spans_lines():
    assert count_choices(TWO) == 2 and count_choices(THREE) == 3
    assert count_choices("Which closing is correct for a letter?\nA. Love,\nZoe\nB. love,\nZoe") == 2
    assert count_choices("Pick one.\nA. x\nC. y") == 1  # letters count in turn only


def test_prompts_are_llava_science_prompts(tmp_path):
    items = read_scienceqa(write(tmp_path / "q.json", [entry("1", TWO, "A"), entry("2", THREE, "B", "2/image.png")]))
    assert items[1] == ScienceItem("2", THREE, "B", "2/image.png")
    assert question_text(items[0]) == f"{TWO}\n{SINGLE_PREDICTION_SUFFIX}"
    assert answer_prompt(items[0]) == question_text(items[0])
    assert answer_prompt(items[1]) == f"<image>\n{THREE}\nAnswer with the option's letter from the given choices directly."


# 5 items: img "10" (A, answered "A" right), img "11" (B, no answer: missing, wrong);
# text "20" (A, "A. whale" right), "21" (B, "The answer is B." right), "22" (B, "C": beyond its
# 2 choices, wrong). IMG = 1/2 = 50%; no image = 2/3 = 66.67%; all = 3/5 = 60%; failed = 2.
QUESTIONS = [entry("10", TWO, "A", "10/image.png"), entry("11", THREE, "B", "11/image.png"),
             entry("20", TWO, "A"), entry("21", TWO, "B"), entry("22", TWO, "B")]


def test_img_accuracy_counts_only_items_with_an_image_and_missing_answers_are_wrong(tmp_path):
    questions = write(tmp_path / "q.json", QUESTIONS)
    answers = write_answers(tmp_path / "a.jsonl", [(20, "A. whale"), ("10", "A"), ("21", "The answer is B."),
                                                   ("22", "C"), ("999", "A")])
    result = score_scienceqa(answers, questions)
    assert result.score == pytest.approx(50.0)
    assert result.extra == {"all": pytest.approx(60.0)}
    assert result.parts["no_img"] == {"n": 3, "correct": 2, "accuracy": pytest.approx(200 / 3)}
    assert result.parts["failed"] == 2
    assert result.missing == ["11"] and result.unpaired == ["999"] and result.scored == 5
    table = format_scienceqa_table(result)
    assert "50.00" in table and "66.67" in table and "60.00" in table


def test_two_answers_to_one_item_are_a_data_error(tmp_path):
    questions = write(tmp_path / "q.json", QUESTIONS)
    with pytest.raises(DataError, match="second answer"):
        score_scienceqa(write_answers(tmp_path / "a.jsonl", [("10", "A"), ("10", "B")]), questions)


def test_ground_truth_must_be_a_letter_of_the_choices(tmp_path):
    questions = write(tmp_path / "q.json", [entry("1", TWO, "C")])
    with pytest.raises(DataError, match="'1'.*ground truth 'C'"):
        score_scienceqa(write_answers(tmp_path / "a.jsonl", [("1", "A")]), questions)


@pytest.mark.parametrize("value, message", [
    ([entry("1", TWO, "A"), {"id": "2", "conversations": "A"}], "item 2 \\(id '2'\\): conversations"),
    ([entry("1", TWO, "A"), ["not", "an", "object"]], "item 2: not a ScienceQA question"),
    ([entry("1", TWO, "A"), {**entry("2", TWO, "A"), "image": 3}], "item 2 .*image"),
    ([entry("1", TWO, "A"), entry("1", TWO, "B")], "item 2: id '1' given twice"),
    ({"id": "1"}, "JSON list"),
])
def test_read_scienceqa_names_the_malformed_item(tmp_path, value, message):
    with pytest.raises(DataError, match=message):
        read_scienceqa(write(tmp_path / "q.json", value))


def test_read_scienceqa_rejects_a_file_that_is_not_json(tmp_path):
    (tmp_path / "q.json").write_text('{"id": ')
    with pytest.raises(DataError, match="not JSON"):
        read_scienceqa(tmp_path / "q.json")
