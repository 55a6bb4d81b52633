"""Model replicas that answer planned batches: one in this process, or one per Ray actor.

A :class:`Replica` loads the checkpoint once (on its device, in its dtype) and answers a
batch at every token spec of the run: the batch's cache rows travel once and serve every
budget. It returns texts and timings only; the driver turns them into answer lines and is
the only writer (evaluate/answer_files.py).

With ``workers`` (or a Ray cluster's GPUs) each replica is a Ray actor (``num_gpus=1`` on a
GPU cluster, one CPU otherwise); the driver hands the next planned batch to whichever actor
is free, so no replica waits on another, and the plan, not the schedule, fixes what each
answer is (evaluate/answer_plan.py). Why Ray actors and not torchrun or vLLM: docs/eval.md.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..inference.device import dtype_name
from ..inference.generation import Request, generate_answers, load_generation_model
from ..schemas.errors import DataError
from ..trainer.visual.token_spec import parse_spec


@dataclass(frozen=True)
class Work:
    """One planned batch: its index in the plan, the lines it answers now, their requests
    and the seed of its sampled draws (the seed plus the index: repeatable wherever it runs)."""

    index: int
    lines: list[int]
    requests: list[Request]
    specs: list[str]  # the specs this batch is still unanswered at
    seed: int


@dataclass
class Done:
    """A batch answered at every spec: per spec, texts and visual-token counts in the order
    of ``Work.lines``, the smallest greedy margin, the model's seconds and its decoding steps
    (the batch's longest answer) beside the sum of the answers' own steps (padding waste)."""

    index: int
    texts: dict[str, list[str]] = field(default_factory=dict)
    visual_tokens: dict[str, list[int]] = field(default_factory=dict)
    prompt_tokens: dict[str, list[int]] = field(default_factory=dict)
    margin: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    answer_steps: dict[str, int] = field(default_factory=dict)


class Replica:
    """One loaded model answering :class:`Work` at ``specs`` (also run as a Ray actor)."""

    def __init__(self, checkpoint: str, device: str, dtype: str, specs: list[str], max_new_tokens: int,
                 temperature: float) -> None:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()
        self.gm = load_generation_model(checkpoint, device, dtype)
        self.specs = {s: parse_spec(s) for s in specs}
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def where(self) -> tuple[str, str]:
        """(device type, dtype name) the model runs in."""
        return self.gm.device.type, dtype_name(self.gm.dtype)

    def answer(self, work: Work) -> Done:
        import torch

        done = Done(work.index)
        for key in work.specs:
            spec = self.specs[key]
            torch.manual_seed(work.seed + work.index)
            start = time.perf_counter()
            out = generate_answers(self.gm, work.requests, spec, self.max_new_tokens, self.temperature)
            if self.gm.device.type == "cuda":
                torch.cuda.synchronize()
            done.seconds[key] = time.perf_counter() - start
            done.texts[key], done.visual_tokens[key] = out.texts, out.visual_tokens
            done.prompt_tokens[key] = out.prompt_tokens
            done.margin[key] = min(out.margins, default=float("inf"))
            done.steps[key], done.answer_steps[key] = out.steps, out.answer_steps
        return done


def in_process(replica: Replica, works: Iterator[Work]) -> Iterator[Done]:
    """Answer ``works`` one after the other here."""
    for work in works:
        yield replica.answer(work)


@dataclass
class RayReplicas:
    """Replica actors on the Ray at ``address`` (None: a local Ray of our own, unless this
    process has joined one already)."""

    address: str | None
    workers: int | None
    device: str
    actors: list[Any] = field(default_factory=list)
    started: bool = False
    gpus: int = 0

    def connect(self) -> bool:
        """Start Ray (or join it); True when the replicas will run on GPUs (the cluster has
        some and ``device`` is not cpu)."""
        import ray

        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
            else:
                ray.init(address="local", num_cpus=max(self.workers or 1, os.cpu_count() or 1),
                         include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            self.started = True
        self.gpus = int(ray.cluster_resources().get("GPU", 0)) if self.device != "cpu" else 0
        return self.gpus > 0

    def spawn(self, make: Callable[..., Any], *args: Any) -> int:
        """The actors, ``make(*args)`` each: one per GPU unless ``workers`` says otherwise
        (one CPU each on a cluster without GPUs); returns how many."""
        import ray

        n = self.workers or self.gpus or 1
        if self.gpus and n > self.gpus:
            raise DataError(f"--workers {n} asks for more GPUs than the Ray cluster has ({self.gpus})")
        resources = {"num_gpus": 1, "num_cpus": 0} if self.gpus else {"num_cpus": 1}
        actor = ray.remote(make).options(**resources)
        self.actors = [actor.remote(*args) for _ in range(n)]
        return n

    def where(self) -> tuple[str, str]:
        import ray

        return tuple(ray.get(self.actors[0].where.remote()))

    def run(self, works: Iterator[Work]) -> Iterator[Done]:
        """Hand each next batch to the first actor that is free; yield batches as they finish."""
        import ray

        idle, running = deque(self.actors), {}
        while True:
            while idle and (work := next(works, None)) is not None:
                actor = idle.popleft()
                running[actor.answer.remote(work)] = actor
            if not running:
                return
            ready, _ = ray.wait(list(running), num_returns=1)
            idle.append(running.pop(ready[0]))
            yield ray.get(ready[0])

    def stop(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.started:
            ray.shutdown()


def prefetched(batches: list[int], rows: Callable[[int], list[int]], read_row: Callable[[int], Any],
               build: Callable[[int, dict[int, Any]], Work], depth: int = 4, threads: int = 16) -> Iterator[Work]:
    """``build(i, {row: record})`` for each planned batch ``i``, its cache rows (``rows(i)``)
    read ``depth`` batches ahead, one row per task on ``threads`` threads: a cache on object
    storage is read many rows at a time, never one row after the other.

    Each row is read once for the whole run and kept until the last batch that asks for it is
    built: the plan groups questions by prompt length, so the questions of one image (MME asks
    two of each) often land in different batches."""
    needed = {i: sorted(set(rows(i))) for i in batches}
    users_left = Counter(row for i in batches for row in needed[i])
    with ThreadPoolExecutor(threads) as pool:
        asked: dict[int, Future[Any]] = {}
        ahead: deque[int] = deque()
        todo = iter(batches)

        def submit(i: int) -> None:
            for row in needed[i]:
                if row not in asked:
                    asked[row] = pool.submit(read_row, row)
            ahead.append(i)

        for i in itertools.islice(todo, depth):
            submit(i)
        while ahead:
            i = ahead.popleft()
            records = {row: asked[row].result() for row in needed[i]}
            for row in needed[i]:
                users_left[row] -= 1
                if not users_left[row]:
                    del asked[row]
            if (nxt := next(todo, None)) is not None:
                submit(nxt)
            yield build(i, records)
