"""Auto-sized actor pools (pipeline/pools.py), the run's lines off a terminal
(pipeline/progress.py) and what status shows of the pools; no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masktok.pipeline.pools import Node, PoolsDoNotFit, group_costs, plan_pools
from masktok.pipeline.progress import CommitLines, commit_line
from masktok.schemas.spec import JobSpec, fingerprint, load_spec, spec_from_dict
from masktok.stages.topology import topology

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def llava() -> JobSpec:
    return load_spec(JOBS / "llava_pretrain.toml")


def plan(spec: JobSpec, nodes: list[Node], measured: dict[str, float] | None = None):
    groups = topology(spec)
    costs, _ = group_costs([(g.name, [s.name for s in g.stages]) for g in groups], measured or {})
    return plan_pools([(g.name, g.resources) for g in groups], spec.write.resources, nodes, costs,
                      writers_node=nodes[0].id)


def gpus_used(p) -> float:
    return sum(pool.actors * pool.gpus for pool in p.pools)


def test_the_bundled_llava_specs_are_auto_and_fill_an_8_gpu_node():
    spec = llava()
    assert {g.name: g.resources.actors for g in topology(spec)} == dict.fromkeys(
        ["decode", "detect", "segment", "filter", "invert"], "auto")
    p = plan(spec, [Node("a", 96, 8, 1000)])
    assert {q.name: q.actors for q in p.pools} == {"decode": 8, "detect": 8, "segment": 8, "filter": 48,
                                                    "invert": 8, "writers": 4}
    assert gpus_used(p) == 8
    assert p.line().startswith("cluster: 1 node, 8 GPUs, 96 CPUs; pools (estimated costs): decode 8, "
                               "detect 8 x 0.25 GPU, segment 8 x 0.25 GPU, filter 48, invert 8 x 0.5 GPU, writers 4")
    assert p.as_json()["pools"]["invert"] == {"actors": 8, "gpus": 4.0, "cpus": 8.0}
    assert p.as_json()["cluster"] == {"nodes": 1, "gpus": 8.0, "cpus": 96.0}


def test_auto_actors_leave_the_fingerprint_as_an_integer_had_it():
    import tomllib

    doc = tomllib.loads((JOBS / "llava_pretrain.toml").read_text())
    for section in ("decode", "detect", "segment", "filter", "invert"):
        doc.setdefault(section, {}).setdefault("resources", {})["actors"] = 1
    assert fingerprint(spec_from_dict(doc)) == fingerprint(llava())


def test_measured_seconds_set_the_proportions_of_the_gpu_pools():
    """invert measured 3x detect and segment per image: it gets about 3x their actors, and
    every GPU still gets work."""
    measured = {"decode": 0.01, "prepare": 0.01, "detect": 0.1, "segment": 0.1, "background": 0.01,
                "filter": 0.1, "prepare_masks": 0.01, "invert": 0.3}
    p = plan(llava(), [Node("a", 96, 8, 1000)], measured)
    sizes = {q.name: q.actors for q in p.pools}
    assert sizes["invert"] >= 2.5 * sizes["detect"] and sizes["detect"] == sizes["segment"]
    assert gpus_used(p) == pytest.approx(8)


def test_pools_spread_over_nodes_and_fractions_stay_on_one_gpu():
    spec = spec_from_dict({s: {"resources": {"gpus": 0.75, "cpus": 1}} for s in ("detect", "segment", "invert")})
    p = plan(spec, [Node("a", 32, 2, 100), Node("b", 32, 2, 100)])
    # a 0.75 share cannot share a GPU with another: 4 GPUs hold 4 actors, a quarter of each idle
    assert sum(q.actors for q in p.pools if q.gpus) == 4 and gpus_used(p) == 3
    assert p.idle[0].startswith("1 GPUs idle (no room for another actor of")


def test_cpu_pools_are_capped_by_the_cpus_and_the_line_says_so():
    p = plan(llava(), [Node("a", 32, 8, 1000)])
    sizes = {q.name: q.actors for q in p.pools}
    assert gpus_used(p) == 8 and sizes["decode"] + sizes["filter"] == 32 - 24 - 4
    assert "CPU-bound: decode 1 of the 8 the GPU pools need, filter 3 of the 48" in p.line()


def test_a_fixed_pool_keeps_its_size():
    spec = spec_from_dict({"detect": {"resources": {"actors": 2, "gpus": 0.25}}, "segment": {"resources": {"gpus": 0.25}},
                           "invert": {"resources": {"gpus": 0.5}}})
    assert plan(spec, [Node("a", 64, 4, 1000)]).pool("detect").actors == 2


@pytest.mark.parametrize("nodes, message", [
    ([Node("a", 96, 0, 1000)], r"^the spec asks for 1 GPUs \(detect 0.25, segment 0.25, invert 0.5\) and the Ray "
                               r"cluster has 0: lower them"),
    ([Node("a", 6, 8, 1000)], r"^the \w+ pool does not fit the Ray cluster \(6 CPUs, 8 GPUs, 1000 GB\): decode 1 x 1 CPU"),
    ([Node("a", 96, 8, 15)], r"^the segment pool does not fit the Ray cluster .* segment 1 x 1 CPU \+ 0.25 GPU \+ 8 GB"),
    ([Node("a", 2, 8, 1000)], r"^the shard writers do not fit on the driver's node \(2 CPUs, 8 GPUs, 1000 GB\): "
                              r"4 x 1 CPU \+ 3 GB; lower write.resources"),
])
def test_pools_that_cannot_fit_are_refused_in_one_line(nodes, message):
    with pytest.raises(PoolsDoNotFit, match=message) as refused:
        plan(llava(), nodes)
    assert "\n" not in str(refused.value)


def test_a_commit_line_off_a_terminal():
    commit = {"shard": 17, "rows": [17000, 18000], "images_failed": 3, "images": 1000,
              "failures": [{"stage": "decode"}, {"stage": "invert"}, {"stage": "decode"}],
              "stage_seconds": {"decode": 10.0, "invert": 410.0}}
    assert commit_line(commit, 18000, 566000, 18000 / 9.4) == (
        "shard 17: 1000 images (3 failed: decode 2, invert 1), 9.40 images/s, ETA 16.2 h, slowest invert 0.410 s/image")
    assert commit_line({**commit, "images_failed": 0, "stage_seconds": None}, 10, 20, 10.0) == (
        "shard 17: 1000 images, 1.00 images/s, ETA 10 s")


def test_one_line_per_new_commit_and_none_for_a_round_without_one():
    class Books:
        images, committed = 0, []

    lines: list[str] = []
    clock = iter([0.0, 10.0, 20.0, 30.0])
    show = CommitLines(6, lines.append, clock=lambda: next(clock))
    books = Books()
    books.images, books.committed = 3, [{"shard": 0, "rows": [0, 3], "images_failed": 0}]
    show(books)
    show(books)
    books.images, books.committed = 6, books.committed + [{"shard": 1, "rows": [3, 6], "images_failed": 0}]
    show(books)
    assert lines == ["shard 0: 3 images, 3.33 s/image, ETA 10 s", "shard 1: 3 images, 3.33 s/image, ETA 0 s"]


def test_status_shows_the_last_runs_pools_and_cluster(tmp_path):
    from masktok.pipeline.status import job_status, status_lines
    from masktok.schemas.jobdir import JobDir
    from test_status_timing import write_job

    jd = JobDir(tmp_path / "job")
    write_job(jd, [])
    assert job_status(jd)["pools"] is None and job_status(jd)["cluster"] is None
    p = plan(llava(), [Node("a", 96, 8, 1000)])
    jd.pools.write_text(json.dumps({**p.as_json(), "line": p.line()}))
    s = job_status(jd)
    assert s["cluster"] == {"nodes": 1, "gpus": 8.0, "cpus": 96.0}
    assert s["pools"]["detect"] == {"actors": 8, "gpus": 2.0, "cpus": 8.0}
    assert f"pools   {p.line()} (the last run)" in status_lines(s)
