"""TextVQA scores of LLaVA answer files, as LLaVA-1.5's ``eval_textvqa.py``: VQA accuracy with
m4c_evaluator.py's EvalAI normalisation (vqa.py), an answer paired with its label by image id
and the question read back from its prompt.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..schemas.errors import DataError
from .benchmarks import Benchmark, Input
from .scoring import BenchScore, id_key, load_json, read_answer_file
from .vqa import VqaLabel, format_vqa_table, human_answers, score_keyed


def textvqa_question(prompt: str | None) -> str:
    """The question in a TextVQA prompt, lowercased, as eval_textvqa.py's ``prompt_processor``:
    after "Question: " of an "OCR tokens: ..." prompt, else the first line (the second when the
    3-line prompt starts with "Reference OCR token:"). DataError for another shape of prompt."""
    prompt = prompt if isinstance(prompt, str) else ""
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise DataError(f"TextVQA prompt without 'Question: ... Short answer:': {prompt[:60]!r}")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(prompt.split("\n")) == 3:
        lines = prompt.split("\n")
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(prompt.split("\n")) == 2:
        question = prompt.split("\n")[0]
    else:
        raise DataError(f"not a TextVQA prompt of LLaVA (question, OCR tokens, instruction): {prompt[:60]!r}")
    return question.lower()


def score_textvqa(answers_path: Path, labels_path: Path) -> BenchScore:
    """TextVQA accuracy (%) against ``TextVQA_0.5.1_val.json``, as LLaVA's eval_textvqa.py: an
    answer pairs with the label of (image_id = its question_id, question = :func:`textvqa_question`
    of its prompt); where two labels share that key the last one counts, as there."""
    data = load_json(labels_path)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "image_id" in r and isinstance(
            r.get("question"), str) for r in rows):
        raise DataError(f"{labels_path}: not TextVQA annotations (expected {{\"data\": [{{\"image_id\", "
                        "\"question\", \"answers\", ...}]})")
    labels = {}
    for row in rows:
        key = (id_key(row["image_id"]), row["question"].lower())
        human = human_answers(row.get("answers"), labels_path, key)
        labels[key] = VqaLabel((row["image_id"], row["question"]), human)
    answers = read_answer_file(answers_path)
    keyed = []
    for answer in answers:
        question = textvqa_question(answer.prompt)
        keyed.append((answer, (id_key(answer.question_id), question), (answer.question_id, question)))
    return score_keyed("textvqa", labels, keyed, answers_path, labels_path)


ENTRIES = (
    Benchmark("textvqa", "TextVQA",
              "TextVQA: VQA accuracy (%) with m4c_evaluator.py's EvalAI normalisation, as eval_textvqa.py.",
              lambda answers, labels, questions: score_textvqa(answers, labels[0]), format_vqa_table,
              labels=Input("required", "TextVQA's TextVQA_0.5.1_val.json.")),
)
