"""POPE scoring (evaluate/pope.py), the token-budget sweep (evaluate/sweep.py) and
``masktok score`` (cli/score.py). Small hand-made files; no model, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.evaluate.pope import (category_from_label_file, load_pope_labels, normalize_pope_answer,
                                   pair_answers, score_counts, score_pope, score_pope_file)
from masktok.cli.score import score
from masktok.evaluate.sweep import format_score, sweep
from masktok.schemas.errors import DataError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def answer(qid, text: str, category: str | None = None, tokens: int | None = None,
           spec: str = "cls,patch:36,obj:5") -> dict:
    metadata = {} if category is None and tokens is None else {"tokens": spec}
    if category is not None:
        metadata["category"] = category
    if tokens is not None:
        metadata["visual_tokens"] = tokens
    return {"question_id": qid, "prompt": "Is there a dog in the image?", "text": text,
            "answer_id": f"a{qid}", "model_id": "mask-llava", "metadata": metadata}


# 10 items over 2 categories; question ids 1-5 repeat in both.
#   adversarial: 1 yes/"Yes, there is a dog." TP   2 yes/"No, there is not." FN   3 no/"Yes." FP
#                4 no/"No." TN   5 no/"There is not a cat in the image" TN
#       -> TP1 FP1 TN2 FN1: acc 3/5, precision 1/2, recall 1/2, F1 1/2, yes-ratio 2/5
#   popular:     1 yes/"Yes" TP   2 yes/"Yes. No" TP   3 no/"Nope" FP   4 yes/"no" FN   5 no/"No" TN
#       -> TP2 FP1 TN1 FN1: acc 3/5, precision 2/3, recall 2/3, F1 2/3, yes-ratio 3/5
#   overall (pooled): TP3 FP2 TN3 FN2: acc 6/10, precision 3/5, recall 3/5, F1 3/5, yes-ratio 5/10
ADVERSARIAL = [(1, "yes", "Yes, there is a dog."), (2, "yes", "No, there is not."), (3, "no", "Yes."),
               (4, "no", "No."), (5, "no", "There is not a cat in the image")]
POPULAR = [(1, "yes", "Yes"), (2, "yes", "Yes. No"), (3, "no", "Nope"), (4, "yes", "no"), (5, "no", "No")]


@pytest.fixture
def pope_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Answers (popular first, reversed: pairing must not rely on order) and two label files:
    coco_pope_adversarial.json (category from the name) and one with a category field."""
    adversarial = write_jsonl(tmp_path / "coco_pope_adversarial.json",
                              [{"question_id": q, "label": lab} for q, lab, _ in ADVERSARIAL])
    popular = write_jsonl(tmp_path / "labels_b.jsonl",
                          [{"question_id": q, "label": lab, "category": "popular"} for q, lab, _ in POPULAR])
    rows = [answer(q, t, "popular") for q, _, t in reversed(POPULAR)]
    rows += [answer(q, t, "adversarial") for q, _, t in ADVERSARIAL]
    return write_jsonl(tmp_path / "answers.jsonl", rows), [adversarial, popular]


@pytest.mark.parametrize("text, expected", [
    ("Yes, there is a dog.", "yes"), ("No.", "no"), ("There is not a cat", "no"),
    ("Nope", "yes"),            # LLaVA only looks for the words No / not / no
    ("Yes. No", "yes"),         # only the first sentence counts
    ("No, there is no dog", "no"), ("no", "no"), ("", "yes"),
    ("Yes there is,no", "yes"),  # commas are dropped, not made spaces: "isno" is not the word "no"
    ("No\nthere is", "yes"),     # words split on " " only: "No\nthere" is not "No"
])
def test_normalize_pope_answer_follows_llava_rules(text: str, expected: str) -> None:
    assert normalize_pope_answer(text) == expected


def test_category_from_label_file_uses_coco_pope_name_else_stem() -> None:
    assert category_from_label_file(Path("x/coco_pope_adversarial.json")) == "adversarial"
    assert category_from_label_file(Path("x/pope_random.jsonl")) == "pope_random"


