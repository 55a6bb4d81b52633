"""Shard writers: CPU actors that own disjoint shards, hold their finished images, write
and commit them (docs/architecture.md, "Who writes").

- The last stage group (graph.py) hands each finished image to the writer of its shard
  (:func:`writer_of`: shard ``s`` belongs to writer ``s % actors``) through Ray's object
  store and waits until the writer holds it. It hands Ray Data no rows: a row per image
  back to the driver costs the driver ~7 ms of CPU per image in Ray Data's executor
  (one-image blocks), more than writing the image (benchmarks/bench_sink.py).
- The writer, once it holds every image of a shard, writes the shard to both sinks and
  then its commit file (pipeline/commit.py: the commit rule, unchanged), in a thread of its
  own, so that receiving images never waits on a write (up to ``MAX_PENDING_COMMITS``
  shards queued: then receiving waits, and so do the stages, which bounds its memory).
- The driver (run.py, :func:`coordinate`) drives the Ray Data stream, asks the writers
  twice a second what they hold and committed (progress), and at the end which shards
  stayed incomplete. It never sees an image.

A writer killed mid-run (SIGKILL, the OOM killer) is restarted by Ray with nothing held:
the images it held are gone, its incomplete shards can no longer complete and stay
uncommitted; the driver names them and the next run does exactly the uncommitted shards.
A writer of a run that no longer holds the job (another run took it over: a paused or
partitioned writer, a driver whose lock lease ran out) writes nothing more of a shard (the
fence: pipeline/lock.check_holder before each write) and reports it like a failed write.
A write that fails (a full disk) is reported, not raised. The driver then stops the run
from inside: the writers take no more images (:class:`WriterStopped`), which ends the Ray
Data stream; the writes under way end, and the run stops with one line
(:func:`describe_write_error`).

:class:`ShardWriter` is plain Python (tests call it directly); :class:`WriterPool` makes it
Ray actors.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..schemas.commits import Commit
from ..schemas.errors import RunError
from ..schemas.jobdir import JobDir
from ..schemas.refusals import what_to_do
from ..schemas.spec import JobSpec
from ..schemas.storage import open_zarr
from ..stages.write import TokenDims

Item = dict[str, Any]
#: Threads of a writer actor's calls: images are received, and reports answered, while a
#: call waits (hold under backpressure, finish).
WRITER_THREADS = 4
#: Shard writes a writer queues before receiving waits (and so the stages do): bounds the
#: images a writer that falls behind holds in memory.
MAX_PENDING_COMMITS = 2


def writer_of(shard: int, writers: int) -> int:
    """The writer that owns ``shard``: consecutive shards go to different writers."""
    return shard % writers


def describe_write_error(shard: int, exc: OSError) -> str:
    """One line for a write that failed: the shard, the path, what to do."""
    where = f" {exc.filename}" if exc.filename else ""
    advice = what_to_do(exc)
    reason = exc.strerror or str(exc)
    return (f"shard {shard}: could not write{where}: {reason}; {advice}: every committed shard is safe, "
            f"the next run does exactly the shards left")


class WriterStopped(RuntimeError):
    """Raised to a stage handing images to a writer of a run that is stopping; it ends the
    Ray Data stream (the driver expects it, the user never sees it)."""


class ShardWriter:
    """Holds the finished images of the shards it owns; writes and commits each shard as
    soon as it holds all of it."""

    def __init__(self, root: str, rows: int, shard_size: int, dims: dict[str, int], fingerprint: str,
                 manifest_digest: str | None, webdataset: bool, rle_masks: bool, run: str | None = None):
        self.jd = JobDir(root)
        self.run = run  # the run id in the job's lock (pipeline/lock.py); None: no fence
        self.group = open_zarr(self.jd.tokens, mode="r+")
        self.rows, self.shard_size, self.dims = rows, shard_size, TokenDims(**dims)
        self.fingerprint, self.manifest_digest = fingerprint, manifest_digest
        self.webdataset, self.rle_masks = webdataset, rle_masks
        self.held: dict[int, dict[int, Item]] = defaultdict(dict)  # shard -> index -> item
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self.writing: list[Future] = []  # queued and running commits, oldest first
        self.new_images = 0  # images received since the last report
        self.results: list[dict[str, Any]] = []  # commit results since the last report
        self.stopped = False
        self.queued: set[int] = set()  # shards whose write was queued: written once

    def expected(self, shard: int) -> int:
        return min(self.shard_size, self.rows - shard * self.shard_size)

    def hold(self, items: list[Item]) -> int:
        """Keep ``items`` (keyed: a redelivered one counts once); queue the write of every
        shard they complete. Waits while over ``MAX_PENDING_COMMITS`` writes are queued.
        Returns how many were new. Raises :class:`WriterStopped` once the run is stopping."""
        new = 0
        with self.lock:
            if self.stopped:
                raise WriterStopped("the run is stopping (a shard write failed): no more images are taken")
            for item in items:
                shard = item["index"] // self.shard_size
                if shard in self.queued:  # a batch redone after its shard was complete
                    continue
                new += item["index"] not in self.held[shard]
                self.held[shard][item["index"]] = item
                if len(self.held[shard]) == self.expected(shard):
                    self.queued.add(shard)
                    self.writing.append(self.pool.submit(self._write, shard, self.held.pop(shard)))
            self.new_images += new
            self.writing = [f for f in self.writing if not f.done()]
            backlog = self.writing[:max(0, len(self.writing) - MAX_PENDING_COMMITS)]
        wait(backlog)
        return new

    def _write(self, shard: int, items: dict[int, Item]) -> None:
        result = self.commit(shard, items)
        with self.lock:
            self.results.append(result)

    def commit(self, shard: int, items: dict[int, Item]) -> dict[str, Any]:
        """Write ``shard`` from ``items`` to both sinks and commit it: ``{"commit": ...}``, or
        ``{"error": line}`` when the write failed (nothing is committed then)."""
        from .commit import write_shard
        from .lock import StaleRun, check_holder

        start, end = shard * self.shard_size, shard * self.shard_size + self.expected(shard)
        fence = None if self.run is None else lambda: check_holder(self.jd.run_lock, self.run)
        try:
            commit = write_shard(self.jd, self.group, shard, start, end, list(items.values()), self.dims,
                                 self.fingerprint, self.webdataset, self.rle_masks, self.manifest_digest, fence)
        except StaleRun as exc:
            return {"shard": shard, "error": f"shard {shard}: not written: {exc}; this run stops (the other one "
                                             "does the shards left)"}
        except OSError as exc:
            return {"shard": shard, "error": describe_write_error(shard, exc)}
        return {"shard": shard, "commit": commit}

    def report(self) -> dict[str, Any]:
        """Images received and commit results since the last report."""
        with self.lock:
            out = {"new_images": self.new_images, "results": self.results}
            self.new_images, self.results = 0, []
        return out

    def finish(self) -> dict[str, Any]:
        """After the last image: wait for the writes under way; the last report, and the
        shards this writer holds only part of (``{shard: images held}``)."""
        with self.lock:
            writing = list(self.writing)
        wait(writing)
        out = self.report()
        with self.lock:
            out["incomplete"] = {shard: len(items) for shard, items in self.held.items() if items}
        return out

    def holding(self) -> tuple[list[int], list[int]]:
        """(the images held of shards not yet complete, the shards complete: queued or written)."""
        with self.lock:
            return [i for items in self.held.values() for i in items], sorted(self.queued)

    def stop(self) -> None:
        """Take no more images (the driver stops the run): the stream then ends with an error."""
        with self.lock:
            self.stopped = True

    def pid(self) -> int:
        return os.getpid()

    def cpu_seconds(self) -> float:
        """CPU seconds this writer's process has used (benchmarks/bench_sink.py)."""
        return time.process_time()


