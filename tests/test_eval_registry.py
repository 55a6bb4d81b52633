"""Adding a benchmark = one new module + one registry line (docs/eval.md, "Adding a benchmark").

A toy benchmark is written as a module of its own (its question format, prompt, rule, scorer
and upload), registered by one line in evaluate/benchmarks.REGISTRY, and then has
``masktok answer``, ``masktok score toy``, ``masktok score sweep`` and ``masktok submission
toy`` with no other edit."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.evaluate import benchmarks

TOY = '''
"""A toy benchmark: questions in a JSON list (*.toy.json), exact-match scoring."""

import json
from pathlib import Path

from masktok.evaluate.benchmarks import Benchmark, Input, QuestionFormat, Submission
from masktok.evaluate.questions import Question
from masktok.evaluate.scoring import BenchScore, read_answer_file


def read_toy(path, lang=None):
    items = json.loads(Path(path).read_text())
    return [Question(i, q["id"], q["image"], "Toy: " + q["question"], q["question"]) for i, q in enumerate(items)]


def score_toy(answers, labels, questions):
    gold = json.loads(Path(labels[0]).read_text())
    got = {str(a.question_id): a.text.strip().lower() for a in read_answer_file(answers)}
    right = sum(got.get(qid) == text for qid, text in gold.items())
    return BenchScore("toy", 100 * right / len(gold), scored=len(gold),
                      missing=[qid for qid in gold if qid not in got])


def write_toy(answers, questions, out):
    texts = [a.text for a in read_answer_file(answers)]
    Path(out).write_text(json.dumps(texts))
    return len(texts), 0, 0


ENTRIES = (
    QuestionFormat("toy", 3, lambda path: Path(path).name.endswith(".toy.json"), read_toy),
    Benchmark("toy", "Toy", "Toy: exact-match accuracy (%).", score_toy, lambda r: f"toy accuracy {r.score:.1f}",
              labels=Input("required", "The toy's gold answers (JSON).")),
    Submission("toy", "The toy's upload.", "Where the upload goes.", write_toy),
)
'''


@pytest.fixture
def toy_registered(tmp_path, monkeypatch):
    """The toy module as masktok.evaluate.toy, and its one registry line."""
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("masktok.evaluate.toy", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "masktok.evaluate.toy", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(benchmarks, "REGISTRY", (*benchmarks.REGISTRY, "toy"))


def _answers(path: Path, texts: dict[str, str], spec: str = "cls,patch:9,obj:5", tokens: int = 15) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question_id": qid, "prompt": "p", "text": text,
                                        "metadata": {"tokens": spec, "visual_tokens": tokens}}) + "\n"
                            for qid, text in texts.items()))
    return path


def test_an_unregistered_benchmark_is_no_command():
    result = CliRunner().invoke(main, ["score", "toy", "--help"])
    assert result.exit_code != 0 and "No such command 'toy'" in result.output


def test_score_and_submission_come_from_the_registry(toy_registered, tmp_path):
    gold = tmp_path / "gold.json"
    gold.write_text(json.dumps({"1": "cat", "2": "dog", "3": "red", "4": "two"}))
    answers = _answers(tmp_path / "a.jsonl", {"1": "Cat", "2": "dog ", "3": "blue"})
    runner = CliRunner()
    listed = runner.invoke(main, ["score", "--help"]).output
    assert "toy" in listed and "Toy: exact-match accuracy" in listed
    result = runner.invoke(main, ["score", "toy", "--answers", str(answers), "--labels", str(gold), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["score"] == 50.0 and out["counts"] == {"scored": 4, "missing": 1, "unpaired": 0, "unanswered": 0}
    assert "1 question(s) without an answer" in result.stderr
    assert runner.invoke(main, ["score", "toy", "--answers", str(answers), "--labels", str(gold)]).stdout == \
        "toy accuracy 50.0\n"
    missing = runner.invoke(main, ["score", "toy", "--answers", str(answers)])
    assert missing.exit_code == 2 and "--labels" in missing.output  # the entry's Input made it required
    upload = runner.invoke(main, ["submission", "toy", "--answers", str(answers), "--out", str(tmp_path / "u.json")])
    assert upload.exit_code == 0 and upload.stdout == f"wrote {tmp_path / 'u.json'} (3 questions)\n"
    assert json.loads((tmp_path / "u.json").read_text()) == ["Cat", "dog ", "blue"]


def test_the_sweep_takes_a_registered_benchmark(toy_registered, tmp_path):
    gold = tmp_path / "gold.json"
    gold.write_text(json.dumps({"1": "cat", "2": "dog"}))
    _answers(tmp_path / "toy" / "big.jsonl", {"1": "cat", "2": "dog"}, "cls,patch:36,obj:101", 138)
    _answers(tmp_path / "toy" / "small.jsonl", {"1": "cat", "2": "cow"}, "cls,patch:9,obj:5", 15)
    result = CliRunner().invoke(main, ["score", "sweep", f"toy={tmp_path / 'toy'}", "--labels", f"toy={gold}"])
    assert result.exit_code == 0, result.output
    rows = [line.split()[:4] for line in result.stdout.splitlines()]
    assert rows[:3] == [["tokens", "spec", "paper", "Toy"], ["138", "cls,patch:36,obj:101", "-", "100.0"],
                        ["15", "cls,patch:9,obj:5", "15", "50.0"]]
    assert len(rows) == 5  # the TFLOP notes under it; no figure of the paper for toy: no table
    assert "toy" in CliRunner().invoke(main, ["score", "sweep", "--help"]).output


def test_answer_reads_a_registered_question_format(toy_registered, tiny_trainer, tmp_path):
    from masktok.trainer.runtime import TrainConfig
    from masktok.trainer.train import train

    run = tiny_trainer["root"] / "toy-run"
    if not (run / "latest").exists():
        train(TrainConfig(stage=2, cache=tiny_trainer["job"], data=tiny_trainer["data"], llm=tiny_trainer["llm"],
                          out=run, max_steps=2, batch_size=4, warmup_ratio=0.0, tokens="cls,patch:9,obj:5"))
    questions = tmp_path / "q.toy.json"
    questions.write_text(json.dumps([{"id": "a", "image": "img/001.jpg", "question": "What is it?"},
                                     {"id": "b", "image": "img/002.jpg", "question": "Which colour?"}]))
    result = CliRunner().invoke(main, ["answer", "--checkpoint", str(run), "--cache", str(tiny_trainer["job"]),
                                       "--questions", str(questions), "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "out" / "cls,patch:9,obj:5.jsonl").read_text().splitlines()]
    assert [(a["question_id"], a["prompt"], a["metadata"]["line"]) for a in lines] == \
        [("a", "What is it?", 0), ("b", "Which colour?", 1)]
    from masktok.evaluate.questions import read_question_file

    qfile = read_question_file(questions)
    assert (qfile.kind, qfile.max_new_tokens, qfile.questions[1].text) == ("toy", 3, "Toy: Which colour?")
