"""`masktok run`: process every uncommitted shard of a planned job on Ray.

The driver reads the plan, takes the job lock, starts the shard writers (writers.py) and
streams the pending images through the Ray Data graph (graph.py); the finished images go
from the last stage to their shard's writer, which writes both sinks and commits the shard
once it holds all of it (commit.py); the driver follows the writers' reports
(writers.coordinate). Kill it at any moment: the next run redoes exactly the shards without
a commit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..schemas.manifest import read_manifest
from ..schemas.spec import JobSpec, apply_overrides, fingerprint, fingerprint_diff, read_toml, spec_from_dict
from ..schemas.versions import RECORD_SCHEMA_VERSION
from ..schemas.commits import read_commits, stage_seconds_per_image, valid_commits
from ..schemas.errors import ModelLoadError, RunError
from ..schemas.failures import kind_of
from ..schemas.jobdir import JobDir
from ..stages.topology import Group, topology
from ..schemas.durable import sweep_temp_files, write_atomic
from .lock import run_lock
from .passes import STALL_TIMEOUT_S, stream_passes
from .pools import WRITERS, PoolPlan, cluster_nodes, group_costs, plan_pools
from .progress import CommitLines
from .room import retry_advice
from .status import format_rate, format_seconds, slowest_stage, stage_breakdown

FAILURES_SCHEMA = pa.schema([("index", pa.int64()), ("image_id", pa.string()), ("shard", pa.int32()),
                             ("stage", pa.string()), ("reason", pa.string()), ("kind", pa.string())])


@dataclass
class RunSummary:
    shards_total: int
    shards_already_committed: int
    shards_run: int
    images_run: int
    images_failed: int
    seconds: float
    #: mean wall seconds per image of each stage, over the shards this run committed
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: the line for this run's resource failures (pipeline/room.retry_advice), if it had any
    retry_advice: str | None = None

    def line(self) -> str:
        """What `masktok run` prints last: one line, and a second with the seconds per image
        of each stage when the run timed them."""
        if self.shards_run == 0:
            return f"nothing to do: all {self.shards_total} shards are committed"
        rate = self.images_run / self.seconds if self.seconds > 0 else None
        done = (f"committed {self.shards_run} shards ({self.images_run} images, {self.images_failed} failed) "
                f"in {self.seconds:.1f} s, {format_rate(rate)}; "
                f"{self.shards_already_committed + self.shards_run}/{self.shards_total} shards done")
        slowest = slowest_stage(self.stage_seconds)
        if slowest is None:
            return done
        return (f"{done}\nstages: {stage_breakdown(self.stage_seconds)} per actor; "
                f"slowest: {slowest} ({format_seconds(self.stage_seconds[slowest])} s/image)")


def load_job(jd: JobDir, overrides: tuple[str, ...] = ()) -> tuple[JobSpec, dict[str, Any]]:
    """The job's spec (with speed-only overrides applied) and its [meta]; refuses any
    override or edit that would change results."""
    if not jd.job_toml.exists():
        raise RunError(f"{jd.root} holds no planned job (no job.toml): run `masktok plan` first")
    doc = read_toml(jd.job_toml)
    meta = doc.get("meta", {})
    stored = spec_from_dict(doc, origin=str(jd.job_toml))
    planned_with = meta.get("record_schema_version", RECORD_SCHEMA_VERSION)
    if planned_with != RECORD_SCHEMA_VERSION:
        raise RunError(f"{jd.root} was planned by an older masktok (record version {planned_with}; this one "
                       f"writes {RECORD_SCHEMA_VERSION}): plan it again with --force to run it (its cache stays "
                       "readable by train, generate and answer as it is)")
    if fingerprint(stored) != meta.get("fingerprint"):
        raise RunError(f"{jd.job_toml} was edited after planning (its fingerprint no longer matches): plan again")
    spec = spec_from_dict(apply_overrides(doc, list(overrides)), origin="--set")
    if fingerprint(spec) != meta["fingerprint"]:
        changes = "; ".join(fingerprint_diff(doc, spec))
        raise RunError(f"refused: these settings change results ({changes}); only *.resources may change "
                       f"for a planned job: plan a new job (or --force) to change results")
    return spec, meta


def write_failures(jd: JobDir, commits: dict[int, dict[str, Any]]) -> int:
    rows = [{**f, "shard": shard, "kind": kind_of(f)} for shard, c in sorted(commits.items()) for f in c["failures"]]
    table = pa.Table.from_pylist(rows, schema=FAILURES_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(jd.failures, sink.getvalue().to_pybytes())
    return len(rows)


def local_ray_cpus(groups: list[Group], spec: JobSpec) -> int:
    """The logical CPUs a local Ray for this run declares: enough for every actor (the stage
    groups and the shard writers, an auto pool counting its first actor) plus the read
    tasks, and never fewer than the machine has. Ray Data waits forever, without an error, on
    a reservation the node cannot grant."""
    wanted = sum(g.resources.first_actors * g.resources.cpus for g in groups)
    wanted += spec.write.resources.first_actors * spec.write.resources.cpus + 1
    return max(os.cpu_count() or 1, int(wanted + 0.999))


def _start_ray(address: str | None, cpus: int) -> bool:
    """Join ``address`` or start a local Ray with ``cpus`` logical CPUs; True if we started it.
    Ray's own notices stay off the terminal (:func:`_quiet_ray_data` and the two below)."""
    import ray

    _quiet_ray_data()
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    else:
        # address "local": a new Ray of our own even when `ray start` runs on this machine (with
        # no address Ray joins that cluster, and refuses the num_cpus we pass)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
    _quiet_published_errors()
    _absorb_restart_notice()
    return not address


