"""The Ray Data execution graph: one actor pool per group of the stage topology
(stages/topology.py), with that group's resources; each actor builds its group's models and
stages once.

Ray Data moves each image as one item (a dict of the batch contract in ``masktok.stages``):
its large arrays as tensor columns, the rest pickled (transport.py). After each group, an
array no later stage reads (``transport.ARRAY_COLUMNS``: the full-resolution image after
``prepare``, each model's input after its model) is no longer carried. The last group hands
the finished items to the shard writers (writers.py); no image reaches the driver.

An exception that escapes a stage for a whole batch is retried item by item; an item
that still raises becomes a failure of that stage, so one bad image never stops a job
(stages/chain.py, the same code ``masktok ask`` runs the stages with).
An actor that dies is restarted by Ray and its batch redone.

Each stage call is timed by the chain (stages/chain.timed_stage), not in the stages (they stay plain Python): every item of
the batch gets an equal share of the call's wall seconds under ``item["stage_seconds"]``
(stage name -> seconds), which the shard writer sums per shard into the commit file
(pipeline/commit.py). The record writers never read that key.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import quiet_model_libraries
from ..schemas.spec import JobSpec
from ..stages.chain import run_chain
from ..stages.topology import Group, build_group
from .pools import Pool, PoolPlan
from .transport import ARRAY_COLUMNS, from_columns, to_columns

Item = dict[str, Any]


class StageGroup:
    """A Ray Data callable class: builds group ``index`` of the run's topology (``groups``,
    computed once by the driver) once per actor
    (models loaded on the actor's device), runs its stages in order. The last group hands
    its finished items to the shard writers named ``writers`` (pipeline/writers.py) and
    returns no rows."""

    def __init__(self, spec: JobSpec, groups: list[Group], index: int, image_root: str, checkpoints: dict[str, str],
                 writers: tuple[str, ...] = ()):
        quiet_model_libraries()
        self.stages = build_group(spec, groups[index], image_root, checkpoints)
        self.columns = columns_after(groups, index)
        self.shard_size = spec.shards.size
        self.writers = []
        if index == len(groups) - 1 and writers:
            import ray

            self.writers = [ray.get_actor(name) for name in writers]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = run_chain(self.stages, from_columns(batch))
        if self.writers:
            return deliver(items, self.writers, self.shard_size)
        return to_columns(items, self.columns)


def named_stage_group(name: str) -> type[StageGroup]:
    """StageGroup under the group's name: Ray Data names each operator, its progress bar
    (`masktok run --stages`) and its actors' processes after the class,
    ``MapBatches(StageGroup[detect])`` instead of five alike ``MapBatches(StageGroup)``."""
    return type(f"StageGroup[{name}]", (StageGroup,), {"__module__": __name__})


def deliver(items: list[Item], writers: list[Any], shard_size: int) -> dict[str, np.ndarray]:
    """Hand each item to its shard's writer and wait until every writer holds them. The
    batch returned to Ray Data is empty: the writers tell the driver what they hold."""
    import ray

    from .writers import writer_of

    by_writer: dict[int, list[Item]] = {}
    for item in items:
        by_writer.setdefault(writer_of(item["index"] // shard_size, len(writers)), []).append(item)
    ray.get([writers[w].hold.remote(batch) for w, batch in by_writer.items()])
    return {"index": np.zeros(0, dtype=np.int64)}


def columns_after(groups: list[Group], index: int) -> tuple[str, ...]:
    """The arrays carried out of group ``index``: those a stage of a later group reads (none
    out of the last group: the writer reads none)."""
    later = {stage.name for group in groups[index + 1:] for stage in group.stages}
    return tuple(name for name in ARRAY_COLUMNS if ARRAY_COLUMNS[name].last_reader in later)


def pool_strategy(pool: Pool):
    """Ray Data's ActorPoolStrategy of one group: fixed for an integer ``actors``, autoscaling
    from the sized start (``min_size``) with no upper bound for ``auto``."""
    import ray.data

    if not pool.auto:
        return ray.data.ActorPoolStrategy(size=pool.actors)
    return ray.data.ActorPoolStrategy(min_size=pool.actors, max_size=None)


def build_dataset(spec: JobSpec, groups: list[Group], items: list[Item], image_root: str,
                  checkpoints: dict[str, str], *, pools: PoolPlan, writers: tuple[str, ...] = ()):
    """The lazy Ray Dataset that turns planned items into finished ones, one actor pool per
    group of ``groups`` (the spec's topology): handed to the shard writers named ``writers``
    (it then has no rows), or its rows. ``pools`` (pools.py) sizes each pool: an auto pool
    starts at its size and may grow (Ray Data's autoscaling pool, within the resources it
    sees); a fixed one keeps its size."""
    import ray.data

    # One image per block. Ray Data merges a task's output into blocks of up to
    # target_max_block_size bytes, and a downstream actor takes a whole block as one unit
    # of work: big blocks serialise the pipeline and hold results back until the end.
    ray.data.DataContext.get_current().target_max_block_size = 1
    ds = ray.data.from_items([{"item": blob} for blob in to_columns(items, ())["item"]],
                             override_num_blocks=max(1, min(len(items), 256)))
    for i, group in enumerate(groups):
        res = group.resources
        ds = ds.map_batches(
            named_stage_group(group.name), fn_constructor_args=(spec, groups, i, image_root, checkpoints, tuple(writers)),
            batch_size=res.batch_size,
            batch_format="numpy",
            compute=pool_strategy(pools.pool(group.name)), num_cpus=res.cpus,
            num_gpus=res.gpus,
            **({"memory": int(res.memory_gb * 1e9)} if res.memory_gb else {}),
            # the last group hands its items to the writers and returns no rows
            udf_modifying_row_count=bool(writers) and i == len(groups) - 1,
        )
    return ds
