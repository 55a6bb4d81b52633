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
Questions whose image is not in the cache, failed or is pending are reported and get no
line. Greedy answers (temperature 0) do not depend on the batch size (transformers'
``generate`` over left-padded prompts, trainer/model.py). ``max_new_tokens`` defaults to
LLaVA-1.5's for the file's kind (questions.MAX_NEW_TOKENS).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..trainer.compose import compose
from ..trainer.consolidate import load_checkpoint_model
from ..trainer.generate import image_status, open_cache, prompt_ids
from ..trainer.scaling import CacheStats
from ..trainer.token_spec import parse_spec
from .questions import Question, answer_key, line_key, read_question_file


@dataclass
class AnswerSummary:
    """Per spec: questions answered now and kept from before; the skipped questions."""

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
            done[line_key(answer["metadata"]["line"], answer["question_id"])] = answer
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def _write_in_order(path: Path, questions: list[Question], done: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for q in questions:
            if (answer := done.get(answer_key(q))) is not None:
                fh.write(json.dumps(answer) + "\n")
    os.replace(tmp, path)


def answer(checkpoint: Path, cache: Path, questions_file: Path, specs: list[str], out: Path, batch_size: int = 8,
           temperature: float = 0.0, max_new_tokens: int | None = None, device: str = "cpu",
           model_id: str | None = None, seed: int = 0, lang: str | None = None,
           echo: Callable[[str], None] = lambda s: None, progress: bool = False) -> AnswerSummary:
    """Answer ``questions_file`` once per token spec into ``out`` (see the module docstring)."""
    parsed = [parse_spec(s) for s in specs]  # bad specs fail before any model is loaded
    qfile = read_question_file(questions_file, lang)
    questions = qfile.questions
    max_new_tokens = max_new_tokens or qfile.max_new_tokens
    model, tokenizer, state, path = load_checkpoint_model(checkpoint)
    model.to(device).eval()
    model_id = model_id or Path(checkpoint).resolve().name
    stats = CacheStats.from_dict(state["stats"]) if state.get("stats") else None
    summary = AnswerSummary(max_new_tokens=max_new_tokens)
    images = open_cache(cache, state["dims"], parsed)
    answerable = []
    for q in questions:
        if q.image is None or (why := image_status(images, q.image)) is None:
            answerable.append(q)
        else:
            summary.skipped.setdefault(f"image {why}", []).append(q.question_id)
    for why, ids in summary.skipped.items():
        echo(f"skipped {len(ids)} question(s): {why} (e.g. question_id {ids[0]!r})")
    Path(out).mkdir(parents=True, exist_ok=True)
    for spec in parsed:
        target = spec_file(out, str(spec))
        done = read_answers(target)
        if target.is_file():  # in question order, without a line a crash may have cut
            _write_in_order(target, questions, done)
        todo = [q for q in answerable if answer_key(q) not in done]
        summary.kept[str(spec)] = sum(answer_key(q) in done for q in answerable)
        echo(f"{spec}: {len(todo)} to answer, {summary.kept[str(spec)]} already answered -> {target}")
        summary.min_margin[str(spec)] = _answer_spec(model, tokenizer, state, images, stats, spec, todo, target,
                                                     done, batch_size, temperature, max_new_tokens, model_id, seed,
                                                     progress)
        _write_in_order(target, questions, done)
        summary.answered[str(spec)], summary.files[str(spec)] = len(todo), str(target)
    return summary


def answer_line(q: Question, text: str, spec: Any, visual_tokens: int, model_id: str) -> dict[str, Any]:
    """One line of LLaVA's answer format for ``q`` (the MMBench fields after ``prompt``, as
    model_vqa_mmbench.py orders them)."""
    meta: dict[str, Any] = {"tokens": str(spec), "visual_tokens": visual_tokens, "line": q.line}
    if q.category is not None:
        meta["category"] = q.category
    line: dict[str, Any] = {"question_id": q.question_id}
    if "round_id" in q.extra:
        line["round_id"] = q.extra["round_id"]
    line.update({"prompt": q.prompt, "text": text})
    line.update({k: v for k, v in q.extra.items() if k != "round_id"})
    line.update({"answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}/{spec}/{q.line}/{q.question_id}").hex[:22],
                 "model_id": model_id, "metadata": meta})
    return line


def _answer_spec(model: Any, tokenizer: Any, state: dict[str, Any], images: Any, stats: CacheStats | None,
                 spec: Any, todo: list[Question], target: Path, done: dict[str, dict[str, Any]], batch_size: int,
                 temperature: float, max_new_tokens: int, model_id: str, seed: int, progress: bool) -> float:
    """Answer ``todo``, appending to ``target``; returns the smallest greedy logit gap."""
    from tqdm import tqdm

    margin = float("inf")
    torch.manual_seed(seed)
    bar = tqdm(total=len(todo), desc=str(spec), unit="q", disable=not progress)
    with target.open("a", encoding="utf-8") as fh:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            visual = [None if q.image is None else
                      compose(images[images.row_of(q.image)], spec, state["scaling"], stats) for q in batch]
            prompts = [prompt_ids(state["stage"], tokenizer, q.text, has_image=q.image is not None) for q in batch]
            generated = model.generate_batch(prompts, visual, max_new_tokens, tokenizer.eos_token_id,
                                             tokenizer.pad_token_id, temperature)
            margin = min([margin, *generated.margins])
            for q, v, ids in zip(batch, visual, generated.tokens):
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                line = answer_line(q, text, spec, 0 if v is None else len(v), model_id)
                fh.write(json.dumps(line) + "\n")
                done[answer_key(q)] = line
            fh.flush()
            bar.update(len(batch))
    bar.close()
    return margin
