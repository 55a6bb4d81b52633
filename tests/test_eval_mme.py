"""MME scoring (evaluate/mme.py): LLaVA's convert_answer_to_mme.py pairing and the MME eval
tool's calculation.py scores. Small hand-made label folders and answer files; no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masktok.evaluate.mme import (COGNITION, PERCEPTION, format_mme_table, load_mme_labels,
                                  parse_pred_ans, question_candidates, score_mme)
from masktok.schemas.errors import DataError

HINT = "\nAnswer the question using a single word or phrase."


def write_results(folder: Path, subtasks: dict[str, list[tuple[str, str, str]]]) -> Path:
    """An eval-tool results folder: <subtask>.txt with image<TAB>question<TAB>gt lines."""
    folder.mkdir(parents=True, exist_ok=True)
    for subtask, rows in subtasks.items():
        (folder / f"{subtask}.txt").write_text("".join("\t".join(row) + "\n" for row in rows))
    return folder


def write_answers(path: Path, rows: list[tuple[object, str, str]]) -> Path:
    """A LLaVA answer file of (question_id, prompt, text) rows."""
    path.write_text("".join(json.dumps({"question_id": qid, "prompt": prompt, "text": text,
                                        "answer_id": f"a{i}", "model_id": "m", "metadata": {}}) + "\n"
                            for i, (qid, prompt, text) in enumerate(rows)))
    return path


def pair(image: str, thing: str) -> list[tuple[str, str, str]]:
    """The two MME questions of an image: is there a <thing> (Yes), a unicorn (No)."""
    return [(image, f"Is there a {thing}? Please answer yes or no.", "Yes"),
            (image, "Is there a unicorn? Please answer yes or no.", "No")]


def asked(subtask: str, image: str, thing: str) -> tuple[str, str]:
    """question_id and LLaVA prompt of the first question of pair(); thing='unicorn': the second."""
    return f"{subtask}/{image}", f"Is there a {thing}?{HINT}"


# existence, 3 images (6 questions):
#   0001: dog Yes/"Yes" right, unicorn No/"No" right        -> both right
#   0002: cat Yes/"No" wrong,  unicorn No/"no, it is not" right -> one right
#   0003: cow Yes/"Yes" right, unicorn: no answer (missing, wrong) -> one right
#   acc = 4/6 = 66.667%, acc+ = 1/3 = 33.333%, score = 100.00
EXISTENCE = {"existence": pair("0001.jpg", "dog") + pair("0002.jpg", "cat") + pair("0003.jpg", "cow")}
EXISTENCE_ANSWERS = [(*asked("existence", "0001.jpg", "dog"), "Yes"),
                     (*asked("existence", "0001.jpg", "unicorn"), "No"),
                     (*asked("existence", "0002.jpg", "cat"), "No"),
                     (*asked("existence", "0002.jpg", "unicorn"), "no, it is not"),
                     (*asked("existence", "0003.jpg", "cow"), "Yes")]


def test_acc_plus_counts_images_with_both_questions_right_and_a_missing_answer_fails_its_image(tmp_path):
    labels = write_results(tmp_path / "Your_Results", EXISTENCE)
    result = score_mme(write_answers(tmp_path / "a.jsonl", EXISTENCE_ANSWERS), labels)
    part = result.parts["existence"]
    assert part["n"] == 6 and part["images"] == 3
    assert part["acc"] == pytest.approx(400 / 6)
    assert part["acc_plus"] == pytest.approx(100 / 3)
    assert part["score"] == pytest.approx(100.0)
    assert result.missing == [("existence", "0003.txt", "Is there a unicorn? Please answer yes or no.")]
    assert result.scored == 6 and result.unpaired == []


def test_pairs_by_image_not_by_line_order(tmp_path):
    # calculation.py chunks lines by two: with 0003's first answer missing and the answers in
    # another order, consecutive pairs would mix images. Grouping by image gives the same score.
    labels = write_results(tmp_path / "Your_Results", EXISTENCE)
    reordered = [EXISTENCE_ANSWERS[i] for i in (4, 2, 0, 3, 1)]
    result = score_mme(write_answers(tmp_path / "a.jsonl", reordered), labels)
    assert result.parts["existence"]["acc_plus"] == pytest.approx(100 / 3)
    assert result.parts["existence"]["acc"] == pytest.approx(400 / 6)


def all_subtasks() -> dict[str, list[tuple[str, str, str]]]:
    return {s: pair("0001.png", "dog") for s in PERCEPTION + COGNITION}


def test_perception_and_cognition_totals_sum_their_own_subtasks(tmp_path):
    # Every subtask answered "Yes" twice: acc 50, acc+ 0 -> 50 points; existence answered
    # right twice: 200. Perception = 200 + 9 * 50 = 650; cognition = 4 * 50 = 200.
    labels = write_results(tmp_path / "Your_Results", all_subtasks())
    rows = []
    for s in PERCEPTION + COGNITION:
        rows.append((*asked(s, "0001.png", "dog"), "Yes"))
        rows.append((*asked(s, "0001.png", "unicorn"), "No" if s == "existence" else "Yes"))
    result = score_mme(write_answers(tmp_path / "a.jsonl", rows), labels)
    assert result.score == pytest.approx(650.0)
    assert result.extra == {"cognition": pytest.approx(200.0)}
    assert result.parts["code_reasoning"]["score"] == pytest.approx(50.0)
    table = format_mme_table(result)
    assert "650.00" in table and "200.00" in table
    assert table.index("Perception") < table.index("Existence") < table.index("Cognition") < table.index("Code Reasoning")


def test_totals_are_undefined_while_a_subtask_of_their_group_has_no_labels(tmp_path):
    labels = write_results(tmp_path / "Your_Results", EXISTENCE)
    result = score_mme(write_answers(tmp_path / "a.jsonl", EXISTENCE_ANSWERS), labels)
    assert result.score is None and result.extra["cognition"] is None
    assert "-" in format_mme_table(result)


def test_release_folder_in_both_layouts_gives_the_results_folder_labels(tmp_path):
    release = tmp_path / "MME_Benchmark_release_version"
    flat = release / "existence"  # images with their .txt beside them
    flat.mkdir(parents=True)
    nested = release / "artwork"  # images/ + questions_answers_YN/
    (nested / "images").mkdir(parents=True)
    (nested / "questions_answers_YN").mkdir()
    for image, thing in (("0001.jpg", "dog"), ("0002.jpg", "cat"), ("0003.jpg", "cow")):
        lines = "".join(f"{q}\t{gt}\n" for _, q, gt in pair(image, thing))
        (flat / image).write_bytes(b"")
        (flat / image.replace(".jpg", ".txt")).write_text(lines)
    (nested / "images" / "10.jpg").write_bytes(b"")
    (nested / "questions_answers_YN" / "10.txt").write_text(
        "".join(f"{q}\t{gt}\n" for _, q, gt in pair("10.jpg", "painting")))
    results = write_results(tmp_path / "Your_Results", {**EXISTENCE, "artwork": pair("10.jpg", "painting")})
    assert sorted(load_mme_labels(release), key=lambda lab: lab.key) == \
        sorted(load_mme_labels(results), key=lambda lab: lab.key)
    answers = write_answers(tmp_path / "a.jsonl", EXISTENCE_ANSWERS + [(*asked("artwork", "10.jpg", "painting"), "Yes")])
    result = score_mme(answers, release)
    assert result.parts["existence"]["score"] == pytest.approx(100.0)
    assert result.parts["artwork"] == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0, "n": 2, "images": 1}


def test_a_folder_of_neither_layout_is_a_data_error(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x\ty\tYes\n")
    with pytest.raises(DataError, match="neither"):
        load_mme_labels(tmp_path / "other")
    with pytest.raises(DataError, match="must be a folder"):
        load_mme_labels(tmp_path / "other" / "notes.txt")


@pytest.mark.parametrize("rows, message", [
    ([("0001.jpg", "Q1? Please answer yes or no.", "Maybe"), ("0001.jpg", "Q2? Please answer yes or no.", "No")],
     "Yes or No"),
    ([("0001.jpg", "Q1? Please answer yes or no.", "Yes")], "1 question"),
    ([("0001.jpg", "Q1? Please answer yes or no.")], "ground truth"),
])
def test_bad_label_files_are_data_errors(tmp_path, rows, message):
    labels = write_results(tmp_path / "Your_Results", {"count": rows})
    with pytest.raises(DataError, match=message):
        load_mme_labels(labels)


def test_prompt_recovery_follows_the_converter():
    # The short-answer hint is removed and the rest stripped, then the yes/no hint appended
    # after one space, or two where MME's question has two.
    assert question_candidates("Is there a dog?\nAnswer the question using a single word or phrase.") == \
        ("Is there a dog? Please answer yes or no.", "Is there a dog?  Please answer yes or no.")
    # A prompt that already asks for yes/no is the question as it is (not even stripped).
    assert question_candidates(" Is there a dog? Please answer yes or no.") == (" Is there a dog? Please answer yes or no.",)
    # Without the short-answer hint nothing is stripped before appending.
    assert question_candidates("Is there a dog? ") == ("Is there a dog?  Please answer yes or no.",
                                                       "Is there a dog?   Please answer yes or no.")


def test_double_space_questions_pair_and_unknown_answers_are_unpaired(tmp_path):
    rows = [("0001.jpg", "Is it red?  Please answer yes or no.", "Yes"),
            ("0001.jpg", "Is it blue? Please answer yes or no.", "No")]
    labels = write_results(tmp_path / "Your_Results", {"color": rows})
    answers = write_answers(tmp_path / "a.jsonl", [
        ("color/0001.jpg", f"Is it red?{HINT}", "Yes"),
        ("color/0001.jpg", f"Is it blue?{HINT}", "No"),
        ("color/0002.jpg", f"Is it red?{HINT}", "Yes"),  # no such image
        (7, f"Is it red?{HINT}", "Yes"),  # not an MME question id
    ])
    result = score_mme(answers, labels)
    assert result.parts["color"]["score"] == pytest.approx(200.0)
    assert result.missing == []
    assert result.unpaired == [("color/0002.jpg", "Is it red? Please answer yes or no."),
                               (7, f"Is it red?{HINT}")]


def test_two_answers_to_one_question_are_a_data_error(tmp_path):
    labels = write_results(tmp_path / "Your_Results", EXISTENCE)
    answers = write_answers(tmp_path / "a.jsonl", EXISTENCE_ANSWERS + EXISTENCE_ANSWERS[:1])
    with pytest.raises(DataError, match="second answer"):
        score_mme(answers, labels)


@pytest.mark.parametrize("text, label", [
    ("yes", "yes"), ("no", "no"),
    ("yes, there is", "yes"), ("no, it is not", "no"),
    ("nope", "no"),          # "no" within the first 4 characters
    ("not sure", "no"),
    ("i think yes", "other"),  # "yes" only after the first 4 characters
    ("yesno", "yes"),        # "yes" is looked for first
    ("", "other"),
    ("Yes", "other"),        # parse_pred_ans is case-sensitive: scoring lowercases first
])
def test_parse_pred_ans_reads_the_first_four_characters(text, label):
    assert parse_pred_ans(text) == label


def test_answers_are_lowercased_before_parsing(tmp_path):
    labels = write_results(tmp_path / "Your_Results", {"scene": pair("0001.jpg", "beach")})
    answers = write_answers(tmp_path / "a.jsonl", [(*asked("scene", "0001.jpg", "beach"), "YES."),
                                                   (*asked("scene", "0001.jpg", "unicorn"), "NO")])
    assert score_mme(answers, labels).parts["scene"]["score"] == pytest.approx(200.0)
