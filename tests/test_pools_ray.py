"""Auto-sized pools on a `ray start` cluster with declared GPUs (no GPU needed: the stages
run on the CPU, as pick_device does): every GPU gets work, status shows the pools, the
tokens equal a run with one actor per stage; a pool that cannot fit is refused in one line.
Every run is a subprocess with a timeout (Ray waits forever when it cannot place work)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import psutil
from ray_cluster import head_node, node_processes, process_name, ray_workers, stage_actors, worker_node
from s3_server import free_port
from small_job import MASKTOK, RUN_TIMEOUT, plan_job, run_masktok

from masktok.schemas.jobdir import JobDir
from masktok.schemas.storage import open_zarr

pytestmark = pytest.mark.xdist_group("ray")

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
#: The model stages ask 0.25 / 0.25 / 0.5 GPU and half a CPU; decode and filter half a CPU;
#: the writer none: 4 GPUs' worth of model actors (12 x 0.5 CPU) and one of each CPU group
#: fill the 7 CPUs the head declares, so no further actor starts on 2 cores.
GPU_JOB = ["--set", "detect.resources.gpus=0.25", "--set", "segment.resources.gpus=0.25",
           "--set", "invert.resources.gpus=0.5", "--set", "decode.resources.cpus=0.5",
           "--set", "write.resources.cpus=0", *[arg for section in ("decode", "detect", "segment", "filter", "invert")
                                                for arg in ("--set", f'{section}.resources.actors="auto"')]]
HEAD_CPUS, HEAD_GPUS = 7, 4


@pytest.fixture(scope="module")
def gpu_cluster():
    """A `ray start --head` node declaring 4 GPUs and 7 CPUs (stopped by its process group)."""
    with head_node(free_port(), env=ENV, num_cpus=HEAD_CPUS, num_gpus=HEAD_GPUS) as address:
        yield address


def arrays(jd) -> dict[str, np.ndarray]:
    z = open_zarr(jd.tokens, mode="r")
    return {name: z[name][:] for name in z.array_keys()}


def assert_same_tokens(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Equal arrays; floats within rounding (other batches, other float sums), as the
    resume test of test_run.py."""
    assert sorted(a) == sorted(b)
    for name in a:
        if a[name].dtype.kind == "f":
            tol = 2e-3 if a[name].dtype == np.float16 else 1e-5
            np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_auto_pools_use_every_declared_gpu_and_give_the_tokens_of_one_actor_each(
        tmp_path, job_corpus, finished_job, gpu_cluster):
    jd = plan_job(tmp_path / "auto", job_corpus, *GPU_JOB)
    # stderr is a pipe, not a TTY: one line per commit instead of a bar
    proc = subprocess.Popen([MASKTOK, "run", str(jd.root), "--ray-address", gpu_cluster], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    actors: set[int] = set()  # the stage actors Ray started for the run (they live until its end)
    deadline = time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        actors |= set(stage_actors(gpu_cluster))
        time.sleep(1)  # the actors live until the run ends: a second between looks misses none
    stdout, stderr = proc.communicate(timeout=60)
    run = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert len(actors) >= 4 + 4 + 4 + 1 + 1, "Ray Data did not start the pools as sized"
    assert ("cluster: 1 node, 4 GPUs, 7 CPUs; pools (estimated costs): decode 1, detect 4 x 0.25 GPU, "
            "segment 4 x 0.25 GPU, filter 1, invert 4 x 0.5 GPU, writers 1; CPU-bound: decode 1 of the 4") in run.stdout
    lines = [line for line in run.stderr.splitlines() if line.startswith("shard ")]
    assert sorted(line.split(":")[0] for line in lines) == ["shard 0", "shard 1", "shard 2"], run.stderr[-3000:]
    assert all(re.fullmatch(r"shard \d: 3 images( \(1 failed: decode 1\))?, [\d.]+ (images/s|s/image), "
                            r"ETA [\d.]+ (s|min|h), slowest \w+ [\d.]+ s/image", line) for line in lines), lines
    assert "\r" not in run.stderr, "no bar redraws off a terminal"
    status = json.loads(run_masktok("status", jd.root, "--json").stdout)
    assert status["cluster"] == {"nodes": 1, "gpus": 4.0, "cpus": 7.0}
    assert {name: pool["gpus"] for name, pool in status["pools"].items() if pool["gpus"]} == {
        "detect": 1.0, "segment": 1.0, "invert": 2.0}
    assert status["pools"]["invert"] == {"actors": 4, "gpus": 2.0, "cpus": 2.0}
    assert_same_tokens(arrays(finished_job), arrays(jd))  # the demo spec: 1 actor per stage, local Ray


def test_a_pool_that_cannot_fit_the_cluster_is_refused_in_one_line(tmp_path, finished_job, gpu_cluster):
    jd = JobDir(tmp_path / "big")  # the finished job less its commits: its shards are to run again
    shutil.copytree(finished_job.root, jd.root)
    shutil.rmtree(jd.commits)
    result = run_masktok("run", jd.root, "--ray-address", gpu_cluster, "-q", "--set", "invert.resources.memory_gb=100000",
                         check=False, env=ENV, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("Error: the invert pool does not fit the Ray cluster "
                                                       "(7 CPUs, 4 GPUs, "), result.stderr
    assert not list(jd.commits.glob("shard-*.json"))


def test_a_lost_worker_node_costs_only_its_images_in_flight(tmp_path, finished_job, gpu_cluster):
    """A second node (`ray start --address`, 2 CPUs of its own) joins before the run: the
    pools are sized over both nodes and the head is full, so the extra CPU actors start on
    it. Its processes (raylet and workers) are killed by their process group as soon as one
    of its stage actors is up, while the run has work left: the run ends 0 with the tokens of
    the one-actor run."""
    jd = JobDir(tmp_path / "lost")
    shutil.copytree(finished_job.root, jd.root)
    shutil.rmtree(jd.commits)
    with worker_node(gpu_cluster, env=ENV, num_cpus=2) as node:
        proc = subprocess.Popen([MASKTOK, "run", str(jd.root), "--ray-address", gpu_cluster, "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        killed, done_at_kill = None, -1
        deadline = time.monotonic() + RUN_TIMEOUT
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            processes = node_processes(node)
            on_node = [p.pid for p in processes if "StageGroup" in process_name(p)]
            if on_node:
                killed, done_at_kill = on_node, len(list(jd.commits.glob("shard-*.json")))
                for p in processes:  # the node is lost: its raylet and workers, by their ids
                    p.kill()
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, out[-3000:]
    assert "cluster: 2 nodes, 4 GPUs, 9 CPUs" in out, out[-3000:]
    assert killed, "no stage actor started on the second node"
    assert done_at_kill < 3, "the node should be lost while work remains"
    assert_same_tokens(arrays(finished_job), arrays(jd))
    assert run_masktok("verify", jd.root).returncode == 0


#: Only invert on GPUs, two per actor, its pool auto-sized (2 actors on the head: the head's
#: GPUs all taken) and one image per task; every other group one CPU actor.
JOIN_JOB = ["--set", "invert.resources.gpus=2", "--set", 'invert.resources.actors="auto"',
            "--set", "invert.resources.batch_size=1"]


def test_a_node_that_joins_mid_run_gets_actors(tmp_path, job_corpus, finished_job, gpu_cluster):
    """The head's 4 GPUs are the 2 invert actors'. The shard writer is paused (SIGSTOP) as
    soon as it exists: no shard commits, every image ends in invert's queue (9 tasks for 2
    actors). Once the run is still (on 2 cores a node cannot join while a run starts its
    actors: its dashboard agent misses the raylet's deadline, ray-project/ray#65983), a node
    of 2 CPUs and 2 GPUs joins: Ray Data's autoscaling pool grows onto it, the only place with
    free GPUs. The writer resumes; the run ends 0 with the tokens of the one-actor run."""
    jd = plan_job(tmp_path / "join", job_corpus, *JOIN_JOB)
    proc = subprocess.Popen([MASKTOK, "run", str(jd.root), "--ray-address", gpu_cluster, "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    writer, joined = None, []
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while writer is None and proc.poll() is None and time.monotonic() < deadline:
            # this cluster's writer: the demo beside the Ray group runs a ShardWriter of its own
            writer = next((psutil.Process(pid) for pid in ray_workers(gpu_cluster, "ShardWriter")), None)
            time.sleep(0.2)
        assert writer is not None, "the run started no shard writer"
        writer.suspend()
        while proc.poll() is None and time.monotonic() < deadline and not still(gpu_cluster, invert=2):
            pass
        with worker_node(gpu_cluster, env=ENV, num_cpus=2, num_gpus=2, tries=2) as node:
            while not joined and proc.poll() is None and time.monotonic() < deadline:
                joined = [process_name(p) for p in node_processes(node) if "StageGroup" in process_name(p)]
                time.sleep(1)
            writer.resume()
            out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if writer is not None and writer.is_running():
            writer.resume()
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "cluster: 1 node, 4 GPUs, 7 CPUs; pools (estimated costs): decode 1, detect 1, segment 1, filter 1, " \
           "invert 2 x 2 GPU" in out, out[-3000:]
    assert joined and all("StageGroup[invert]" in name for name in joined), (joined, out[-2000:])
    assert_same_tokens(arrays(finished_job), arrays(jd))


def still(address: str, invert: int, seconds: float = 2, cpu_seconds: float = 0.2) -> bool:
    """Whether the run on ``address`` is still: its ``invert`` invert actors are up and its stage
    actors together used under ``cpu_seconds`` of CPU in the next ``seconds`` (Ray's own
    threads in each worker tick a little). Earlier in the run, some actor is loading its
    model or working: pools start together, and work is waiting for them."""
    actors = stage_actors(address)

    def used() -> float:
        total = 0.0
        for pid in actors:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    before = used()
    time.sleep(seconds)
    up = sum("StageGroup[invert]" in name for name in actors.values())
    return up >= invert and used() - before < cpu_seconds
