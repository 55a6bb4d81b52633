"""One ``answer`` run as the driver sees it: the plan, what a resume keeps, the batches still
to answer, and the only writer of the answer files (evaluate/answer.py calls it in order:
plan, check_images, resume, answer_all)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from ..inference.cache import image_status, open_cache
from ..inference.generation import Prompter, Request
from ..schemas.errors import DataError
from ..trainer.visual.token_spec import parse_spec
from .answer_files import append_lines, read_answers, read_run, run_file, spec_file, write_in_order, write_run
from .answer_plan import AnswerPlan, plan_batches, plan_file, settle_plan
from .answer_replicas import Done, Work
from .questions import Question, answer_key
from .scoring import UNANSWERED


@dataclass
class AnswerSummary:
    """Per spec: questions answered now and kept from before, planned batches answered now;
    the questions answered empty because of their image (``skipped``: the image's state ->
    question ids); the decoding steps run (x batch rows) and those the answers needed."""

    answered: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[Any]] = field(default_factory=dict)  # reason -> question ids
    files: dict[str, str] = field(default_factory=dict)
    min_margin: dict[str, float] = field(default_factory=dict)  # greedy: the nearest two best logits came
    steps: dict[str, int] = field(default_factory=dict)
    answer_steps: dict[str, int] = field(default_factory=dict)
    max_new_tokens: int = 0
    workers: int = 1


def answer_line(q: Question, text: str, spec: Any, visual_tokens: int, model_id: str,
                unanswered: str | None = None, where: tuple[str, str] | None = None,
                prompt_tokens: int | None = None) -> dict[str, Any]:
    """One line of LLaVA's answer format for ``q`` (the MMBench fields after ``prompt``, as
    model_vqa_mmbench.py orders them); ``unanswered``: why the model was not asked (the
    line's ``metadata.unanswered``, its text empty); ``where``: the (device, dtype) that answered;
    ``prompt_tokens``: the tokens the LM prefilled, text and visual (``score sweep``'s TFLOP)."""
    meta: dict[str, Any] = {"tokens": str(spec), "visual_tokens": visual_tokens, "line": q.line}
    if prompt_tokens is not None:
        meta["prompt_tokens"] = prompt_tokens
    if q.category is not None:
        meta["category"] = q.category
    if unanswered is not None:
        meta[UNANSWERED] = unanswered
    if where is not None:
        meta["device"], meta["dtype"] = where
    line: dict[str, Any] = {"question_id": q.question_id}
    if "round_id" in q.extra:
        line["round_id"] = q.extra["round_id"]
    line.update({"prompt": q.prompt, "text": text})
    line.update({k: v for k, v in q.extra.items() if k != "round_id"})
    line.update({"answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}/{spec}/{q.line}/{q.question_id}").hex[:22],
                 "model_id": model_id, "metadata": meta})
    return line


class AnswerRun:
    """The driver's state for one run over ``questions`` at the specs ``names``."""

    def __init__(self, names: list[str], questions: list[Question], out: Path, max_new_tokens: int,
                 temperature: float, model_id: str) -> None:
        self.names, self.questions, self.out = names, questions, Path(out)
        self.max_new_tokens, self.temperature, self.model_id = max_new_tokens, temperature, model_id
        self.by_line = {q.line: q for q in questions}
        self.summary = AnswerSummary(max_new_tokens=max_new_tokens)
        self.where: tuple[str, str] = ("cpu", "float32")
        self.batches: list[list[int]] = []
        self.settings: dict[str, Any] = {}
        self.unanswerable: dict[int, str] = {}  # line -> why (its image)
        self.row_of: dict[int, int] = {}  # line -> cache row
        self.done: dict[str, dict[str, dict[str, Any]]] = {}  # spec -> answer key -> line
        self.unfinished: dict[str, set[int]] = {}  # spec -> plan indices still to answer
        self.seconds: dict[str, float] = {}  # spec -> model seconds before this run (same plan)
        self.model_lines: dict[str, int] = {}  # spec -> lines the model answered (not empty ones)
        self.files: dict[str, IO[str]] = {}

    def plan(self, prompter: Prompter, batch_size: int, settings: dict[str, Any]) -> None:
        """Settle every spec's plan (written now, or the one a previous run wrote under the
        same settings; DataError under others)."""
        lengths = {q.line: prompter.length(q.text, q.image is not None) for q in self.questions}
        self.batches = plan_batches(self.questions, lambda q: lengths[q.line], batch_size)
        self.settings = settings
        for spec in self.names:
            path = plan_file(self.out, spec)
            fresh = not path.is_file()
            if settle_plan(path, AnswerPlan(spec, settings, self.batches)).batches != self.batches:
                raise DataError(f"{path} was planned by another masktok version: give another --out")
            self.seconds[spec] = 0.0 if fresh else float(read_run(run_file(self.out, spec)).get("seconds", 0.0))

    def check_images(self, cache: Path, prompter: Prompter, echo: Callable[[str], None]) -> Any:
        """The cache (checked against the checkpoint and specs), and which questions have no
        usable image: they get an empty line, marked, in their place."""
        images = open_cache(cache, prompter.state["dims"], [parse_spec(n) for n in self.names])
        for q in self.questions:
            if q.image is None:
                continue
            if (why := image_status(images, q.image)) is None:
                self.row_of[q.line] = images.row_of(q.image)
            else:
                self.unanswerable[q.line] = f"image {why}"
                self.summary.skipped.setdefault(f"image {why}", []).append(q.question_id)
        for why, ids in self.summary.skipped.items():
            echo(f"{len(ids)} question(s) answered empty: {why} (e.g. question_id {ids[0]!r})")
        return images

    def _asked(self, index: int) -> list[int]:
        return [line for line in self.batches[index] if line not in self.unanswerable]

    def resume(self, echo: Callable[[str], None]) -> list[int]:
        """Read back each spec's answers (repairing cut and repeated lines), keep the finished
        batches, write the lines of batches with nothing to ask; returns the plan indices to
        answer, in plan order."""
        for spec in self.names:
            target = spec_file(self.out, spec)
            back = read_answers(target)
            done = back.answers
            if back.dropped or back.repeated:
                echo(f"{target}: dropped {back.dropped} cut line(s) and {back.repeated} repeated one(s)")
            for q in self.questions:  # an image that was missing may be there now: asked again
                if q.line not in self.unanswerable and UNANSWERED in done.get(answer_key(q), {}).get("metadata", {}):
                    del done[answer_key(q)]
            if target.is_file():  # without the lines a crash cut, before anything is appended
                write_in_order(target, self.questions, done)
            unfinished = {i for i, b in enumerate(self.batches) if any(answer_key(self.by_line[x]) not in done for x in b)}
            self.done[spec], self.files[spec] = done, target.open("a", encoding="utf-8")
            self.model_lines[spec] = sum(_answered(a) for a in done.values())
            for i in sorted(i for i in unfinished if not self._asked(i)):
                self._append(spec, i, [])
            self.unfinished[spec] = {i for i in unfinished if self._asked(i)}
            kept = sum(len(self._asked(i)) for i in range(len(self.batches)) if i not in unfinished)
            todo = sum(len(self._asked(i)) for i in self.unfinished[spec])
            self.summary.kept[spec], self.summary.answered[spec], self.summary.batches[spec] = kept, 0, 0
            self.summary.steps[spec] = self.summary.answer_steps[spec] = 0
            self.summary.min_margin[spec] = float("inf")
            echo(f"{spec}: {todo} to answer in {len(self.unfinished[spec])} batch(es), {kept} already answered -> {target}")
        return sorted(set().union(*self.unfinished.values()))

    def rows(self, index: int) -> list[int]:
        """The cache rows batch ``index`` reads."""
        return [self.row_of[x] for x in self._asked(index) if x in self.row_of]

    def work(self, index: int, records: dict[int, Any], seed: int) -> Work:
        lines = self._asked(index)
        requests = [Request(records[self.row_of[x]] if x in self.row_of else None, self.by_line[x].text) for x in lines]
        return Work(index, lines, requests, [s for s in self.names if index in self.unfinished[s]], seed)

    def _append(self, spec: str, index: int, lines: list[dict[str, Any]]) -> None:
        """Batch ``index``'s lines at ``spec`` (``lines``: its asked questions' answers, in
        order), the empty ones of questions without an image in their place, appended at once."""
        answers, out = iter(lines), []
        for x in self.batches[index]:
            q = self.by_line[x]
            why = self.unanswerable.get(x)
            out.append(next(answers) if why is None else answer_line(q, "", spec, 0, self.model_id, unanswered=why))
        append_lines(self.files[spec], out)
        done = self.done[spec]
        for line in out:
            key = answer_key(self.by_line[line["metadata"]["line"]])
            self.model_lines[spec] += _answered(line) - (key in done and _answered(done[key]))
            done[key] = line

    def _write(self, result: Done) -> int:
        """Append a finished batch at every spec it answered; returns the answers written."""
        written = 0
        for spec, texts in result.texts.items():
            lines = self._asked(result.index)
            self._append(spec, result.index, [
                answer_line(self.by_line[x], text, spec, seen, self.model_id, where=self.where, prompt_tokens=prefilled)
                for x, text, seen, prefilled in zip(lines, texts, result.visual_tokens[spec], result.prompt_tokens[spec])])
            s = self.summary
            s.answered[spec] += len(lines)
            s.batches[spec] += 1
            s.min_margin[spec] = min(s.min_margin[spec], result.margin[spec])
            s.steps[spec] += result.steps[spec] * len(lines)
            s.answer_steps[spec] += result.answer_steps[spec]
            self.seconds[spec] += result.seconds[spec]
            self.unfinished[spec].discard(result.index)
            self._record(spec)
            written += len(lines)
        return written

    def _record(self, spec: str) -> None:
        """``<spec>.run.json``: the model's answers in the file and its seconds over all runs."""
        n, seconds = self.model_lines[spec], self.seconds[spec]
        write_run(run_file(self.out, spec), {
            "questions": n, "seconds": round(seconds, 3), "questions_per_s": round(n / seconds, 3) if seconds else 0.0,
            "device": self.where[0], "dtype": self.where[1], "workers": self.summary.workers,
            "checkpoint": self.settings["checkpoint"], "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature, "batch_size": self.settings["batch_size"]})

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def answer_all(self, results: Iterator[Done], progress: bool, echo: Callable[[str], None]) -> None:
        """Write each finished batch as it comes (progress with an ETA over every spec: a bar on
        a terminal, else one line per batch), then each file in question order."""
        from tqdm import tqdm

        total = sum(len(self._asked(i)) for spec in self.names for i in self.unfinished[spec])
        groups = len(set().union(*self.unfinished.values()))
        bar = tqdm(total=total, unit="answer", desc="answer", disable=not progress)
        start, answered = time.monotonic(), 0
        for k, result in enumerate(results, 1):
            n = self._write(result)
            answered += n
            bar.update(n)
            if not progress:
                rate = answered / max(time.monotonic() - start, 1e-9)
                eta = timedelta(seconds=round((total - answered) / rate)) if rate else "?"
                echo(f"batch {k}/{groups}: {answered}/{total} answers, {rate:.2f}/s, ETA {eta}")
        bar.close()
        self.close()
        for spec in self.names:
            target = spec_file(self.out, spec)
            write_in_order(target, self.questions, self.done[spec])
            self._record(spec)
            self.summary.files[spec] = str(target)


def _answered(line: dict[str, Any]) -> bool:
    """A line the model answered (not one written empty for want of an image)."""
    return UNANSWERED not in line["metadata"]
