"""`masktok run`, `status`, `verify`: the Ray job end to end with tiny models.

Every run is a subprocess with a timeout (Ray waits forever when it cannot place work)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import zarr

from masktok.pipeline.demo_corpus import write_demo_corpus
from masktok.pipeline.graph import operator_groups
from masktok.pipeline.jobdir import JobDir
from masktok.pipeline.models import resolve_checkpoints
from masktok.pipeline.run import load_job
from masktok.schemas.manifest import read_manifest

MASKTOK = str(Path(sys.executable).parent / "masktok")
IMAGES = ["scenes/000.png", "scenes/001.jpg", "scenes/002.jpg", "scenes/003.jpg", "scenes/004.png",
          "quirks/broken.jpg", "quirks/cmyk.jpg", "quirks/animated.gif", "quirks/rgba.png"]
SMALL = ["--set", "detect.top_k=4", "--set", "invert.iterations=2", "--shard-size", "3"]
RUN_TIMEOUT = 300


def masktok(*args, timeout=RUN_TIMEOUT, check=True):
    result = subprocess.run([MASKTOK, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"masktok {args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_demo_corpus(root)
    source = root / "small.json"
    source.write_text(json.dumps([{"id": str(i), "image": im, "conversations": []} for i, im in enumerate(IMAGES)]))
    return source, root / "images"


def plan(job, corpus, *extra):
    source, images = corpus
    masktok("plan", job, "--spec", "demo", "--corpus", "llava-instruct", "--source", source, "--image-root", images,
            *SMALL, *extra, "-q")
    return JobDir(job)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    """A job run once, uninterrupted."""
    jd = plan(tmp_path_factory.mktemp("jobs") / "a", corpus)
    masktok("run", jd.root, "-q")
    return jd


def arrays(jd):
    z = zarr.open_group(jd.tokens, mode="r")
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
    for _, _, factories in operator_groups(spec, spec.corpus.image_root, resolve_checkpoints(spec, finished)):
        for _, make in factories:
            items = make()(items)
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


def test_a_committed_job_reruns_as_a_no_op(finished):
    start = time.perf_counter()
    out = masktok("run", finished.root, "-q").stdout
    assert "nothing to do" in out and time.perf_counter() - start < 30


def test_killed_run_resumes_to_the_same_arrays(tmp_path, corpus, finished):
    jd = plan(tmp_path / "b", corpus)
    proc = subprocess.Popen([MASKTOK, "run", str(jd.root), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + RUN_TIMEOUT
    while not list(jd.commits.glob("shard-*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    committed = len(list(jd.commits.glob("shard-*.json")))
    assert 1 <= committed < 3, "the kill should land between the first and the last commit"
    out = masktok("run", jd.root, "-q").stdout
    assert "took over the lock of a dead run" in out and f"{committed} already committed" in out
    a, b = arrays(finished), arrays(jd)
    for name in a:
        if a[name].dtype.kind == "f":  # batches differ between the runs: float rounding may too
            tol = 2e-3 if a[name].dtype == np.float16 else 1e-5
            np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert masktok("verify", jd.root).returncode == 0


def test_changed_spec_is_refused(finished):
    refused = masktok("run", finished.root, "--set", "detect.top_k=7", check=False)
    assert refused.returncode == 1 and "detect.top_k: 4 -> 7" in refused.stderr
    allowed = masktok("run", finished.root, "--set", "invert.resources.batch_size=2", "-q")
    assert "nothing to do" in allowed.stdout


def test_a_running_job_cannot_be_run_twice(tmp_path, corpus):
    from masktok.pipeline.lock import RunLock

    jd = plan(tmp_path / "c", corpus)
    with RunLock(jd.root / "run.lock"):  # as a run in another process holds it
        refused = masktok("run", jd.root, check=False)
        assert refused.returncode == 1 and "already being run" in refused.stderr
        assert json.loads(masktok("status", jd.root, "--json").stdout)["running"]["pid"] == os.getpid()
        replan = masktok("plan", jd.root, "--spec", "demo", "--corpus", "folder", "--source", corpus[1], "--force",
                         check=False)
        assert replan.returncode == 1 and "already being run" in replan.stderr
    assert json.loads(masktok("status", jd.root, "--json").stdout)["running"] is None


def test_verify_names_a_flipped_byte_and_repair_uncommits_it(tmp_path, finished):
    import shutil

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


def test_a_dead_worker_is_replaced_and_the_job_finishes(tmp_path, corpus, finished):
    jd = plan(tmp_path / "d", corpus)
    proc = subprocess.Popen([MASKTOK, "run", str(jd.root), "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.time() + RUN_TIMEOUT
    while killed is None and time.time() < deadline and proc.poll() is None:
        workers = subprocess.run(["pgrep", "-f", r"MapBatches\(StageGroup\)"], capture_output=True, text=True).stdout.split()
        done = len(list(jd.commits.glob("shard-*.json")))
        if workers and done:
            killed, done_at_kill = int(workers[-1]), done
            os.kill(killed, signal.SIGKILL)  # as the OOM killer would
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert killed is not None, "no Ray worker was found to kill"
    assert done_at_kill < 3, "the worker should die while work remains"
    assert proc.returncode == 0, out[-3000:]
    status = json.loads(masktok("status", jd.root, "--json").stdout)
    assert status["shards_committed"] == 3 and status["images_done"] == len(IMAGES) - 1
    np.testing.assert_allclose(arrays(jd)["global_token"], arrays(finished)["global_token"], rtol=2e-3, atol=2e-3)


def test_retry_failed_redoes_the_failed_images(tmp_path, corpus):
    import shutil

    source, images = corpus
    local = tmp_path / "images"
    shutil.copytree(images, local)
    jd = JobDir(tmp_path / "e")
    masktok("plan", jd.root, "--spec", "demo", "--corpus", "llava-instruct", "--source", source, "--image-root", local,
            *SMALL, "-q")
    masktok("run", jd.root, "-q")
    assert json.loads(masktok("status", jd.root, "--json").stdout)["images_failed"] == 1
    shutil.copy(local / "scenes/001.jpg", local / "quirks/broken.jpg")  # the file is mended
    out = masktok("run", jd.root, "--retry-failed", "-q").stdout
    assert "running 1 of 3 shards" in out
    status = json.loads(masktok("status", jd.root, "--json").stdout)
    assert status["images_failed"] == 0 and status["images_done"] == len(IMAGES)
    assert pq.read_table(jd.failures).num_rows == 0


def test_a_model_that_cannot_load_in_an_actor_is_one_clear_line():
    from masktok.pipeline.run import _model_load_error
    from masktok.stages.errors import ModelLoadError

    remote = RuntimeError("The actor died because of an error raised in its creation task, ray::MapWorker:\n"
                          "Traceback (most recent call last):\n  File \"segment.py\", line 148\n"
                          "masktok.stages.errors.ModelLoadError: SAM checkpoint /w/sam.pth does not match model_type 'vit_b'")
    wrapper = ValueError("execution failed")
    wrapper.__cause__ = remote
    assert _model_load_error(wrapper) == "SAM checkpoint /w/sam.pth does not match model_type 'vit_b'"
    assert _model_load_error(ModelLoadError("no such file")) == "no such file"
    assert _model_load_error(ValueError("a bug")) is None


def test_gpus_the_cluster_lacks_are_refused_not_waited_for():
    from masktok.pipeline.errors import RunError
    from masktok.pipeline.run import check_gpus_fit
    from masktok.schemas.spec import JobSpec

    with pytest.raises(RunError, match=r"asks for 3 GPUs \(detect 1, segment 1, invert 1\) and the Ray cluster has 0"):
        check_gpus_fit(JobSpec(), 0.0)
    check_gpus_fit(JobSpec(), 3.0)  # fits
    cpu_only = JobSpec.model_validate({s: {"resources": {"gpus": 0.0}} for s in ("detect", "segment", "invert")})
    check_gpus_fit(cpu_only, 0.0)