class WriterPool:
    """The driver's side: starts the writer actors, collects their reports."""

    def __init__(self, jd: JobDir, spec: JobSpec, meta: dict[str, Any], rows: int, dims: TokenDims,
                 run: str | None = None, actors: int | None = None):
        """``run``: the lock's id (the writers' fence); ``actors``: how many writers (pools.py
        sizes them); default the spec's integer (1 for auto)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        res = spec.write.resources
        count = actors or res.first_actors
        here = ray.get_runtime_context().get_node_id()
        # a job directory on a local disk is the driver's: its writers run beside it; one on
        # object storage is everyone's: they run wherever Ray places them
        place = "the cluster" if jd.remote else "the driver's node"
        cpus = sum(n["Resources"].get("CPU", 0.0) for n in ray.nodes()
                   if n.get("Alive", True) and (jd.remote or n["NodeID"] == here))
        if count * res.cpus > cpus:  # Ray would wait for them forever
            raise RunError(f"the shard writers ask for {count * res.cpus:g} CPUs on {place}, which "
                           f"has {cpus:g}: lower write.resources.actors or write.resources.cpus for this run "
                           "(--set write.resources.cpus=0.5)")
        actor = ray.remote(ShardWriter)
        pinned = {} if jd.remote else {"scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False)}
        options = dict(
            num_cpus=res.cpus, max_concurrency=WRITER_THREADS, max_restarts=-1, max_task_retries=-1, **pinned,
            **({"memory": int(res.memory_gb * 1e9)} if res.memory_gb else {}))
        tag = uuid.uuid4().hex[:8]
        self.names = [f"masktok-writer-{tag}-{i}" for i in range(count)]
        # small constructor arguments only (inlined in the creation task): a restart never
        # depends on an object that may be gone
        self.actors = [actor.options(name=name, **options).remote(
            str(jd.root), rows, spec.shards.size, dims.as_dict(), meta["fingerprint"], meta.get("manifest_digest"),
            spec.write.webdataset, spec.write.rle_masks, run) for name in self.names]
        self.asked: dict[Any, int] = {}  # report ref -> writer

    def reports(self, timeout: float) -> list[dict[str, Any]]:
        """The reports that arrive within ``timeout`` seconds (one asked of each writer at a
        time: a writer being restarted answers when it is back)."""
        import ray

        waiting = set(self.asked.values())
        for w, actor in enumerate(self.actors):
            if w not in waiting:
                self.asked[actor.report.remote()] = w
        done, _ = ray.wait(list(self.asked), num_returns=len(self.asked), timeout=timeout)
        out = []
        for ref in done:
            del self.asked[ref]
            out.append(ray.get(ref))
        return out

    def finish(self) -> list[dict[str, Any]]:
        """Every writer's last report (reports still awaited are answered first)."""
        import ray

        out = ray.get(list(self.asked))
        self.asked.clear()
        return out + ray.get([actor.finish.remote() for actor in self.actors])

    def stop(self) -> None:
        """Every writer takes no more images."""
        import ray

        ray.get([actor.stop.remote() for actor in self.actors])

    def holding(self) -> tuple[set[int], set[int]]:
        """What every writer holds: (images of shards not yet complete, complete shards)."""
        import ray

        parts = ray.get([actor.holding.remote() for actor in self.actors])
        return {i for images, _ in parts for i in images}, {s for _, shards in parts for s in shards}

    def pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])


