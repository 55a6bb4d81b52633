"""MMBench (evaluate/mmbench.py: LLaVA's TSV reading and prompt, VLMEvalKit's CircularEval with
exact matching, the OpenCompass upload) and MM-Vet's results file (evaluate/mmvet.py).
Hand-written TSVs in tmp_path; expected numbers worked out by hand in the comments."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd
import pytest

from masktok.evaluate.mmbench import (OPTIONS, SINGLE_PREDICTION_SUFFIX, can_infer, format_mmbench_table,
                                      mmbench_warnings, options_of, question_text, score_mmbench,
                                      write_mmbench_submission)
from masktok.schemas.eval_files import is_none, read_mmbench_table
from masktok.evaluate.mmvet import write_mmvet_submission
from masktok.schemas.errors import DataError

# A 1x1 PNG, as MMBench's TSV carries its pictures (base64 in the row).
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()

COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
           "l2-category", "comment", "split")

# (index, question, hint, A, B, C, D, answer, category, l2-category); "" is an empty cell.
# Five questions; copies at index + k x 1,000,000 rotate the options.
ROWS = [
    (1, "Which animal?", "Look closely.", "cat", "dog", "", "", "A", "animals", "perception"),
    (1000001, "Which animal?", "Look closely.", "dog", "cat", "", "", "B", "animals", "perception"),
    (2, "Which colour?", "", "red", "green", "blue", "", "C", "colors", "perception"),
    (1000002, "Which colour?", "", "green", "blue", "red", "", "B", "colors", "perception"),
    (2000002, "Which colour?", "", "blue", "red", "green", "", "A", "colors", "perception"),
    (3, "Which shape?", "", "circle", "square", "star", "heart", "D", "colors", "perception"),
    (1000003, "Which shape?", "", "square", "star", "heart", "circle", "C", "colors", "perception"),
    (2000003, "Which shape?", "", "star", "heart", "circle", "square", "B", "colors", "perception"),
    (3000003, "Which shape?", "", "heart", "circle", "square", "star", "A", "colors", "perception"),
    (4, "How many?", "", "five", "six", "seven", "eight", "C", "counting", "reasoning"),
    (5, "Which pet?", "", "hamster", "parrot", "", "", "A", "animals", "reasoning"),
]
# The answers, by index:
#   Q1: "A", "B. cat"            both copies right                       -> right
#   Q2: "C", "B", "B"            2000002 wants A                         -> wrong
#   Q3: "D", "C", -, "A"         2000003 unanswered (missing)            -> wrong
#   Q4: "seven"                  the option's text alone reads as C      -> right
#   Q5: "A or B"                 two letters: unparsable                 -> wrong
#   99: an answer to no row (unpaired)
# CircularEval: 2 of 5 questions = 40.00%. Row by row: 8 of 11 rows right = 72.73%.
# category (of each question's first row): animals Q1 right, Q5 wrong = 50%; colors Q2, Q3
# wrong = 0%; counting Q4 right = 100%. l2-category: perception Q1-Q3 = 1/3 = 33.33%,
# reasoning Q4, Q5 = 1/2 = 50%.
ANSWERS = [(1, "A"), (1000001, "B. cat"), (2, "C"), (1000002, "B"), (2000002, "B"), (3, "D"),
           (1000003, "C"), (3000003, "A"), (4, "seven"), (5, "A or B"), (99, "A")]


def write_tsv(path: Path, rows, columns=COLUMNS) -> Path:
    lines = ["\t".join(columns)]
    for index, question, hint, a, b, c, d, answer, category, l2 in rows:
        cells = {"index": index, "question": question, "hint": hint, "A": a, "B": b, "C": c, "D": d,
                 "answer": answer, "category": category, "image": PNG, "source": "hand", "l2-category": l2,
                 "comment": "", "split": "dev"}
        lines.append("\t".join(str(cells[c]) for c in columns))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_answers(path: Path, answers) -> Path:
    path.write_text("".join(json.dumps({"question_id": qid, "round_id": 0, "prompt": "p", "text": text,
                                        "options": [], "option_char": [], "answer_id": f"a{qid}",
                                        "model_id": "mask-llava", "metadata": {}}) + "\n"
                            for qid, text in answers), encoding="utf-8")
    return path


@pytest.fixture
def bench(tmp_path: Path) -> tuple[Path, Path]:
    return write_answers(tmp_path / "answers.jsonl", ANSWERS), write_tsv(tmp_path / "mmbench_dev.tsv", ROWS)


def test_circular_eval_counts_a_question_right_only_when_every_copy_is(bench):
    score = score_mmbench(*bench)
    assert score.benchmark == "mmbench"
    assert score.scored == 5
    assert score.score == pytest.approx(40.0)
    assert score.extra["rows"] == 11 and score.extra["vanilla"] == pytest.approx(800 / 11)


def test_missing_copy_is_wrong_and_reported_and_stray_answer_unpaired(bench):
    score = score_mmbench(*bench)
    assert score.missing == [2000003]
    assert score.unpaired == [99]
    assert any("2000003" in line for line in mmbench_warnings(score))


def test_unparsable_prediction_is_counted_and_shown(bench):
    score = score_mmbench(*bench)
    assert score.extra["unparsable"] == 1
    assert score.extra["unparsable_examples"] == [{"index": 5, "text": "A or B"}]
    assert any("name no option" in line and "A or B" in line for line in mmbench_warnings(score))


def test_parts_per_category_and_l2_category_from_first_rows(bench):
    parts = score_mmbench(*bench).parts
    assert {n: p["score"] for n, p in parts["category"].items()} == pytest.approx(
        {"animals": 50.0, "colors": 0.0, "counting": 100.0})
    assert {n: p["questions"] for n, p in parts["category"].items()} == {"animals": 2, "colors": 2, "counting": 1}
    assert {n: p["score"] for n, p in parts["l2-category"].items()} == pytest.approx(
        {"perception": 100 / 3, "reasoning": 50.0})
    table = format_mmbench_table(score_mmbench(*bench))
    assert "40.00" in table and "category: counting" in table and "33.33" in table


def test_empty_category_columns_give_no_parts(tmp_path: Path):
    # The labels TSV built from the OpenCompass upload: category columns empty. Q4 alone: 100%.
    labels = write_tsv(tmp_path / "l.tsv", [r[:8] + ("", "") for r in ROWS if r[0] == 4])
    score = score_mmbench(write_answers(tmp_path / "a.jsonl", [(4, "C")]), labels)
    assert score.parts == {} and score.score == pytest.approx(100.0)


def test_all_copies_right_scores_full_marks(tmp_path: Path):
    labels = write_tsv(tmp_path / "l.tsv", ROWS[:2])
    assert score_mmbench(write_answers(tmp_path / "a.jsonl", [(1, "A"), (1000001, "B")]), labels).score == 100.0
    assert score_mmbench(write_answers(tmp_path / "b.jsonl", [(1, "A"), (1000001, "A")]), labels).score == 0.0


@pytest.mark.parametrize("text, rules_2023, rules_2025", [
    ("A", "A", "A"),                         # a bare letter
    ("B. dog", "B", "B"),                    # letter then its text
    ("(B)", "B", "B"),                       # brackets read as spaces
    ("dog", "B", "B"),                       # the option's text alone (can_infer_text)
    ("Dog", "B", "B"),                       # text match is case-insensitive
    ("A or B", None, None),                  # two letters: no option
    ("cat and dog", None, None),             # two options' texts: no option
    ("a", None, None),                       # letters are case-sensitive
    # the minimal input: 2023 reads the lone letter anywhere; 2025 wants it among the
    # last four words and refuses a text match over twice the options' length (36 > 12)
    ("B. The animal in the picture is a dog", "B", None),
    ("B is right since the dog barks at all of us", "B", None),
    ("B. The animal in the picture barks", "B", None),  # the letter rule alone (no option text inside)
    ("The correct answer is **B**, since the dog barks at us all", "B", "B"),  # 2025: by "answer is X"
    ("it is surely a dog, I am sure of that, no doubt", "B", None),  # text match, no length cap in 2023
    ("Cannot determine the answer", "Z", "Z"),  # a refusal names no option (counts wrong)
    ("Z", "Z", "Z"),
])
def test_can_infer_reads_options_like_vlmevalkit_of_2023_and_of_2025(text, rules_2023, rules_2025):
    assert can_infer(text, {"A": "cat", "B": "dog"}, "2023") == rules_2023
    assert can_infer(text, {"A": "cat", "B": "dog"}, "2025") == rules_2025


def test_the_default_rules_are_2023_and_the_score_says_which_it_used_with_the_unparsable_share(tmp_path: Path):
    """Q1's two copies answered in sentences: 2023 reads both (100%), 2025 neither (0%, 2 of 2
    answers unparsable). The table and JSON name the rules; --mmbench-rules picks them."""
    from click.testing import CliRunner

    from masktok.cli.score import score

    labels = write_tsv(tmp_path / "l.tsv", ROWS[:2])
    answers = write_answers(tmp_path / "a.jsonl", [(1, "A. The animal in the picture purrs"),
                                                   (1000001, "B. The animal in the picture purrs")])
    default, strict = score_mmbench(answers, labels), score_mmbench(answers, labels, "2025")
    assert (default.extra["rules"], default.score, default.extra["unparsable"]) == ("2023", 100.0, 0)
    assert (strict.extra["rules"], strict.score, strict.extra["unparsable"]) == ("2025", 0.0, 2)
    assert strict.extra["unparsable_share"] == 100.0
    assert "unparsable: 2 of 2 answers (100.0%), counted wrong; options read with the 2025 rules" in \
        format_mmbench_table(strict)
    result = CliRunner().invoke(score, ["mmbench", "--answers", str(answers), "--labels", str(labels),
                                        "--mmbench-rules", "2025", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["rules"], out["score"], out["unparsable"]) == ("2025", 0.0, 2)
    shown = CliRunner().invoke(score, ["mmbench", "--answers", str(answers), "--labels", str(labels)])
    assert "100.00" in shown.stdout and "with the 2023 rules" in shown.stdout


def test_can_infer_text_needs_exactly_one_option_inside():
    choices = {"A": "six", "B": "sixteen", "C": "two"}
    assert can_infer("sixteen", choices) is None  # "six" is inside "sixteen" too
    assert can_infer("two", choices) == "C"


def test_prompt_with_hint_and_options_up_to_first_missing(tmp_path: Path):
    path = tmp_path / "q.tsv"
    path.write_text("index\tquestion\thint\tA\tB\tC\tD\timage\n"
                    f"7\tWhat is shown?\tA hint.\tx\ty\t\tz\t{PNG}\n"
                    f"8\tAnd here?\t\tp\tNone\tq\tr\t{PNG}\n", encoding="utf-8")
    first, second = (row for _, row in read_mmbench_table(path).iterrows())
    assert options_of(first) == ["x", "y"]  # C empty: D is never reached
    assert question_text(first) == "A hint.\nWhat is shown?\nA. x\nB. y"
    assert options_of(second) == ["p"]  # "None" reads as NaN, as LLaVA's pandas does
    assert question_text(second) == "And here?\nA. p"


def test_single_prediction_suffixes_and_options():
    assert OPTIONS == ("A", "B", "C", "D")
    assert SINGLE_PREDICTION_SUFFIX == {"en": "Answer with the option's letter from the given choices directly.",
                                        "cn": "请直接回答选项字母。"}


@pytest.mark.parametrize("value, expected", [(None, True), (float("nan"), True), ("nan", True), ("NONE", True),
                                             ("", False), ("no", False), (0, False)])
def test_is_none_as_llava(value, expected):
    assert is_none(value) is expected


def test_labels_of_another_benchmark_are_a_data_error(tmp_path: Path, bench):
    answers, _ = bench
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text('{"question_id": 1, "label": "yes"}\n')
    with pytest.raises(DataError, match="no MMBench TSV"):
        score_mmbench(answers, pope)
    test_split = write_tsv(tmp_path / "test.tsv", ROWS, tuple(c for c in COLUMNS if c != "answer"))
    with pytest.raises(DataError, match="no 'answer' column"):
        score_mmbench(answers, test_split)
    yes_no = write_tsv(tmp_path / "yn.tsv", [r[:7] + ("yes",) + r[8:] for r in ROWS])
    with pytest.raises(DataError, match="not one of A, B, C, D"):
        score_mmbench(answers, yes_no)
    with pytest.raises(DataError, match="cannot read"):
        score_mmbench(answers, tmp_path / "absent.tsv")


def test_answers_of_another_question_set_or_twice_are_a_data_error(tmp_path: Path, bench):
    _, labels = bench
    with pytest.raises(DataError, match="no answer of"):
        score_mmbench(write_answers(tmp_path / "other.jsonl", [(123, "A")]), labels)
    with pytest.raises(DataError, match="second answer to question 1"):
        score_mmbench(write_answers(tmp_path / "twice.jsonl", [(1, "A"), (1, "B")]), labels)


def test_copy_without_its_first_row_is_a_data_error(tmp_path: Path, bench):
    with pytest.raises(DataError, match="circular copy of question 1"):
        score_mmbench(bench[0], write_tsv(tmp_path / "l.tsv", ROWS[1:2]))


def test_submission_is_llavas_upload_readable_by_pandas(tmp_path: Path, bench):
    answers, questions = bench
    result = write_mmbench_submission(answers, questions, tmp_path / "up" / "model.xlsx")
    assert result.rows == 11 and result.missing == [2000003] and result.unpaired == [99]
    sheets = pd.read_excel(result.path, sheet_name=None, engine="openpyxl")
    assert list(sheets) == ["Sheet1"]
    upload = sheets["Sheet1"]
    # hint, category, source, image, comment, l2-category dropped; prediction at column 6.
    assert upload.columns.tolist() == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert upload["index"].tolist() == [r[0] for r in ROWS]
    predictions = dict(zip(upload["index"], upload["prediction"]))
    assert predictions[1000001] == "B. cat" and predictions[4] == "seven"
    assert pd.isna(predictions[2000003])


def test_mmvet_results_file_is_llavas(tmp_path: Path):
    answers = write_answers(tmp_path / "mmvet.jsonl", [(0, "x = 3"), (2, "It says \"stop\"."), (1, "é")])
    out = tmp_path / "results" / "model.json"
    written, missing, unpaired = write_mmvet_submission(answers, out)
    assert list(written) == ["v1_0", "v1_2", "v1_1"] and missing == unpaired == []  # answer-file order
    assert json.loads(out.read_text()) == {"v1_0": "x = 3", "v1_2": 'It says "stop".', "v1_1": "é"}
    assert out.read_text() == json.dumps(written, indent=2)  # json.dump(..., indent=2), ASCII escapes
    with pytest.raises(DataError, match="second answer"):
        write_mmvet_submission(write_answers(tmp_path / "twice.jsonl", [(0, "a"), (0, "b")]), out)


def test_the_sweep_passes_mmbench_rules_and_warns_of_unparsable_answers(tmp_path: Path):
    from click.testing import CliRunner

    from masktok.cli.score import score

    labels = write_tsv(tmp_path / "l.tsv", ROWS[:2])
    spec = "cls,patch:9,obj:5"
    answers = tmp_path / f"{spec}.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q, "prompt": "p", "text": t,
                                           "metadata": {"tokens": spec, "visual_tokens": 15}}) + "\n"
                               for q, t in [(1, "A. It purrs at us all"), (1000001, "B. It purrs at us all")]))
    args = ["sweep", f"mmbench={answers}", "--labels", str(labels), "--json"]
    default = CliRunner().invoke(score, args)
    strict = CliRunner().invoke(score, args + ["--mmbench-rules", "2025"])
    assert default.exit_code == 0 and strict.exit_code == 0, default.output + strict.output
    assert [(p["rules"], p["score"]) for p in json.loads(default.stdout)["points"]] == [("2023", 100.0)]
    assert [(p["rules"], p["score"]) for p in json.loads(strict.stdout)["points"]] == [("2025", 0.0)]
    assert "2 answer(s) name no option" in strict.stderr and "2025 rules" in strict.stderr
    table = CliRunner().invoke(score, args[:-1] + ["--mmbench-rules", "2025"])
    assert "rules: --mmbench-rules 2025" in table.stdout.splitlines()
