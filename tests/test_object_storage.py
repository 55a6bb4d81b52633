"""A job directory on object storage (s3://), against a real S3 protocol server started by
the tests (conftest.s3_endpoint): plan writes objects, not a folder named ``s3:``; the
readers, verify and training read the same records as from a local folder; the run lock
is an object created with a conditional write; the store's refusals are one line."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.schemas.durable import write_atomic
from masktok.pipeline.lock import ObjectLock, lock_holder, run_lock
from masktok.pipeline.status import verify_job
from masktok.tiny.cache import write_tiny_cache
from masktok.pipeline.writers import describe_write_error
from masktok.schemas.errors import LockedError
from masktok.schemas.jobdir import JobDir
from masktok.trainer.data.readers import WdsImages, ZarrImages


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_plan_writes_the_job_as_objects_of_the_bucket_not_a_folder_named_s3(bucket, job_corpus, tmp_path,
                                                                             monkeypatch):
    from small_job import JOB_PLAN_ARGS

    monkeypatch.chdir(tmp_path)
    source, images = job_corpus
    res = invoke("plan", f"{bucket}/job", "--corpus", "llava-instruct", "--source", source, "--image-root", images,
                 *JOB_PLAN_ARGS)
    assert res.exit_code == 0, res.output
    assert f"wrote {bucket}/job/job.toml" in res.output and not (tmp_path / "s3:").exists()
    jd = JobDir(f"{bucket}/job")
    assert jd.remote and {p.name for p in jd.root.iterdir()} >= {"job.toml", "manifest.parquet", "plan.json"}
    status = invoke("status", jd.root, "--json")
    assert status.exit_code == 0 and json.loads(status.output)["shards_total"] == 3
    again = invoke("plan", f"{bucket}/job", "--corpus", "llava-instruct", "--source", source, "--image-root", images,
                   *JOB_PLAN_ARGS, "--set", "detect.top_k=5")
    assert again.exit_code == 1 and "already holds a different job" in again.output


@pytest.mark.parametrize("url, message, code", [
    ("s3://no-such-bucket-here/job", "bucket 'no-such-bucket-here' does not exist", 1),
    ("nosuchfs://bucket/job", "unknown protocol nosuchfs://", 2),
    ("memory://job", "memory:// lives in one process", 2),
])
def test_a_job_url_this_machine_cannot_use_is_one_line(s3_endpoint, job_corpus, url, message, code):
    res = invoke("plan", url, "--spec", "demo", "--corpus", "folder", "--source", job_corpus[1])
    assert res.exit_code == code and message in res.output, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, (OSError, ValueError))


def test_a_refused_put_is_an_oserror_naming_the_object_and_one_line_for_the_run(s3_endpoint):
    path = JobDir("s3://no-such-bucket-here/job").commit_path(2)
    with pytest.raises(OSError) as caught:
        write_atomic(path, b"{}")
    assert caught.value.filename == str(path)
    line = describe_write_error(2, caught.value)
    assert line.startswith(f"shard 2: could not write {path}: ") and "bucket does not exist" in line
    assert "\n" not in line and "every committed shard is safe" in line


def test_readers_and_verify_give_the_same_records_from_the_bucket_as_from_a_folder(caches):
    local, remote = caches
    a, b = ZarrImages(local), ZarrImages(remote)
    assert len(a) == len(b) == 12 and a.image_ids == b.image_ids
    for i in (0, 4, 5, 11):  # rows of each shard, the failed one among them (each tensor a GET)
        ra, rb = a[i], b[i]
        assert ra.keys() == rb.keys()
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{i} {key}")
    wa, wb = list(WdsImages(local, shuffle=False)), list(WdsImages(remote, shuffle=False))
    assert [r["index"] for r in wa] == [r["index"] for r in wb] == list(range(12))
    for ra, rb in zip(wa, wb):
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=key)
    assert verify_job(JobDir(remote)) == {}


def test_verify_finds_a_flipped_byte_on_the_store(bucket):
    jd = JobDir(write_tiny_cache(JobDir(f"{bucket}/cache").root, n=4, shard_size=2, failed=()))
    tar = jd.wds_path(1)
    tar.write_bytes(tar.read_bytes()[:-1] + b"!")
    assert verify_job(jd) == {1: ["shard-000001.tar: checksum differs from the commit"]}


def test_training_and_generate_read_the_cache_from_the_bucket(caches, tiny_trainer, tmp_path):
    from masktok.cli.train import generate, train

    _, remote = caches
    out = tmp_path / "run"
    for reader in ("zarr", "wds"):
        res = CliRunner().invoke(train, [
            "--stage", "2", "--cache", str(remote), "--data", str(tiny_trainer["data"]),
            "--llm", str(tiny_trainer["llm"]), "--out", str(out / reader), "--tokens", "cls,patch:9,obj:5",
            "--max-steps", "2", "--batch-size", "2", "--reader", reader, "-q"])
        assert res.exit_code == 0, res.output
        run = json.loads((out / reader / "run.json").read_text())
        assert run["cache"] == str(remote) and len((out / reader / "metrics.jsonl").read_text().splitlines()) == 2
    res = CliRunner().invoke(generate, ["--checkpoint", str(out / "zarr"), "--cache", str(remote),
                                        "--image-id", "img/000.jpg", "--prompt", "Describe the image.",
                                        "--tokens", "patch:4", "--max-new-tokens", "3"])
    assert res.exit_code == 0 and res.output.strip(), res.output


# --- the run lock on object storage ---------------------------------------------------------


def lock_path(bucket: str):
    return JobDir(f"{bucket}/job").run_lock


def plant(path, owner: dict) -> None:
    """A lock object as another driver would have left it."""
    path.write_bytes(json.dumps(owner).encode())


def test_the_lock_is_an_object_one_driver_creates_and_a_second_cannot(bucket):
    path = lock_path(bucket)
    lock = run_lock(path)
    assert isinstance(lock, ObjectLock)
    with lock:
        held = json.loads(path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert lock_holder(path)["pid"] == os.getpid()
        with pytest.raises(LockedError, match=r"already being run \(pid \d+ on .*renewed \d+ s ago\).*delete s3://"):
            run_lock(path).acquire()
    assert not path.exists() and lock_holder(path) is None


def test_a_lock_left_by_a_dead_driver_on_this_host_is_taken_over(bucket):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = lock_path(bucket)
    plant(path, {"host": socket.gethostname(), "pid": int(dead.stdout), "since": "2026-01-01T00:00:00+00:00"})
    assert lock_holder(path) is None, "a dead holder holds nothing"
    with run_lock(path) as lock:
        assert lock.took_over["pid"] == int(dead.stdout)
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_another_hosts_lock_holds_until_its_lease_runs_out(bucket, monkeypatch):
    import masktok.pipeline.lock as lock_module

    path = lock_path(bucket)
    plant(path, {"host": "gpu-node-7", "pid": 4242, "since": "2026-01-01T00:00:00+00:00"})
    with pytest.raises(LockedError, match="pid 4242 on gpu-node-7"):
        run_lock(path).acquire()
    monkeypatch.setattr(lock_module, "LEASE_S", -1.0)  # as if not renewed for longer than the lease
    with run_lock(path) as lock:
        assert lock.took_over["host"] == "gpu-node-7"


def test_of_two_drivers_taking_over_one_stale_lock_only_one_wins(bucket):
    path = lock_path(bucket)
    plant(path, {"host": "gone", "pid": 1})
    stale = path.fs.info(path.path)["ETag"]
    first, second = ObjectLock(path), ObjectLock(path)
    first._owner, second._owner = {"pid": "first"}, {"pid": "second"}
    first._put(IfMatch=stale)  # both read the stale ETag; the first replaces the object
    with pytest.raises(OSError, match="pre-conditions"):  # S3's 412 Precondition Failed
        second._put(IfMatch=stale)
    assert json.loads(path.read_text())["pid"] == "first"


def test_the_holder_renews_its_lock_object(bucket, monkeypatch):
    import masktok.pipeline.lock as lock_module

    monkeypatch.setattr(lock_module, "RENEW_S", 0.05)
    path = lock_path(bucket)
    with run_lock(path):
        first = path.fs.info(path.path)["ETag"]
        deadline = 100
        while path.fs.info(path.path, refresh=True)["ETag"] == first and deadline:
            deadline -= 1
            __import__("time").sleep(0.05)
        assert deadline, "the lock object was never renewed"


def test_a_second_driver_on_an_s3_job_is_refused_and_status_names_the_first(bucket, job_corpus):
    source, images = job_corpus
    job = f"{bucket}/job"
    assert invoke("plan", job, "--spec", "demo", "--corpus", "folder", "--source", images).exit_code == 0
    with run_lock(JobDir(job).run_lock):  # as a driver on another machine holds it
        refused = invoke("run", job)
        assert refused.exit_code == 1 and "already being run" in refused.output
        assert json.loads(invoke("status", job, "--json").output)["running"]["pid"] == os.getpid()
    assert json.loads(invoke("status", job, "--json").output)["running"] is None
