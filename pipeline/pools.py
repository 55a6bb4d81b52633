"""How many actors each stage group and the shard writers get on this cluster (issue 31).

A group whose ``[stage.resources] actors`` is an integer gets exactly that many (a fixed
pool). A group with ``actors = "auto"`` is sized here, at the start of each run, from the
nodes Ray reports (each node's CPUs, GPUs and ``memory``):

1. Every pool gets its first actor, the shard writers theirs (on the driver's node when the
   job directory is local, pipeline/writers.py), and every fixed pool its actors. What does
   not fit is refused in one line (:class:`PoolsDoNotFit`): Ray Data would wait forever.
2. The GPU groups share the GPUs in proportion to their cost: one actor at a time goes to
   the group with the most seconds per image per actor left to cover (``cost / actors``),
   while a node has room for it (a GPU share of its size on one GPU, its CPUs and memory),
   until no GPU group's next actor fits: every GPU gets work.
3. The CPU groups (and the writers, when auto) grow the same way up to what the GPUs they
   feed need (``ceil(images/s of the GPU groups x cost)``; with no GPU group, until the CPUs
   run out), within the CPUs and memory left.

A group's cost is its stages' mean wall seconds per image per actor as this job's commits
recorded them (``stage_seconds``), once every stage of the job has been timed; before that,
:data:`ESTIMATED_SECONDS`, masktok's estimate (not measured): 10 images/s per actor of each
model stage (the rate docs/scale.md sizes for; the bundled specs' 0.25 + 0.25 + 0.5 GPU
pack one actor of each onto one GPU), decode + prepare 0.1 s and background + filter +
prepare_masks 0.6 s of CPU per image (docs/scale.md "CPU figures"), and a writer 100
images/s (half of what ``make bench BENCH=sink`` measured, for headroom).

An auto pool starts at the size found here and may grow (Ray Data's autoscaling
``ActorPoolStrategy(min_size=, max_size=None)``: its actor autoscaler adds actors to a pool
whose queue is long, within the resources it sees: a node that joins mid-run gets actors
of those pools, docs/scale.md); the next run, or the next pass (passes.py), sizes the pools
over every node. The writers are plain actors: their count is fixed for the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..schemas.errors import RunError
from ..schemas.spec import Resources

EPS = 1e-9
WRITERS = "writers"

#: Seconds per image per actor of each stage before any commit timed it (masktok's estimate,
#: see the module docstring); a stage not listed counts 0.01.
ESTIMATED_SECONDS = {"decode": 0.05, "prepare": 0.05, "detect": 0.1, "segment": 0.1, "boxes": 0.01, "tiles": 0.01,
                     "background": 0.05, "filter": 0.5, "prepare_masks": 0.05, "invert": 0.1}
#: Images per second one shard writer is counted on for (auto writers).
WRITER_IMAGES_PER_S = 100.0


class PoolsDoNotFit(RunError):
    """A pool's actors ask for more than the cluster's nodes hold."""


@dataclass(frozen=True)
class Node:
    """One alive Ray node's resources (``memory_gb``: Ray's ``memory`` resource)."""

    id: str
    cpus: float
    gpus: float
    memory_gb: float


@dataclass
class Pool:
    """One pool as sized for a run: ``actors`` to start with, each with these resources."""

    name: str
    actors: int
    cpus: float
    gpus: float
    memory_gb: float | None
    auto: bool

    @classmethod
    def starting(cls, name: str, res: Resources, gpus: float | None = None) -> Pool:
        """The pool of ``res`` at its first actors (``gpus``: its own ask if not given)."""
        return cls(name, res.first_actors, res.cpus, res.gpus if gpus is None else gpus, res.memory_gb, res.auto)

    def describe(self) -> str:
        """``detect 8 x 0.25 GPU`` / ``filter 48``."""
        return f"{self.name} {self.actors}" + (f" x {self.gpus:g} GPU" if self.gpus else "")

    def as_json(self) -> dict[str, Any]:
        """Totals of the pool: {"actors", "gpus", "cpus"} (status --json "pools")."""
        return {"actors": self.actors, "gpus": _round(self.actors * self.gpus), "cpus": _round(self.actors * self.cpus)}


@dataclass
class PoolPlan:
    """The cluster as found and every pool's size; ``idle``: what stays unused and why."""

    nodes: list[Node]
    pools: list[Pool]  # the stage groups in pipeline order, then the writers
    idle: list[str] = field(default_factory=list)
    costs: str = "estimated"  # or "measured over N images"

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    @property
    def cluster(self) -> dict[str, Any]:
        return {"nodes": len(self.nodes), "gpus": _round(sum(n.gpus for n in self.nodes)),
                "cpus": _round(sum(n.cpus for n in self.nodes))}

    def line(self) -> str:
        """The run's first word on resources: ``cluster: 1 node, 8 GPUs, 96 CPUs; pools: ...``."""
        c = self.cluster
        nodes = f"{c['nodes']} node{'s' if c['nodes'] != 1 else ''}"
        pools = ", ".join(p.describe() for p in self.pools)
        idle = "; ".join(self.idle) if self.idle else "nothing idle"
        return f"cluster: {nodes}, {c['gpus']:g} GPUs, {c['cpus']:g} CPUs; pools ({self.costs} costs): {pools}; {idle}"

    def as_json(self) -> dict[str, Any]:
        """What the job directory keeps of this run's pools (``pools.json``, status --json)."""
        return {"cluster": self.cluster, "pools": {p.name: p.as_json() for p in self.pools},
                "idle": self.idle, "costs": self.costs}