def _quiet_ray_data() -> None:
    """The terminal gets our progress bar, a line per problem and the summary: Ray Data's
    periodic issue reports (~20 lines every 30 s on big models) and the workers' own logs stay
    in Ray's log folder (/tmp/ray/session_latest/logs). Ray's own notices in the driver (Ray
    Data's execution lines and its note that progress bars are off, the token-auth notice of a
    new local cluster) and Ray Data's error logs (a failed execution's whole stack) are off
    too: the exception itself reaches the run, which turns what concerns the user into one
    line (a model that cannot load) and keeps the traceback of anything else."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.issue_detectors_config.detectors = []
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def _show_stage_bars() -> None:
    """Ray Data's own progress, one bar per stage group, for a user deciding what to scale:
    the group's rows done, its tasks, actors (running, pending, restarting), queued blocks
    and the CPUs/GPUs it holds, e.g.
    ``- MapBatches(StageGroup[invert]): Tasks: 4; Actors: 4; Queued blocks: 12 (...); Resources: 2.0 CPU, 2.0 GPU ...``.
    The last group hands its images to the writers, so its bar counts no output rows: the
    commits say what is written (``masktok status``)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.enable_operator_progress_bars = True


def _quiet_published_errors() -> None:
    """Keep the errors the cluster publishes for the job off the terminal.

    Ray's driver prints each one as it comes, ``log_to_driver`` or not: "(raylet) Task
    MapWorker.get_location failed. There are infinite retries remaining ..." with the whole
    remote traceback of an actor whose model could not load, a worker's death. The run
    reports what concerns the user itself (that model, in one line; lost shards), so these
    go to the ``masktok.ray`` logger at DEBUG instead. Ray prints them through
    ``ray._private.worker.print_to_stdstream`` with the pid "raylet"; other output is untouched.
    """
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "masktok_quiet", False):
        return

    def quiet(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            logging.getLogger("masktok.ray").debug("\n".join(data.get("lines", [])))
        else:
            printer(data, ignore_prefix)

    quiet.masktok_quiet = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = quiet


def _absorb_restart_notice() -> None:
    """Keep Ray's one C++ notice about actor restarts off the user's terminal.

    Ray's core worker logs, once per process, when it creates an actor that may restart
    and whose constructor arguments are in the object store. Ray Data creates every actor
    of a map_batches pool that way: it passes the actors its own context and transformer
    by reference, whatever the user's arguments (ray/data/.../actor_pool_map_operator.py).
    Those objects are put by this driver, on its node, and held for the whole run, so a
    restart cannot lose them (a lost driver node ends the run anyway); the notice tells
    the user nothing to act on. The shard writers take small arguments, inlined. So the
    notice is spent here, on a probe actor created while stderr points at /dev/null.
    """
    import ray

    # a resource no node has: the probe is never placed, so no worker process starts for it
    @ray.remote(num_cpus=0, resources={"masktok-notice-probe": 1}, max_restarts=1)
    class _Probe:
        def __init__(self, _: object) -> None:
            pass

    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        probe = _Probe.remote(ray.put(None))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    ray.kill(probe)


def size_pools(jd: JobDir, spec: JobSpec, groups: list[Group], kept: dict[int, dict[str, Any]]) -> PoolPlan:
    """Every pool's actors on the cluster Ray is connected to (pipeline/pools.py), from the
    stage seconds the job's commits recorded (or the estimate); kept in ``pools.json``."""
    import ray

    per_image, timed = stage_seconds_per_image(kept.values())
    costs, measured = group_costs([(g.name, [s.name for s in g.stages]) for g in groups], per_image)
    # a local job directory is the driver's: its writers run beside it (writers.py)
    here = None if jd.remote else ray.get_runtime_context().get_node_id()
    plan = plan_pools([(g.name, g.resources) for g in groups], spec.write.resources, cluster_nodes(), costs,
                      writers_node=here, costs_from=f"measured over {timed} images" if measured else "estimated")
    write_atomic(jd.pools, json.dumps({**plan.as_json(), "line": plan.line()}, indent=1).encode())
    return plan


def run_job(jd: JobDir, *, ray_address: str | None = None, overrides: tuple[str, ...] = (),
            retry_failed: bool = False, progress: bool = True, stages: bool = False,
            echo: Callable[[str], None] = print, stall_timeout: float = STALL_TIMEOUT_S) -> RunSummary:
    """Run every uncommitted shard of ``jd``. ``progress``: masktok's bar in a terminal, a
    line per commit off it; ``stages`` (in a terminal): Ray Data's bar of every stage group
    instead of masktok's (:func:`_show_stage_bars`); ``stall_timeout``: seconds without any
    block moving before a stream ends, then a new pass if a node was lost (passes.py)."""

    spec, meta = load_job(jd, overrides)
    with run_lock(jd.run_lock) as lock:
        if lock.took_over:
            echo(f"took over the lock of a dead run (pid {lock.took_over.get('pid')})")
        sweep_temp_files(jd.wds, jd.commits)  # left by a writer killed mid-write
        return _run_locked(jd, spec, meta, ray_address, retry_failed, progress, stages, echo, lock.run,
                           stall_timeout)


def _pending_shards(jd: JobDir, meta: dict[str, Any], shards: int,
                    retry_failed: bool) -> tuple[list[int], dict[int, dict[str, Any]]]:
    """The shards this run does, and the commits it keeps (all readable and of this plan;
    with ``retry_failed``, those with failures are removed from disk and from the dict)."""
    commits = read_commits(jd)
    unreadable = [s for s, c in commits.items() if "unreadable" in c]
    if unreadable:
        raise RunError(f"commit files of shards {unreadable[:5]} are unreadable: `masktok verify --repair` "
                       "removes them so that this run redoes those shards")
    stale = [s for s, c in commits.items()
             if c["fingerprint"] != meta["fingerprint"] or c.get("manifest_digest") != meta["manifest_digest"]]
    if stale:
        raise RunError(f"shards {stale[:5]} were committed for a different plan (spec or manifest): "
                       "plan again with --force")
    if retry_failed:
        for shard in [s for s, c in commits.items() if c["images_failed"]]:
            jd.commit_path(shard).unlink()  # uncommitted first: a kill now loses nothing
            del commits[shard]
    return [s for s in range(shards) if s not in commits], commits


def _model_load_error(exc: BaseException) -> str | None:
    """The message of a ModelLoadError raised in a Ray actor, however Ray wrapped it (an
    actor whose constructor raised arrives as ActorDiedError carrying the remote traceback
    as text)."""
    marker = f"{ModelLoadError.__name__}: "
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModelLoadError):
            return str(exc)
        for line in reversed(str(exc).splitlines()):
            if marker in line:
                return line.split(marker, 1)[1].strip()
        exc = exc.__cause__ or getattr(exc, "cause", None)
    return None