def test_metrics_equal_hand_counted_values_per_category_and_overall(pope_files) -> None:
    answers, labels = pope_files
    report = score_pope_file(answers, labels)
    adv, pop, overall = report.per_category["adversarial"], report.per_category["popular"], report.overall
    assert (adv.tp, adv.fp, adv.tn, adv.fn, adv.n) == (1, 1, 2, 1, 5)
    assert (adv.accuracy, adv.precision, adv.recall, adv.f1, adv.yes_ratio) == pytest.approx(
        (0.6, 0.5, 0.5, 0.5, 0.4))
    assert (pop.tp, pop.fp, pop.tn, pop.fn, pop.n) == (2, 1, 1, 1, 5)
    assert (pop.accuracy, pop.precision, pop.recall, pop.f1, pop.yes_ratio) == pytest.approx(
        (0.6, 2 / 3, 2 / 3, 2 / 3, 0.6))
    assert (overall.tp, overall.fp, overall.tn, overall.fn, overall.n) == (3, 2, 3, 2, 10)
    assert (overall.accuracy, overall.precision, overall.recall, overall.f1, overall.yes_ratio) == pytest.approx(
        (0.6, 0.6, 0.6, 0.6, 0.5))
    assert not (report.pairing.labels_without_answer or report.pairing.answers_without_label
                or report.pairing.ambiguous_answers)


def test_undefined_metrics_are_none_where_llava_divides_by_zero() -> None:
    all_no = score_counts(tp=0, fp=0, tn=3, fn=2)  # never says yes: precision 0/0
    assert all_no.precision is None and all_no.f1 is None
    assert all_no.recall == 0.0 and all_no.accuracy == pytest.approx(0.6) and all_no.yes_ratio == 0.0
    both_zero = score_counts(tp=0, fp=1, tn=0, fn=1)  # precision = recall = 0: F1 0/0
    assert both_zero.precision == 0.0 and both_zero.recall == 0.0 and both_zero.f1 is None
    empty = score_counts(0, 0, 0, 0)
    assert empty.n == 0 and empty.accuracy is None and empty.yes_ratio is None


def test_pairing_by_category_and_id_reports_unpaired_and_ambiguous(tmp_path: Path) -> None:
    labels = load_pope_labels([
        write_jsonl(tmp_path / "coco_pope_random.json",
                    [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"},
                     {"question_id": 7, "label": "no"}]),
        write_jsonl(tmp_path / "coco_pope_popular.json",
                    [{"question_id": 1, "label": "no"}, {"question_id": 2, "label": "yes"},
                     {"question_id": 9, "label": "yes"}]),
    ])
    rows = [(1, answer(1, "Yes", "random")), (2, answer(1, "Yes", "popular")),
            (3, answer(9, "No")),                 # no category, id 9 only in popular: paired
            (4, answer(2, "No")),                 # no category, id 2 in both: ambiguous
            (5, answer(3, "Yes", "random")),      # no such label
            (6, answer(4, "Yes"))]                # no category, no such id
    pairing = pair_answers(rows, labels)
    assert sorted(pairing.pairs) == [("popular", "no", "yes"), ("popular", "yes", "no"), ("random", "yes", "yes")]
    assert pairing.ambiguous_answers == [2]
    assert sorted(pairing.answers_without_label, key=str) == [("random", 3), (None, 4)]
    assert sorted(pairing.labels_without_answer) == [("popular", 2), ("random", 2), ("random", 7)]


def test_two_answers_to_one_label_is_an_error(tmp_path: Path) -> None:
    labels = load_pope_labels([write_jsonl(tmp_path / "coco_pope_random.json", [{"question_id": 1, "label": "yes"}])])
    with pytest.raises(DataError, match="second answer"):
        pair_answers([(1, answer(1, "Yes", "random")), (2, answer(1, "No"))], labels)