def _round(x: float) -> float:
    return float(f"{x:.6g}")


class Placement:
    """The nodes' free resources, filled one actor at a time as Ray would place them: a
    fraction of a GPU on one GPU (the fullest that still holds it), whole GPUs as whole."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.cpus = [n.cpus for n in nodes]
        self.memory = [n.memory_gb for n in nodes]
        self.gpus = [[1.0] * int(n.gpus + EPS) + ([n.gpus % 1] if n.gpus % 1 > EPS else []) for n in nodes]

    def place(self, pool: Pool, node: str | None = None) -> bool:
        """Reserve one actor of ``pool`` (on node id ``node`` if given); False if none has room."""
        for i, n in enumerate(self.nodes):
            if node is not None and n.id != node:
                continue
            if self.cpus[i] + EPS < pool.cpus or self.memory[i] + EPS < (pool.memory_gb or 0.0):
                continue
            slots = self._gpu_slots(i, pool.gpus)
            if slots is None:
                continue
            for slot, share in slots:
                self.gpus[i][slot] -= share
            self.cpus[i] -= pool.cpus
            self.memory[i] -= pool.memory_gb or 0.0
            return True
        return False

    def _gpu_slots(self, i: int, gpus: float) -> list[tuple[int, float]] | None:
        free = self.gpus[i]
        if gpus <= EPS:
            return []
        if gpus < 1:
            fits = [j for j, left in enumerate(free) if left + EPS >= gpus]
            return [(min(fits, key=free.__getitem__), gpus)] if fits else None
        whole = [j for j, left in enumerate(free) if left > 1 - EPS]
        need = math.ceil(gpus - EPS)
        return [(j, 1.0) for j in whole[:need]] if len(whole) >= need else None

    def free_gpus(self) -> float:
        return sum(sum(g) for g in self.gpus)

    def free_cpus(self) -> float:
        return sum(self.cpus)


def group_costs(groups: list[tuple[str, list[str]]], measured: dict[str, float]) -> tuple[dict[str, float], bool]:
    """Seconds per image per actor of each group (its stages summed), and whether they were
    measured: ``measured`` (the commits' ``stage_seconds`` per image) when it times every
    stage of every group, else :data:`ESTIMATED_SECONDS`."""
    stages = [s for _, names in groups for s in names]
    use = bool(stages) and all(measured.get(s, 0) > 0 for s in stages)
    source = measured if use else ESTIMATED_SECONDS
    return {name: max(sum(source.get(s, 0.01) for s in names), EPS) for name, names in groups}, use


def plan_pools(groups: list[tuple[str, Resources]], writers: Resources, nodes: list[Node],
               costs: dict[str, float], writers_node: str | None = None, costs_from: str = "estimated") -> PoolPlan:
    """Size every pool (see the module docstring). ``groups``: (name, resources) in pipeline
    order; ``costs``: seconds per image per actor by group name; ``writers_node``: the node
    the writers must run on (None: any). Raises :class:`PoolsDoNotFit`."""
    place = Placement(nodes)
    pools = [Pool.starting(name, res) for name, res in groups]
    writer = Pool.starting(WRITERS, writers, gpus=0.0)
    _check_gpus_exist(pools, nodes)
    for _ in range(writer.actors):
        if not place.place(writer, writers_node):
            where = "the driver's node" if writers_node else "any node"
            raise PoolsDoNotFit(f"the shard writers do not fit on {where} ({_nodes_text(nodes, writers_node)}): "
                                f"{writer.actors} x {_ask_text(writer)}; lower write.resources.actors, .cpus "
                                "or .memory_gb for this run (--set write.resources.cpus=0.5)")
    for pool in pools:
        for _ in range(pool.actors):
            if not place.place(pool):
                raise PoolsDoNotFit(f"the {pool.name} pool does not fit the Ray cluster ({_nodes_text(nodes)}): "
                                    f"{_asks_text(pools, writer)}; lower {_section(pool.name)}.resources (actors, "
                                    "cpus, gpus, memory_gb) for this run, e.g. --set "
                                    f"{_section(pool.name)}.resources.cpus=0.5")
    idle: list[str] = []
    gpu_pools = [p for p in pools if p.gpus > 0]
    blocked = _grow([p for p in gpu_pools if p.auto], place, costs, target=None)
    rate = min((p.actors / costs[p.name] for p in gpu_pools), default=None)
    cpu_auto = [p for p in pools if p.auto and p.gpus == 0]
    targets = {p.name: math.ceil(rate * costs[p.name] - EPS) if rate else None for p in cpu_auto}
    blocked += _grow(cpu_auto, place, costs, targets)
    if writer.auto:
        rate = min((p.actors / costs[p.name] for p in pools), default=WRITER_IMAGES_PER_S)
        blocked += _grow([writer], place, {WRITERS: 1 / WRITER_IMAGES_PER_S},
                         {WRITERS: math.ceil(rate / WRITER_IMAGES_PER_S - EPS)}, writers_node)
    if place.free_gpus() > EPS:
        why = (f"no room for another actor of {', '.join(blocked)}" if blocked and gpu_pools
               else "no pool asks for GPUs" if not gpu_pools else "the fixed pools ask for no more")
        idle.append(f"{_round(place.free_gpus()):g} GPUs idle ({why})")
    short = [f"{p.name} {p.actors} of the {targets[p.name]} the GPU pools need" for p in cpu_auto
             if targets[p.name] and p.actors < targets[p.name]]
    if short:
        idle.append(f"CPU-bound: {', '.join(short)} (no CPUs or memory left for more: the GPU stages will wait on them)")
    if place.free_cpus() > EPS:
        idle.append(f"{_round(place.free_cpus()):g} CPUs free (for Ray Data's own tasks and pool growth)")
    return PoolPlan(nodes, [*pools, writer], idle, costs_from)


def _grow(pools: list[Pool], place: Placement, costs: dict[str, float], target: dict[str, int | None] | None,
          node: str | None = None) -> list[str]:
    """One actor at a time to the pool with the most seconds per image per actor, while its
    next actor fits (and it is under its target); returns the pools stopped for lack of room."""
    growing = [p for p in pools if (target or {}).get(p.name) is None or p.actors < target[p.name]]
    blocked = []
    while growing:
        pool = max(growing, key=lambda p: costs[p.name] / p.actors)
        if pool.cpus <= EPS and pool.gpus <= EPS and not pool.memory_gb and (target or {}).get(pool.name) is None:
            growing.remove(pool)  # asks for nothing: nothing to size it from
            continue
        if not place.place(pool, node):
            growing.remove(pool)
            blocked.append(pool.name)
            continue
        pool.actors += 1
        if target and target.get(pool.name) is not None and pool.actors >= target[pool.name]:
            growing.remove(pool)
    return blocked


def _check_gpus_exist(pools: list[Pool], nodes: list[Node]) -> None:
    """Ray Data waits forever, silently, for GPUs the cluster does not have: refuse instead."""
    asked = {p.name: p.actors * p.gpus for p in pools if p.gpus}
    have = sum(n.gpus for n in nodes)
    if sum(asked.values()) > have + EPS:
        detail = ", ".join(f"{name} {n:g}" for name, n in asked.items())
        raise PoolsDoNotFit(f"the spec asks for {sum(asked.values()):g} GPUs ({detail}) and the Ray cluster has "
                            f"{have:g}: lower them for this run, e.g. --set invert.resources.gpus=0 (CPU), "
                            f"or fractions such as 0.25 to share one GPU")


def _section(pool: str) -> str:
    return "write" if pool == WRITERS else pool


def _ask_text(pool: Pool) -> str:
    parts = [f"{pool.cpus:g} CPU"] + ([f"{pool.gpus:g} GPU"] if pool.gpus else [])
    return " + ".join(parts + ([f"{pool.memory_gb:g} GB"] if pool.memory_gb else []))


def _asks_text(pools: list[Pool], writer: Pool) -> str:
    return ", ".join(f"{p.name} {p.actors} x {_ask_text(p)}" for p in [*pools, writer])


def _nodes_text(nodes: list[Node], only: str | None = None) -> str:
    shown = [n for n in nodes if only is None or n.id == only]
    return "; ".join(f"{n.cpus:g} CPUs, {n.gpus:g} GPUs, {n.memory_gb:.0f} GB" for n in shown) or "no node"


def cluster_nodes() -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to."""
    import ray

    return [Node(n["NodeID"], n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0),
                 n["Resources"].get("memory", 0.0) / 1e9)
            for n in ray.nodes() if n.get("Alive", True)]