@dataclass
class Books:
    """What the driver learns from the writers' reports."""

    todo: set[int]  # the shards this run is to commit
    images: int = 0  # images the writers received
    committed: list[Commit] = field(default_factory=list)  # this run's commits
    lost: dict[int, int] = field(default_factory=dict)  # shard -> images held at the end, of fewer
    error: str | None = None  # the first failed write, one line

    @property
    def failed(self) -> int:
        return sum(c["images_failed"] for c in self.committed)

    def take(self, report: dict[str, Any]) -> None:
        self.images += report["new_images"]
        for result in report["results"]:
            if "error" in result:
                self.error = self.error or result["error"]
            else:
                self.committed.append(result["commit"])
        self.lost.update(report.get("incomplete", {}))

    def uncommitted(self) -> list[int]:
        return sorted(self.todo - {c["shard"] for c in self.committed})

    def raise_problems(self) -> None:
        """A RunError for the first problem of the run, if it had one (the shards it names
        stay uncommitted: the next run does exactly them)."""
        if self.error:
            raise RunError(self.error)
        left = self.uncommitted()
        if left:
            why = ("a shard writer died and lost the images it held" if self.lost
                   else "the pipeline lost some of their images")
            raise RunError(f"shards {left[:5]}{' ...' if len(left) > 5 else ''} stay uncommitted ({why}); the other "
                           f"{len(self.committed)} were committed: run again to do exactly them")


#: Seconds between two rounds of reports (progress).
REPORT_EVERY = 0.5
#: Seconds a stopping run waits for the stream to end before it shuts Ray down anyway.
STOP_TIMEOUT = 120


def coordinate(ds: Any, pool: WriterPool, books: Books,
               show: Callable[[Books], None] = lambda books: None) -> Books:
    """The driver's loop: the Ray Dataset ``ds`` runs to its end in a thread (it feeds the
    writers; its rows, if any, are not wanted); meanwhile the writers' reports are booked in
    ``books`` and shown (``show``) twice a second. After a failed write it stops waiting for
    the stream. Returns the books once the writers have finished (``Books.raise_problems``
    says what went wrong); a stream that failed otherwise raises, the writers unfinished
    (passes.py may stream again to them)."""
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            for _ in ds.iter_batches(batch_size=None):
                pass
        except BaseException as exc:  # noqa: BLE001 - raised in the driver below
            failure.append(exc)

    thread = threading.Thread(target=stream, name="masktok-stream", daemon=True)
    thread.start()
    while thread.is_alive() and not books.error:
        next_round = time.monotonic() + REPORT_EVERY
        for report in pool.reports(timeout=REPORT_EVERY):
            books.take(report)
        show(books)
        thread.join(max(0.0, next_round - time.monotonic()))
    if books.error:  # stop the stream from inside: the writers refuse images, the stages fail
        pool.stop()
        thread.join(STOP_TIMEOUT)
    elif failure:
        raise failure[0]
    return finish(pool, books, show)


def finish(pool: WriterPool, books: Books, show: Callable[[Books], None] = lambda books: None) -> Books:
    """Book the writers' last reports, once they have every image they will get."""
    for report in pool.finish():
        books.take(report)
    show(books)
    return books
