"""Answer a LLaVA-1.5 benchmark question file from the cache, at one or more token budgets.

Input: any question file evaluate/questions.py reads (LLaVA's JSON Lines, ScienceQA's JSON
list, MMBench's TSV), each question's image an image id of the cache (text-only ScienceQA
questions are answered without visual tokens). Output, per token spec: ``OUT/<spec>.jsonl`` in
LLaVA's answer format, ``{"question_id", "prompt", "text", "answer_id", "model_id",
"metadata"}`` (MMBench also ``round_id``, ``options``, ``option_char``, as
model_vqa_mmbench.py writes them), one line per answered question **in the question file's
order**, so LLaVA's own converters and scorers read the files unchanged. ``metadata`` holds
the spec, the number of visual tokens the model saw, the question's category and its line
(0-based position among the file's questions).

A rerun resumes: the questions already answered in ``<spec>.jsonl`` are kept, the others
answered (answers are appended as they come, then the file is rewritten in question order
once complete). Answers are keyed by line, not by id: MME and TextVQA repeat ids by design.
A question whose image is not in the cache, failed or is pending is reported and still gets
its line, in its place: an empty ``text`` and ``metadata.unanswered`` saying why (LLaVA's
keys unchanged, ``visual_tokens`` 0), so scorers that pair answers by position (LLaVA's
eval_pope.py) stay aligned; it is scored as the empty answer it is, and ``masktok score``
says how many there were. A rerun asks such a question again (its image may be done by
then). Greedy answers (temperature 0) do not depend on the batch size (transformers'
``generate`` over left-padded prompts, trainer/model/mask_llava.py). ``max_new_tokens`` defaults to
LLaVA-1.5's for the benchmark (questions.LOADER_MAX_NEW_TOKENS, or the QuestionFormat of the
benchmark that reads the file: the one ``benchmark`` names, else the one that recognises the
file by its content).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..inference.cache import image_status, open_cache
from ..inference.generation import GenerationModel, Request, generate_answers, load_generation_model
from ..trainer.visual.token_spec import TokenSpec, parse_spec
from .questions import Question, answer_key, line_key, read_question_file
from .scoring import UNANSWERED


@dataclass
class AnswerSummary:
    """Per spec: questions answered now and kept from before; the questions answered empty
    because of their image (``skipped``: the image's state -> question ids)."""

    answered: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[Any]] = field(default_factory=dict)  # reason -> question ids
    files: dict[str, str] = field(default_factory=dict)
    min_margin: dict[str, float] = field(default_factory=dict)  # greedy: the nearest two best logits came
    max_new_tokens: int = 0


def spec_file(out: Path, spec: str) -> Path:
    """``OUT/<spec>.jsonl`` (the canonical spec string: ``cls,patch:36,obj:5.jsonl``)."""
    return Path(out) / f"{spec}.jsonl"


