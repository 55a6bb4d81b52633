"""`masktok run`, `status`, `verify`: the Ray job end to end with tiny models.

Most tests read the session's one finished job (``finished_job``, conftest.py); those that
need a job of their own plan it the same way (tests/small_job.py). Every run is a
subprocess with a timeout (Ray waits forever when it cannot place work)."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from masktok.schemas.jobdir import JobDir
from masktok.stages.checkpoints import resolve_checkpoints
from masktok.stages.topology import build_group, topology
from masktok.pipeline.run import load_job
from masktok.schemas.commits import valid_commits
from masktok.schemas.manifest import read_manifest
from masktok.schemas.storage import open_zarr
from ray_cluster import head_node, stage_actors
from s3_server import free_port
from small_job import JOB_IMAGES as IMAGES, MASKTOK, RUN_TIMEOUT, plan_job as plan, run_masktok as masktok

# Every test that starts Ray runs in one pytest-xdist worker, one after the other (`make test`
# runs two workers): two local Rays at once would fight over 2 cores. The `ray start` cluster
# is stopped by its own process group (tests/ray_cluster.py), never by `ray stop`.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture
def finished(finished_job):
    return finished_job


@pytest.fixture
def corpus(job_corpus):
    return job_corpus


def arrays(jd):
    z = open_zarr(jd.tokens, mode="r")
    return {name: z[name][:] for name in z.array_keys()}


def test_zarr_equals_webdataset_equals_the_stages(finished):
    z = arrays(finished)
    samples = {}
    for tar in sorted(finished.wds.glob("shard-*.tar")):
        samples.update({int(s["__key__"]): s for s in wds.WebDataset(str(tar), shardshuffle=False).decode()})
    manifest = read_manifest(finished.manifest).to_pylist()
    assert sorted(samples) == [row["index"] for row in manifest] == list(range(len(IMAGES)))

    spec, _ = load_job(finished)
    items = [{k: row[k] for k in ("index", "image_id", "path")} for row in manifest]
    checkpoints = resolve_checkpoints(spec, finished.models)
    for group in topology(spec):
        for _, stage in build_group(spec, group, spec.corpus.image_root, checkpoints, device="cpu"):
            items = stage(items)
    for item in items:
        i, s = item["index"], samples[item["index"]]
        assert z["image_id"][i] == s["json"]["image_id"] == item["image_id"]
        if "error" in item:
            assert z["status"][i] == s["json"]["status"] == 2
            continue
        k = int(z["num_objects"][i])
        assert z["status"][i] == 1 and k == len(item["object_tokens"]) == s["json"]["num_objects"] == 5
        for name in ("object_tokens", "boxes", "scores", "keep_rank", "inversion_loss"):
            np.testing.assert_array_equal(z[name][i, :k], s[f"{name}.npy"])
            np.testing.assert_allclose(z[name][i, :k].astype(np.float32), np.asarray(item[name], np.float32),
                                       rtol=2e-3, atol=2e-3)
        np.testing.assert_array_equal(z["patch_tokens"][i], s["patch_tokens.npy"])
        np.testing.assert_allclose(z["global_token"][i].astype(np.float32), item["global_token"], rtol=2e-3, atol=2e-3)
        assert z["width"][i] == item["width"] and z["height"][i] == item["height"]


def test_bad_images_are_recorded_and_the_others_complete(finished):
    z = arrays(finished)
    failures = pq.read_table(finished.failures).to_pylist()
    assert [(f["image_id"], f["stage"]) for f in failures] == [("quirks/broken.jpg", "decode")]
    assert (z["status"] == 1).sum() == len(IMAGES) - 1
    status = json.loads(masktok("status", finished.root, "--json").stdout)
    assert status["images_total"] == len(IMAGES) and status["images_done"] == len(IMAGES) - 1
    assert status["images_failed"] == 1 and status["shards_total"] == status["shards_committed"] == 3


def test_every_stage_that_ran_is_timed_in_the_commits_and_status(finished):
    spec, _ = load_job(finished)
    stages = [stage.name for group in topology(spec) for stage in group.stages]
    for commit in valid_commits(finished).values():
        assert list(commit["stage_seconds"]) == stages and all(s > 0 for s in commit["stage_seconds"].values())
        assert commit["images"] == commit["rows"][1] - commit["rows"][0]
    status = json.loads(masktok("status", finished.root, "--json").stdout)
    assert list(status["stage_seconds"]) == stages and all(s > 0 for s in status["stage_seconds"].values())
    assert status["stage_seconds_images"] == len(IMAGES)
    slowest = max(stages, key=status["stage_seconds"].get)
    assert f"stages  slowest: {slowest}, " in masktok("status", finished.root).stdout


def test_stages_shows_a_bar_per_stage_group_with_its_actors_in_a_terminal(finished, finished_run_output):
    """`masktok run --stages` in a terminal (the session's finished job): Ray Data's bar of
    each stage group, named after it, with its tasks, actors and rows, instead of masktok's one
    bar; the summary still ends the run."""
    text = finished_run_output
    spec, _ = load_job(finished)
    assert set(re.findall(r"MapBatches\(StageGroup\[(\w+)\]\): Tasks: \d+; Actors: \d+", text)) == {
        group.name for group in topology(spec)}, text[-3000:]
    assert re.search(r"[\d.]+/9(\.00)? \[", text), "rows done out of the 9 images"
    assert "masktok run:" not in text, "the one bar is replaced by the stage bars"
    assert "committed 3 shards (9 images, 1 failed)" in text


def test_a_committed_job_reruns_as_a_no_op(finished):
    def snapshot():  # every byte of the job (run.lock names the last run's holder)
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in finished.root.rglob("*")
                if p.is_file() and p.name != "run.lock"}

    before = snapshot()
    out = masktok("run", finished.root, "-q").stdout
    assert "nothing to do" in out
    assert snapshot() == before, "a rerun of a committed job changes nothing"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, job_corpus, s3_endpoint, ray_cluster):
    """A job (over its own copy of the images) killed with SIGKILL between its first and its
    last commit, then resumed on a `ray start` cluster, where one of its stage workers is
    killed too (as the OOM killer would). Yields its JobDir, its image root, the commits the
    kill left, the resume's output and the worker it killed, and the arrays and verify
    result right after it. One job for both: each Ray run costs half a minute of the suite
    (so `--retry-failed`, which only uncommits shards before a run like this one, is tested
    without Ray: test_resume_refusals.py).

    Its job directory is on S3 (the local test server): the arrays are compared with the
    local ``finished`` job, so this is also the check that a job on object storage gives the
    same tokens. What a local resume does differently, the flock (released by the kernel)
    and the sweep of a killed writer's temp files, is tested without Ray (test_writers.py,
    test_resume_refusals.py)."""
    from s3_server import new_bucket

    root = tmp_path_factory.mktemp("resumed")
    images = root / "images"
    shutil.copytree(job_corpus[1], images)
    jd = plan(f"{new_bucket('resumed')}/b", job_corpus, image_root=images)
    assert jd.remote
    env = {**os.environ, **RAY_CLIENT_ENVIRONMENT,
           "XDG_CACHE_HOME": str(root / "cache")}  # where a URL job's tiny presets are built
    # killed on a local Ray of its own (beside the session's cluster): its processes die with it
    proc = subprocess.Popen([MASKTOK, "run", str(jd.root), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.time() + RUN_TIMEOUT
    while not list(jd.commits.glob("shard-*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    ray_processes = [p for p in psutil.Process(proc.pid).children(recursive=True)  # workers, writers, raylet
                     if not p.name().endswith("Agent")]  # the dashboard's agents linger, writing nothing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Ray's processes die with their driver (a writer may finish the commit it was writing
    # first): count the commits once they are gone
    _, alive = psutil.wait_procs(ray_processes, timeout=60)
    assert not alive, f"Ray processes outlived their killed driver: {alive}"
    committed = len(list(jd.commits.glob("shard-*.json")))
    out, killed, done_at_kill = run_killing_a_stage_worker(jd, ray_cluster, env)
    return {"jd": jd, "images": images, "committed": committed, "out": out, "killed": killed,
            "done_at_kill": done_at_kill, "arrays": arrays(jd), "env": env,
            "verify": masktok("verify", jd.root, check=False).returncode}


def run_killing_a_stage_worker(jd, address: str, env: dict) -> tuple[str, int | None, int]:
    """`masktok run` on the cluster, SIGKILL of the first stage worker seen; returns the
    run's output (it must succeed), the pid killed and the commits there were then."""
    proc = subprocess.Popen([MASKTOK, "run", str(jd.root), "--ray-address", address, "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    killed, done_at_kill = None, -1
    deadline = time.time() + RUN_TIMEOUT
    while killed is None and time.time() < deadline and proc.poll() is None:
        # a Ray worker takes its actor's name ("ray::MapWorker(MapBatches(StageGroup[decode]))...")
        # when the actor is created; kill the first one of this cluster seen (the demo's Ray
        # runs beside), while its stage has work
        killed = next(iter(stage_actors(address)), None)
        if killed is not None:
            done_at_kill = len(list(jd.commits.glob("shard-*.json")))
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, out[-3000:]
    return out, killed, done_at_kill


#: What a driver of the test cluster needs in its environment: Ray turns token
#: authentication on once ~/.ray/auth_token exists (a local run writes it); off, so that any
#: machine is alike.
RAY_CLIENT_ENVIRONMENT = {"RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint) -> str:
    """A one-node Ray cluster started as a user starts one (``ray start --head``), for the
    runs of this module that join one (``--ray-address``); no dashboard (its processes cost
    CPU the other tests need). The S3 server's variables are set first: the cluster's
    workers take the raylet's environment. Yields the address."""
    with head_node(free_port(), env={**os.environ, **RAY_CLIENT_ENVIRONMENT}) as address:
        yield address


def test_killed_run_resumes_to_the_same_arrays(resumed, finished):
    committed = resumed["committed"]
    assert 1 <= committed < 3, "the kill should land between the first and the last commit"
    assert "took over the lock of a dead run" in resumed["out"] and f"{committed} already committed" in resumed["out"]
    a, b = arrays(finished), resumed["arrays"]
    for name in a:
        if a[name].dtype.kind == "f":  # batches differ between the runs: float rounding may too
            tol = 2e-3 if a[name].dtype == np.float16 else 1e-5
            np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert resumed["verify"] == 0


def test_a_tiny_llama_trains_from_the_resumed_job_on_s3(resumed, tmp_path):
    from masktok.trainer.runtime import TrainConfig
    from masktok.tiny.llm import build_tiny_llm
    from masktok.trainer.train import train

    jd = resumed["jd"]
    caption = "a picture of shapes"
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": im, "image": im, "conversations": [
        {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": caption}]} for im in IMAGES]))
    llm = build_tiny_llm(tmp_path / "llm", ["Describe it.", caption], hidden=32)
    summary = train(TrainConfig(stage=2, cache=jd.root, data=data, llm=llm, out=tmp_path / "out", batch_size=2,
                                max_steps=2, tokens="cls,patch:4,obj:2"))
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    assert json.loads((tmp_path / "out" / "run.json").read_text())["cache"] == str(jd.root)


def test_changed_spec_is_refused(finished):
    refused = masktok("run", finished.root, "--set", "detect.top_k=7", check=False)
    assert refused.returncode == 1 and "detect.top_k: 4 -> 7" in refused.stderr
    allowed = masktok("run", finished.root, "--set", "invert.resources.batch_size=2", "-q")
    assert "nothing to do" in allowed.stdout


def test_verify_names_a_flipped_byte_and_repair_uncommits_it(tmp_path, finished):
    jd = JobDir(tmp_path / "copy")
    shutil.copytree(finished.root, jd.root)
    assert masktok("verify", jd.root).returncode == 0
    tar = jd.wds / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0x01
    tar.write_bytes(bytes(data))
    bad = masktok("verify", jd.root, check=False)
    assert bad.returncode == 1 and "shard 1:" in bad.stdout and "shard-000001.tar" in bad.stdout
    assert "shard 0" not in bad.stdout and "shard 2" not in bad.stdout
    masktok("verify", jd.root, "--repair", check=False)
    status = json.loads(masktok("status", jd.root, "--json").stdout)
    assert status["shards_committed"] == 2 and status["images_pending"] == 3


def test_a_dead_worker_is_replaced_and_the_job_finishes(resumed):
    """On a `ray start` cluster: a stage worker killed mid-run (as the OOM killer would) is
    restarted by Ray Data and the job completes with the same tokens (the arrays: the test
    above), and nothing of Ray's reaches the terminal."""
    out = resumed["out"]
    assert resumed["killed"] is not None, "no stage worker was found to kill"
    assert resumed["done_at_kill"] < 3, "the worker should die while work remains"
    # quiet: the workers' own logs ("(MapWorker(...) pid=...) ...") stay in Ray's log folder,
    # and so do Ray's Python notices in the driver ("2026-... INFO/WARNING ...") and its C++
    # core worker's ("[2026-... E ...] core_worker.cc: ... constructor arguments ...")
    assert not [line for line in out.splitlines() if line.startswith("(") and "pid=" in line], out[-3000:]
    assert not [line for line in out.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)], out[-3000:]
    assert not [line for line in out.splitlines() if re.match(r"\[\d{4}-\d\d-\d\d ", line)], out[-3000:]


def test_a_checkpoint_that_cannot_load_stops_the_run_with_one_line(tmp_path, corpus, ray_cluster):
    """The CLIP actor's load fails: `masktok run` prints that reason as its one line, exit 1;
    none of Ray's traceback ("(raylet) Task ... failed", Ray Data's "Full stack trace"). The
    masks are tiles, so no detector or SAM actor starts (each costs seconds of CPU to import)
    and only CLIP's actor loads a model."""
    bad = tmp_path / "ViT-L-14-336px.pt"
    bad.write_bytes(b"<html>404</html>")  # what a failed download leaves
    jd = plan(tmp_path / "bad", corpus, "--set", 'masks.source="tiles"', "--set", f"invert.checkpoint={bad}")
    result = masktok("run", jd.root, "--ray-address", ray_cluster, "-q", check=False,
                     env={**os.environ, **RAY_CLIENT_ENVIRONMENT})
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"Error: a stage could not load its model: cannot load CLIP checkpoint {bad} as 'masktok-tiny-clip': "
                     "not a torch checkpoint (torch.save writes a zip archive, or a pickle before torch 1.6)"], lines
    assert "Traceback" not in result.stdout + result.stderr and not list(jd.commits.glob("shard-*.json"))


def test_a_model_that_cannot_load_in_an_actor_is_one_clear_line():
    from masktok.pipeline.run import _model_load_error
    from masktok.schemas.errors import ModelLoadError

    remote = RuntimeError("The actor died because of an error raised in its creation task, ray::MapWorker:\n"
                          "Traceback (most recent call last):\n  File \"segment.py\", line 148\n"
                          "masktok.schemas.errors.ModelLoadError: SAM checkpoint /w/sam.pth does not match model_type 'vit_b'")
    wrapper = ValueError("execution failed")
    wrapper.__cause__ = remote
    assert _model_load_error(wrapper) == "SAM checkpoint /w/sam.pth does not match model_type 'vit_b'"
    assert _model_load_error(ModelLoadError("no such file")) == "no such file"
    assert _model_load_error(ValueError("a bug")) is None


def test_a_local_ray_declares_cpus_for_every_actor(monkeypatch):
    """Every stage actor's CPUs (an auto pool's first), the writers' and one for reading, rounded
    up; never fewer than the machine's (Ray Data would wait forever on a reservation the node
    cannot grant)."""
    import masktok.pipeline.run as run_module
    from masktok.schemas.spec import JobSpec

    spec = JobSpec.model_validate({"decode": {"resources": {"actors": 6, "cpus": 1.5}},
                                   "write": {"resources": {"actors": 2, "cpus": 1}}})
    groups = topology(spec)
    wanted = 6 * 1.5 + sum(g.resources.cpus for g in groups[1:]) + 2 + 1  # the others are auto: 1 actor each
    assert wanted > 12
    monkeypatch.setattr(run_module.os, "cpu_count", lambda: 2)
    assert run_module.local_ray_cpus(groups, spec) == int(wanted + 0.999)
    monkeypatch.setattr(run_module.os, "cpu_count", lambda: 64)
    assert run_module.local_ray_cpus(groups, spec) == 64
