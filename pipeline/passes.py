"""The passes of a run's stream: one, unless a node leaves the cluster mid-run.

A run streams its images through the Ray Data graph once (writers.coordinate). When a node
is lost, Ray restarts its actors where there is room and redoes their batches. With auto
pools there is often no room: the pools fill every node (pools.py), so the lost node's
actors wait for resources that never come back, and the batches they held with them. The
stream then stalls: no block moves through any stage.

Ray Data ends a stream in which nothing moved for ``execution_no_progress_timeout_s`` (the
run's stall timeout, ``masktok run --stall-timeout``), shutting its actors down. If a node
left the cluster during that pass, the run starts another over the nodes left: its pools
sized anew (pools.py, the line printed again), its images those that no writer holds and no
shard has committed. The writers live on (they hold what they received; a writer restarted
elsewhere holds nothing, so its images go round again), so a lost node costs the images in
flight there, plus the stall timeout. A stall with no node lost is an error in one line.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..schemas.errors import RunError
from .pools import EPS, WRITERS, PoolPlan

if TYPE_CHECKING:  # the writers (zarr, the stages' write) load when a run starts, not with the CLI
    from .writers import Books, WriterPool

#: Seconds without any block moving through any stage before a stream is ended (Ray Data's
#: default is 30 min). masktok's choice: above the minutes a cold start of the full models
#: takes (no stage moves a block before its first actor has loaded its model).
STALL_TIMEOUT_S = 600.0
#: Seconds a new pass waits at most for the actors of the ended one to be gone.
RELEASE_TIMEOUT_S = 60.0

Item = dict[str, Any]


def alive_nodes() -> set[str]:
    """The ids of the alive nodes of the Ray cluster this process is connected to."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive", True)}


def _wait_released(pools: PoolPlan, timeout: float = RELEASE_TIMEOUT_S) -> None:
    """Wait until the stage actors of the ended pass are gone (Ray Data drops its handles to
    them; the last handle gone, Ray ends the actor): only the writers then hold CPUs and no
    GPU is held, so the next pass's pools are sized over free nodes. Returns after
    ``timeout`` anyway (another job may hold resources of the cluster)."""
    import ray

    gc.collect()  # the failed pass's dataset, its executor and their actor handles
    kept = sum(p.actors * p.cpus for p in pools.pools if p.name == WRITERS)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total, free = ray.cluster_resources(), ray.available_resources()
        if (free.get("CPU", 0.0) + kept + EPS >= total.get("CPU", 0.0)
                and free.get("GPU", 0.0) + EPS >= total.get("GPU", 0.0)):
            return
        time.sleep(0.5)


def images_left(items: list[Item], shard_size: int, books: Books, writers: WriterPool) -> list[Item]:
    """``items`` less those a writer holds and those of shards complete (committed, or
    being written)."""
    held, complete = writers.holding()
    complete |= {c["shard"] for c in books.committed}
    return [it for it in items if it["index"] not in held and it["index"] // shard_size not in complete]


def stream_passes(items: list[Item], todo: list[int], shard_size: int, pools: PoolPlan,
                  make_dataset: Callable[[list[Item], PoolPlan], Any], resize: Callable[[], PoolPlan],
                  writers: WriterPool, show: Callable[[Books], None], echo: Callable[[str], None],
                  stall_timeout: float = STALL_TIMEOUT_S) -> Books:
    """Stream ``items`` to ``writers`` (``make_dataset``: the graph of some items over some
    pools) until the writers have them all, a new pass after a node is lost (see the module
    docstring); ``resize``: the pools over the nodes alive now. Returns the run's books."""
    import ray.data
    from ray.data.exceptions import ExecutionTimeoutError
    from ray.exceptions import GetTimeoutError

    from .writers import Books, coordinate, finish

    books = Books(set(todo))
    left = items
    for number in itertools.count(1):
        nodes = alive_nodes()
        # before the dataset is made: it keeps the context of its making
        context = ray.data.DataContext.get_current()
        context.execution_no_progress_timeout_s = stall_timeout
        # a new pass starts its pools before its stall clock does (its actors load their
        # models one pool after another: slower, but a start is no stall); the first pass
        # starts them all at once, its stall timeout covering the start
        context.wait_for_min_actors_s = stall_timeout if number > 1 else -1
        if not left:  # the writers got every image before the stall ended the pass
            return finish(writers, books, show)
        try:
            return coordinate(make_dataset(left, pools), writers, books, show)
        except Exception as exc:
            lost = nodes - alive_nodes()
            if not lost:
                if isinstance(exc, (ExecutionTimeoutError, GetTimeoutError)):  # stalled, or pools not started
                    raise RunError(f"no image moved through any stage for {stall_timeout:g} s and no node was lost: "
                                   "a stage waits for resources that never come (see `ray status`); every committed "
                                   "shard is safe, the next run does exactly the shards left") from None
                raise
        _wait_released(pools)  # first: a writer restarted on another node may need their room
        left = images_left(items, shard_size, books, writers)
        pools = resize()
        echo(f"{len(lost)} node{'s' if len(lost) != 1 else ''} left the cluster during pass {number}: pass "
             f"{number + 1} streams the {len(left)} images no writer holds, over the nodes left; {pools.line()}")
    raise AssertionError("unreachable")