def test_cli_pope_prints_table_with_scores(pope_files) -> None:
    answers, labels = pope_files
    result = CliRunner().invoke(score, ["pope", "--answers", str(answers), "--labels", str(labels[0]),
                                        "--labels", str(labels[1])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    overall = next(line for line in lines if line.startswith("overall")).split()
    assert overall == ["overall", "10", "3", "2", "3", "2", "60.00", "60.00", "60.00", "60.00", "50.00"]
    popular = next(line for line in lines if line.startswith("popular")).split()
    assert popular[6:] == ["60.00", "66.67", "66.67", "66.67", "60.00"]
    assert "warning" not in result.output


def test_cli_pope_json_and_unpaired_report_on_stderr(pope_files) -> None:
    answers, labels = pope_files  # only the adversarial labels: the popular answers do not pair
    result = CliRunner().invoke(score, ["pope", "--answers", str(answers), "--labels", str(labels[0]), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["benchmark"] == "pope" and data["score"] == pytest.approx(50.0)  # mean F1 of one category
    assert data["parts"]["overall"]["n"] == 5 and data["parts"]["overall"]["f1"] == pytest.approx(0.5)
    assert list(data["parts"]["per_category"]) == ["adversarial"]
    assert data["counts"] == {"scored": 5, "missing": 0, "unpaired": 5, "unanswered": 0}
    assert "5 answer(s) of no question" in result.stderr and "popular/" in result.stderr


@pytest.mark.parametrize("problem", ["missing answers", "bad label", "bad json"])
def test_cli_bad_input_is_one_line_exit_1(tmp_path: Path, pope_files, problem: str) -> None:
    answers, labels = pope_files
    if problem == "missing answers":
        answers = tmp_path / "nope.jsonl"
    elif problem == "bad label":
        labels = [write_jsonl(tmp_path / "coco_pope_random.json", [{"question_id": 1, "label": "maybe"}])]
    else:
        answers.write_text('{"question_id": 1, "text": "Yes"}\n{not json\n')
    args = ["pope", "--answers", str(answers)] + [a for p in labels for a in ("--labels", str(p))]
    result = CliRunner().invoke(score, args)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert {"missing answers": "nope.jsonl", "bad label": "maybe", "bad json": ":2:"}[problem] in result.stderr


def sweep_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    labels = write_jsonl(tmp_path / "coco_pope_random.json",
                         [{"question_id": q, "label": lab} for q, lab in [(1, "yes"), (2, "no"), (3, "yes"), (4, "no")]])
    big = write_jsonl(tmp_path / "cls,patch:36,obj:101.jsonl",  # 4/4 right; tokens 120..150: mean 135
                      [answer(q, t, "random", tok, "cls,patch:36,obj:101")
                       for q, t, tok in [(1, "Yes", 120), (2, "No", 130), (3, "Yes", 140), (4, "No", 150)]])
    small = write_jsonl(tmp_path / "cls,patch:9,obj:5.jsonl",  # says yes to all: TP2 FP2, acc 50, F1 66.67
                        [answer(q, "Yes", "random", 15, "cls,patch:9,obj:5") for q in (1, 2, 3, 4)])
    return labels, big, small


def test_sweep_sorts_files_by_mean_visual_tokens(tmp_path: Path) -> None:
    labels, big, small = sweep_files(tmp_path)
    points = sweep([("pope", big), ("pope", small)], {"pope": [labels]}, {})
    assert [(p.spec, p.visual_tokens) for p in points] == [("cls,patch:9,obj:5", 15), ("cls,patch:36,obj:101", 135)]
    assert points[0].result.score == pytest.approx(200 / 3) and points[1].result.score == 100.0


def test_sweep_without_visual_tokens_names_the_file(tmp_path: Path) -> None:
    labels, _, _ = sweep_files(tmp_path)
    llava = write_jsonl(tmp_path / "llava.jsonl", [answer(1, "Yes")])
    with pytest.raises(DataError, match="llava.jsonl:1: no metadata.visual_tokens"):
        sweep([("pope", llava)], {"pope": [labels]}, {})


def test_cli_sweep_table_has_a_row_per_spec_and_a_column_per_benchmark(tmp_path: Path) -> None:
    """Two benchmarks: POPE at two budgets (a folder of answer files) and ScienceQA at one; the
    row of the spec without a ScienceQA file shows "-"; one plot per benchmark."""
    labels, big, small = sweep_files(tmp_path)
    pope_dir = tmp_path / "pope"
    pope_dir.mkdir()
    for f in (big, small):
        f.rename(pope_dir / f.name)
    sqa_questions = tmp_path / "llava_test_CQM-A.json"
    sqa_questions.write_text(json.dumps([
        {"id": "1", "image": "1/image.png", "conversations": [{"from": "human", "value": "<image>\nQ?\nA. x\nB. y"},
                                                              {"from": "gpt", "value": "B"}]},
        {"id": "2", "conversations": [{"from": "human", "value": "Q2?\nA. x\nB. y"}, {"from": "gpt", "value": "A"}]}]))
    sqa = write_jsonl(tmp_path / "sqa.jsonl", [  # IMG: 1/1 right; all: 1/2
        {**answer("1", "B", None, 140, "cls,patch:36,obj:101"), "prompt": "<image>\nQ?\nA. x\nB. y\n"
         "Answer with the option's letter from the given choices directly."},
        {**answer("2", "B", None, 0, "cls,patch:36,obj:101"), "prompt": "Q2?\nA. x\nB. y\n"
         "Answer with the option's letter from the given choices directly."}])
    plot = tmp_path / "sweep.png"
    result = CliRunner().invoke(score, ["sweep", f"pope={pope_dir}", f"sqa={sqa}", "--labels", f"pope={labels}",
                                        "--questions", f"sqa={sqa_questions}", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["tokens", "spec", "paper", "SQA-IMG", "POPE", "TFLOP", "q/s"]
    rows = [line.split() for line in lines[1:3]]
    # cls,patch:36,obj:101: POPE files mean 135, SQA file mean 70 -> 102.5 over the two files; the
    # filtered objects are not the paper's 138 (that is obj:101:all), cls,patch:9,obj:5 is its 15.
    # TFLOP without prompt_tokens: visual only (*), 2 x 6.607e9 x (135 + 70) / 2 = 1.35; x 15 = 0.20
    assert rows == [["102.5", "cls,patch:36,obj:101", "-", "100.0", "100.0", "1.35*", "not", "recorded"],
                    ["15", "cls,patch:9,obj:5", "15", "-", "66.7", "0.20*", "not", "recorded"]]
    assert lines[3].startswith("* visual tokens only") and "Vicuna-7B" in lines[4]
    # under it, the paper's figure of the one matching point: Table 1, 15 tokens, POPE 82.1
    assert lines[6] == "the paper's figures (Mask-LLaVA-7B); diff = masktok - paper"
    assert lines[7].split() == ["tokens", "spec", "benchmark", "masktok", "paper", "diff", "source"]
    assert lines[8].split() == ["15", "cls,patch:9,obj:5", "pope", "66.7", "82.1", "-15.4", "Table", "1"]
    assert len(lines) == 9
    for name in ("sweep-pope.png", "sweep-sqa.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_sweep_json_parses(tmp_path: Path) -> None:
    labels, big, small = sweep_files(tmp_path)
    result = CliRunner().invoke(score, ["sweep", f"pope={small}", f"pope={big}", "--labels", str(labels), "--json"])
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)["points"]
    assert [p["visual_tokens"] for p in points] == [15, 135]
    assert points[1]["parts"]["overall"]["tp"] == 2 and points[0]["parts"]["overall"]["fp"] == 2
    assert points[0]["paper"] == {"figure": 82.1, "table": "Table 1", "difference": pytest.approx(200 / 3 - 82.1)}
    assert points[1]["paper"] is None  # the filtered composition is none of the paper's settings


def test_sweep_shows_prefill_tflop_of_the_prompt_and_the_measured_rate_of_run_json(tmp_path: Path) -> None:
    """The 15-token file records prompt_tokens (100 each) and has a run.json (8 questions in
    4 s); the 135-token one neither: its row counts visual tokens only and says "not recorded"."""
    labels, big, small = sweep_files(tmp_path)
    rows = [json.loads(line) for line in small.read_text().splitlines()]
    write_jsonl(small, [{**r, "metadata": {**r["metadata"], "prompt_tokens": 100}} for r in rows])
    (tmp_path / "cls,patch:9,obj:5.run.json").write_text(json.dumps(
        {"questions": 8, "seconds": 4.0, "questions_per_s": 2.0, "device": "cpu", "dtype": "float32"}))
    config = tmp_path / "config.json"  # a 1-layer Llama: 2 x 8 x 8 (q, o) + 2 x 8 x 4 (k, v: 2 of 4 heads)
    config.write_text(json.dumps({"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 10}))
    n = (2 * 64 + 2 * 32) + 3 * 8 * 16 + 2 * 8 + 8 + 10 * 8  # + MLP + 2 norms, final norm, LM head = 688
    result = CliRunner().invoke(score, ["sweep", f"pope={big}", f"pope={small}", "--labels", str(labels),
                                        "--lm-config", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["lm"]["prefill_parameters"] == n
    small_point, big_point = out["points"]
    assert small_point["prefill_tflop"] == pytest.approx(2 * n * 100 / 1e12)
    assert (small_point["prefill_tokens"], small_point["questions_per_s"]) == ("prompt", 2.0)
    assert small_point["run"]["device"] == "cpu"
    assert big_point["prefill_tflop"] == pytest.approx(2 * n * 135 / 1e12)
    assert (big_point["prefill_tokens"], big_point["questions_per_s"], big_point["run"]) == ("visual", None, None)
    table = CliRunner().invoke(score, ["sweep", f"pope={big}", f"pope={small}", "--labels", str(labels)])
    assert table.exit_code == 0, table.output
    by_spec = {line.split()[1]: line.split()[-3:] for line in table.stdout.splitlines()[1:3]}
    # 7B: 2 x 6,607,343,616 x 100 = 1.32 TFLOP; 8 questions / 4 s
    assert by_spec == {"cls,patch:9,obj:5": ["66.7", "1.32", "2.0"], "cls,patch:36,obj:101": ["1.78*", "not", "recorded"]}


def test_a_run_json_without_a_rate_is_one_line(tmp_path: Path) -> None:
    labels, _, small = sweep_files(tmp_path)
    (tmp_path / "cls,patch:9,obj:5.run.json").write_text(json.dumps({"questions": 8}))
    result = CliRunner().invoke(score, ["sweep", f"pope={small}", "--labels", str(labels)])
    assert result.exit_code == 1 and "run.json: no numeric questions_per_s" in result.stderr


def test_the_sweep_shows_the_13b_figures_of_table_4_and_the_paper_s_138(tmp_path: Path) -> None:
    """At 138 tokens (cls,patch:36,obj:101:all) the 7B model has no POPE figure (Table 1 has no
    138 row, the appendix none for POPE); the 13B's Table 4 has 85.5."""
    labels, _, _ = sweep_files(tmp_path)
    spec = "cls,patch:36,obj:101:all"
    full = write_jsonl(tmp_path / f"{spec}.jsonl", [answer(q, t, "random", 138, spec)
                                                    for q, t in [(1, "Yes"), (2, "Yes"), (3, "Yes"), (4, "No")]])
    assert sweep([("pope", full)], {"pope": [labels]}, {})[0].paper is None
    (point,) = sweep([("pope", full)], {"pope": [labels]}, {}, paper_model="13b")
    assert (point.paper.value, point.paper.table) == (85.5, "Table 4")
    assert point.difference == pytest.approx(point.result.score - 85.5)
    result = CliRunner().invoke(score, ["sweep", f"pope={full}", "--labels", str(labels), "--paper-model", "13b"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].split()[:6] == ["138", spec, "pope", format_score(point.result.score),
                                                          "85.5", f"{point.result.score - 85.5:+.1f}"]


# LLaVA's POPE layout: one question file whose ids are the label ids + 10,000,000 (random);
# answers without a category; labels paired by position within a category (eval_pope.py).
def _llava_pope(tmp_path: Path, drop_answer: int | None = None) -> tuple[Path, Path, Path]:
    items = [(1, "a.jpg", "Is there a dog in the image?", "yes", "Yes"),
             (2, "a.jpg", "Is there a cat in the image?", "no", "No"),
             (3, "b.jpg", "Is there a car in the image?", "yes", "No"),     # FN
             (4, "b.jpg", "Is there a bus in the image?", "no", "Yes, a bus.")]  # FP
    labels = write_jsonl(tmp_path / "coco_pope_random.json",
                         [{"question_id": q, "image": im, "text": t, "label": lab} for q, im, t, lab, _ in items])
    suffix = "\nAnswer the question using a single word or phrase."
    questions = write_jsonl(tmp_path / "llava_pope_test.jsonl",
                            [{"question_id": 10_000_000 + q, "image": im, "text": t + suffix, "category": "random"}
                             for q, im, t, _, _ in items])
    answers = write_jsonl(tmp_path / "llava_answers.jsonl",
                          [{"question_id": 10_000_000 + q, "prompt": t + suffix, "text": a, "answer_id": "x",
                            "model_id": "llava", "metadata": {}} for q, _, t, _, a in items if q != drop_answer])
    return answers, questions, labels


def test_pope_pairs_llavas_answers_through_the_question_file_by_position_in_category(tmp_path: Path) -> None:
    answers, questions, labels = _llava_pope(tmp_path)
    result = score_pope(answers, [labels], questions)
    rnd = result.parts["per_category"]["random"]
    assert (rnd["tp"], rnd["fp"], rnd["tn"], rnd["fn"]) == (1, 1, 1, 1)
    assert result.score == pytest.approx(50.0) and result.missing == [] and result.unpaired == []
    with pytest.raises(DataError, match="no answer .* pairs"):  # without the question file nothing pairs
        score_pope(answers, [labels])


def test_pope_missing_answer_counts_wrong_and_shifts_nothing(tmp_path: Path) -> None:
    """eval_pope.py pairs by position: a dropped answer 2 would pair answer 3 with label 2."""
    answers, questions, labels = _llava_pope(tmp_path, drop_answer=2)
    rnd = score_pope(answers, [labels], questions).parts["per_category"]["random"]
    assert (rnd["tp"], rnd["fp"], rnd["tn"], rnd["fn"]) == (1, 2, 0, 1)  # label 2 ("no") counted as a "yes"
    assert score_pope(answers, [labels], questions).missing == [("random", 2)]


def test_pope_labels_of_another_split_are_refused(tmp_path: Path) -> None:
    answers, questions, labels = _llava_pope(tmp_path)
    other = write_jsonl(tmp_path / "coco_pope_popular.json", [{"question_id": 1, "label": "yes"}])
    with pytest.raises(DataError, match="0 questions of category 'popular'"):
        score_pope(answers, [other], questions)
    shuffled = write_jsonl(tmp_path / "x" / "coco_pope_random.json" if (tmp_path / "x").mkdir() is None else None,
                           [{"question_id": q, "image": "b.jpg", "text": "Is there a dog in the image?", "label": "yes"}
                            for q in (1, 2, 3, 4)])
    with pytest.raises(DataError, match="is not label 1's"):
        score_pope(answers, [shuffled], questions)


def test_the_paper_module_holds_table_1s_57_token_row() -> None:
    """Issue 38's quotation of Table 1 (7B, 57 tokens), each figure naming its table."""
    from masktok.evaluate.paper import PAPER_FIGURES, paper_figure

    row = PAPER_FIGURES["7b"][57]
    assert {k: f.value for k, f in row.items()} == {"vqav2": 74.8, "gqa": 60.6, "pope": 83.7, "mme": 1415.0,
                                                    "mmbench": 63.1, "sqa": 68.8, "vizwiz": 51.8, "mmvet": 24.9}
    assert {f.table for f in row.values()} == {"Table 1"}
    assert paper_figure("7b", None, "pope") is None and paper_figure("7b", 36, "pope") is None
    assert paper_figure("13b", 57, "vqav2") is None  # Table 4 has no VQAv2 column


def test_the_vqa_column_is_vqav2_or_vizwiz_by_its_labels(tmp_path: Path) -> None:
    """`vqa` scores VQAv2 and VizWiz; the paper's figure is chosen by the labels it scored."""
    spec = "cls,patch:36,obj:20"  # the paper's 57
    labels = tmp_path / "v2_mscoco_val2014_annotations.json"
    # answer dicts with VQAv2's distinct answer_ids (vqaEval leaves equal dicts out together)
    labels.write_text(json.dumps({"annotations": [
        {"question_id": q, "answers": [{"answer": "cat", "answer_id": i} for i in range(1, 11)]} for q in (1, 2)]}))
    answers = write_jsonl(tmp_path / f"{spec}.jsonl", [answer(1, "cat", None, 57, spec), answer(2, "dog", None, 57, spec)])
    (point,) = sweep([("vqa", answers)], {"vqa": [labels]}, {})
    assert point.result.score == 50.0 and (point.paper.value, point.paper.table) == (74.8, "Table 1")
    assert point.difference == pytest.approx(50.0 - 74.8)