def read_answers(path: Path) -> dict[str, dict[str, Any]]:
    """Complete answer lines of a file written by :func:`answer`, by :func:`answer_key` (a line
    cut by a crash, or one without ``metadata.line``, is dropped and answered again)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            answer = json.loads(line)
            if UNANSWERED not in answer["metadata"]:  # asked again: the image may be there now
                done[line_key(answer["metadata"]["line"], answer["question_id"])] = answer
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def _write_in_order(path: Path, questions: list[Question], done: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for q in questions:
                if (answer := done.get(answer_key(q))) is not None:
                    fh.write(json.dumps(answer) + "\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk: the answers file stays as it was, no temp file
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Decoding:
    """How every batch of a run is decoded and labelled."""

    batch_size: int
    temperature: float
    max_new_tokens: int
    model_id: str
    progress: bool


def answer(checkpoint: Path, cache: Path, questions_file: Path, specs: list[str], out: Path, batch_size: int = 8,
           temperature: float = 0.0, max_new_tokens: int | None = None, device: str = "cpu",
           model_id: str | None = None, seed: int = 0, lang: str | None = None, benchmark: str | None = None,
           echo: Callable[[str], None] = lambda s: None, progress: bool = False) -> AnswerSummary:
    """Answer ``questions_file`` once per token spec into ``out`` (see the module docstring)."""
    parsed = [parse_spec(s) for s in specs]  # bad specs fail before any model is loaded
    qfile = read_question_file(questions_file, lang, benchmark)
    questions = qfile.questions
    decoding = Decoding(batch_size, temperature, max_new_tokens or qfile.max_new_tokens,
                        model_id or Path(checkpoint).resolve().name, progress)
    gm = load_generation_model(checkpoint, device)
    summary = AnswerSummary(max_new_tokens=decoding.max_new_tokens)
    images = open_cache(cache, gm.dims, parsed)
    answerable, unanswerable = [], {}
    for q in questions:
        if q.image is None or (why := image_status(images, q.image)) is None:
            answerable.append(q)
        else:
            unanswerable[answer_key(q)] = (q, f"image {why}")
            summary.skipped.setdefault(f"image {why}", []).append(q.question_id)
    for why, ids in summary.skipped.items():
        echo(f"{len(ids)} question(s) answered empty: {why} (e.g. question_id {ids[0]!r})")
    Path(out).mkdir(parents=True, exist_ok=True)
    for spec in parsed:
        target = spec_file(out, str(spec))
        done = read_answers(target)
        if target.is_file():  # in question order, without a line a crash may have cut
            _write_in_order(target, questions, done)
        todo = [q for q in answerable if answer_key(q) not in done]
        summary.kept[str(spec)] = sum(answer_key(q) in done for q in answerable)
        echo(f"{spec}: {len(todo)} to answer, {summary.kept[str(spec)]} already answered -> {target}")
        torch.manual_seed(seed)
        summary.min_margin[str(spec)] = _answer_spec(gm, images, spec, todo, target, done, decoding)
        for key, (q, why) in unanswerable.items():
            done[key] = answer_line(q, "", spec, 0, decoding.model_id, unanswered=why)
        _write_in_order(target, questions, done)
        summary.answered[str(spec)], summary.files[str(spec)] = len(todo), str(target)
    return summary


def answer_line(q: Question, text: str, spec: Any, visual_tokens: int, model_id: str,
                unanswered: str | None = None) -> dict[str, Any]:
    """One line of LLaVA's answer format for ``q`` (the MMBench fields after ``prompt``, as
    model_vqa_mmbench.py orders them); ``unanswered``: why the model was not asked (the
    line's ``metadata.unanswered``, its text empty)."""
    meta: dict[str, Any] = {"tokens": str(spec), "visual_tokens": visual_tokens, "line": q.line}
    if q.category is not None:
        meta["category"] = q.category
    if unanswered is not None:
        meta[UNANSWERED] = unanswered
    line: dict[str, Any] = {"question_id": q.question_id}
    if "round_id" in q.extra:
        line["round_id"] = q.extra["round_id"]
    line.update({"prompt": q.prompt, "text": text})
    line.update({k: v for k, v in q.extra.items() if k != "round_id"})
    line.update({"answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}/{spec}/{q.line}/{q.question_id}").hex[:22],
                 "model_id": model_id, "metadata": meta})
    return line


def _answer_spec(gm: GenerationModel, images: Any, spec: TokenSpec, todo: list[Question], target: Path,
                 done: dict[str, dict[str, Any]], decoding: Decoding) -> float:
    """Answer ``todo`` in batches, appending to ``target`` (and ``done``); returns the smallest
    greedy logit gap."""
    from tqdm import tqdm

    margin = float("inf")
    bar = tqdm(total=len(todo), desc=str(spec), unit="q", disable=not decoding.progress)
    with target.open("a", encoding="utf-8") as fh:
        for start in range(0, len(todo), decoding.batch_size):
            batch = todo[start:start + decoding.batch_size]
            requests = [Request(None if q.image is None else images[images.row_of(q.image)], q.text) for q in batch]
            answers = generate_answers(gm, requests, spec, decoding.max_new_tokens, decoding.temperature)
            margin = min([margin, *answers.margins])
            for q, text, seen in zip(batch, answers.texts, answers.visual_tokens):
                line = answer_line(q, text, spec, seen, decoding.model_id)
                fh.write(json.dumps(line) + "\n")
                done[answer_key(q)] = line
            fh.flush()
            bar.update(len(batch))
    bar.close()
    return margin
