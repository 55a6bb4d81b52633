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

A run is planned before any work (``<spec>.plan.json``, evaluate/answer_plan.py: batches of
similar prompt length, fixed whatever the number of workers), answered by one model replica
here or one per Ray actor (evaluate/answer_replicas.py), and written by this process alone:
each finished batch is appended to ``<spec>.jsonl`` at every spec at once, and the file is
rewritten in question order once complete (evaluate/answer_files.py). A rerun resumes: the
batches whose every line is there are kept, the others answered again whole, so a killed
run and its rerun give the bytes of an uninterrupted run. A rerun with other settings
(checkpoint, generation, dtype, batch size, questions) is refused, as is a second run on the
same ``out``. Answers are keyed by line, not by id: MME and TextVQA repeat ids by design.
Each cache row is read once for all the specs of a run, a few batches ahead.
A question whose image is not in the cache, failed or is pending is reported and still gets
its line, in its place: an empty ``text`` and ``metadata.unanswered`` saying why (LLaVA's
keys unchanged, ``visual_tokens`` 0), so scorers that pair answers by position (LLaVA's
eval_pope.py) stay aligned; it is scored as the empty answer it is, and ``masktok score``
says how many there were. A rerun asks such a question again, with its batch (its image may
be done by then). Greedy answers (temperature 0) do not depend on the batch size in exact
arithmetic (transformers' ``generate`` over left-padded prompts, trainer/model/mask_llava.py);
``metadata`` also names the device and dtype that answered. ``max_new_tokens`` defaults to
LLaVA-1.5's for the benchmark (questions.LOADER_MAX_NEW_TOKENS, or the QuestionFormat of the
benchmark that reads the file: the one ``benchmark`` names, else the one that recognises the
file by its content).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..inference.device import dtype_name, resolve_device, resolve_dtype
from ..inference.generation import Prompter
from ..trainer.visual.token_spec import parse_spec
from .answer_files import answer_lock, spec_file
from .answer_plan import digest, questions_digest
from .answer_replicas import RayReplicas, Replica, in_process, prefetched
from .answer_run import AnswerRun, AnswerSummary, answer_line
from .questions import read_question_file

__all__ = ["AnswerSummary", "answer", "answer_line", "spec_file"]


def answer(checkpoint: Path, cache: Path, questions_file: Path, specs: list[str], out: Path, batch_size: int = 8,
           temperature: float = 0.0, max_new_tokens: int | None = None, device: str = "auto", dtype: str = "auto",
           model_id: str | None = None, seed: int = 0, lang: str | None = None, benchmark: str | None = None,
           limit: int | None = None, workers: int | None = None, ray_address: str | None = None,
           echo: Callable[[str], None] = lambda s: None, progress: bool = False) -> AnswerSummary:
    """Answer ``questions_file`` (its first ``limit`` questions) at every token spec into
    ``out`` (see the module docstring). ``workers`` or ``ray_address``: on Ray actors (one
    per GPU of the cluster by default), else one replica in this process."""
    names = list(dict.fromkeys(str(parse_spec(s)) for s in specs))  # bad specs fail before any model is loaded
    qfile = read_question_file(questions_file, lang, benchmark)
    questions = qfile.questions[:limit] if limit else qfile.questions
    run = AnswerRun(names, questions, Path(out), max_new_tokens or qfile.max_new_tokens, temperature,
                    model_id or Path(checkpoint).resolve().name)
    prompter = Prompter.of(checkpoint)  # a missing checkpoint fails before OUT is made
    Path(out).mkdir(parents=True, exist_ok=True)
    with answer_lock(out):
        ray = RayReplicas(ray_address, workers, device) if workers or ray_address else None
        try:
            on_gpu = ray.connect() if ray is not None else resolve_device(device).type == "cuda"
            precision = dtype_name(resolve_dtype(dtype, resolve_device("cuda" if on_gpu else "cpu")))
            run.plan(prompter, batch_size, {
                "checkpoint": str(prompter.path.resolve()), "checkpoint_state": digest(prompter.state_json),
                "model_id": run.model_id, "max_new_tokens": run.max_new_tokens, "temperature": temperature,
                "seed": seed, "dtype": precision, "batch_size": batch_size,
                "questions": questions_digest(questions), "count": len(questions)})
            images = run.check_images(cache, prompter, echo)
            todo = run.resume(echo)
            # the checkpoint folder resolved once (a run folder's latest may change while replicas start)
            args = (str(prompter.path.resolve()), "cuda" if on_gpu and device == "auto" else device, precision, names,
                    run.max_new_tokens, temperature)
            works = prefetched(todo, run.rows, images.__getitem__, lambda i, records: run.work(i, records, seed))
            if ray is not None:
                run.summary.workers = ray.spawn(Replica, *args)
                run.where, results = ray.where(), ray.run(works)
            else:
                replica = Replica(*args)
                run.where, results = replica.where(), in_process(replica, works)
            run.answer_all(results, progress, echo)
        finally:
            run.close()
            if ray is not None:
                ray.stop()
    return run.summary