def _run_locked(jd: JobDir, spec: JobSpec, meta: dict[str, Any], address: str | None, retry_failed: bool,
                progress: bool, stages: bool, echo: Callable[[str], None], run: str | None,
                stall_timeout: float) -> RunSummary:
    manifest = read_manifest(jd.manifest, columns=["index", "image_id", "path", "shard"]).to_pydict()
    rows, size = len(manifest["index"]), spec.shards.size
    shards = -(-rows // size)
    todo, kept = _pending_shards(jd, meta, shards, retry_failed)
    already = len(kept)
    if not todo:
        write_failures(jd, kept)  # every shard committed: the commits just read are all of them
        return RunSummary(shards, already, 0, 0, 0, 0.0)

    from ..stages.write import open_store
    from ..stages.checkpoints import resolve_checkpoints, token_dims
    from .graph import build_dataset
    from .writers import Books, WriterPool

    groups = topology(spec)  # once for the run: checkpoints, Ray's size, the pools, the graph
    checkpoints = resolve_checkpoints(spec, jd.models, groups)
    dims = token_dims(spec)
    open_store(jd.tokens, rows=rows, shard_size=size, dims=dims, filter_settings=spec.filter.model_dump(),
               patch_grid=spec.write.patch_grid)
    wanted = set(todo)
    items = [{"index": i, "image_id": manifest["image_id"][i], "path": manifest["path"][i]}
             for i in range(rows) if manifest["shard"][i] in wanted]
    echo(f"running {len(todo)} of {shards} shards ({len(items)} images); {already} already committed")

    import ray

    started = _start_ray(address, local_ray_cpus(groups, spec))
    t0 = time.perf_counter()
    try:
        pools = size_pools(jd, spec, groups, kept)
        echo(pools.line())
        # run: the lock's id, the writers' fence
        pool = WriterPool(jd, spec, meta, rows, dims, run, actors=pools.pool(WRITERS).actors)
        bars = stages and progress and sys.stderr.isatty()
        if bars:  # before the dataset is made: it keeps the context of its making
            _show_stage_bars()

        def stream(show: Callable[[Books], None]) -> Books:
            return stream_passes(
                items, todo, size, pools,
                lambda left, plan: build_dataset(spec, groups, left, spec.corpus.image_root, checkpoints,
                                                 writers=tuple(pool.names), pools=plan),
                lambda: size_pools(jd, spec, groups, kept), pool, show, echo, stall_timeout)

        if bars:
            books = stream(lambda books: None)
        elif progress and not sys.stderr.isatty():  # nohup, a batch scheduler: a line per commit, no redraws
            books = stream(CommitLines(len(items), lambda line: print(line, file=sys.stderr, flush=True)))
        else:
            with tqdm(total=len(items), unit="img", desc="masktok run", disable=not progress, smoothing=0.1) as bar:
                def show(books: Books) -> None:
                    bar.update(books.images - bar.n)
                    bar.set_postfix(shards=f"{already + len(books.committed)}/{shards}", failed=books.failed)

                books = stream(show)
    except Exception as exc:
        cause = _model_load_error(exc)
        if cause is None:
            raise
        raise RunError(f"a stage could not load its model: {cause}") from None
    finally:
        if started:
            ray.shutdown()
    write_failures(jd, valid_commits(jd))
    books.raise_problems()
    return RunSummary(shards, already, len(books.committed), len(items), books.failed, time.perf_counter() - t0,
                      stage_seconds_per_image(books.committed)[0],
                      retry_advice(str(jd.root), spec, (f for c in books.committed for f in c["failures"])))
