"""A writer presumed dead that is not (issue 34): a shard writer paused (SIGSTOP) mid-shard
while its run loses the job (its driver died), another run takes the job over and commits
the shard with other results, then the paused writer is resumed (SIGCONT). The fence
(pipeline/lock.check_holder, before each write of a shard) makes it write nothing more: the
committed shard stays the new run's, and verify passes. Without the fence the resumed
writer's tar and commit land over the new run's, whose Zarr rows they do not match.

The whole scenario runs on a local job (the same writer code writes to S3; on the tests'
S3 server it costs ~25 s more on the shared machine); on object storage, the hand-over
itself is tested: a lock whose renewals stopped for longer than its (short) lease is taken
over, and the fence then refuses the old run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paused_writer import DIMS, FINGERPRINT, MANIFEST, ROWS, SIZE, new_items

from masktok.pipeline.lock import FileLock, StaleRun, check_holder, run_lock
from masktok.pipeline.status import verify_job
from masktok.pipeline.writers import ShardWriter
from masktok.schemas.commits import read_commits
from masktok.schemas.errors import LockedError
from masktok.schemas.jobdir import JobDir
from masktok.schemas.record import Status
from masktok.schemas.storage import open_zarr
from masktok.stages.write import open_store

HELPER = Path(__file__).with_name("paused_writer.py")
DEADLINE_S = 120  # the helper starts Python, zarr and masktok: seconds on a loaded machine


def wait_until_stopped(proc: subprocess.Popen) -> None:
    """Until the helper has stopped itself (it fails the test if it exits instead)."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid and os.WIFSTOPPED(status):
            return
        if pid:
            raise AssertionError(f"the writer exited before pausing: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the writer never paused")


def presume_dead(lock) -> None:
    """The old run's driver is gone, its writers live on: on a file system its flock is
    released by the kernel and its content stays (the driver died); on object storage its
    renewals stop (a paused or partitioned driver) and the lock object stays."""
    if isinstance(lock, FileLock):
        lock._fh.close()
        lock._fh = None
    else:
        lock._stop.set()
        lock._renewer.join()
        lock._renewer = None


def take_over(jd: JobDir, monkeypatch):
    """The next run takes the job (on object storage once the old lock's short lease ran out)."""
    import masktok.pipeline.lock as lock_module

    monkeypatch.setattr(lock_module, "LEASE_S", 1.0)  # the lease a test can wait out
    end = time.monotonic() + DEADLINE_S
    while True:
        try:
            return run_lock(jd.run_lock).acquire()
        except LockedError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_a_writer_paused_past_its_runs_hold_writes_nothing_after_another_run_took_its_shard(tmp_path, monkeypatch):
    jd = JobDir(tmp_path / "job")
    jd.root.mkdir()
    open_store(jd.tokens, ROWS, SIZE, DIMS)
    old = run_lock(jd.run_lock).acquire()
    proc = subprocess.Popen([sys.executable, str(HELPER), str(jd.root), old.run], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until_stopped(proc)
        presume_dead(old)
        new = take_over(jd, monkeypatch)
        assert new.took_over["run"] == old.run
        writer = ShardWriter(str(jd.root), ROWS, SIZE, DIMS.as_dict(), FINGERPRINT, MANIFEST, True, False, new.run)
        assert "commit" in writer.commit(0, {item["index"]: item for item in new_items()})
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err[-3000:]
    assert verify_job(jd) == {}, "the committed shard does not match what is on disk"
    commit = read_commits(jd)[0]
    assert commit["images_failed"] == 0 and commit["images_ok"] == SIZE, "the old run's commit landed"
    assert (open_zarr(jd.tokens, mode="r")["status"][:SIZE] == Status.OK).all()
    stale = json.loads(out.strip().splitlines()[-1])
    assert "another run took the job over" in stale.get("error", ""), stale
    new.release()


def test_on_object_storage_a_lock_not_renewed_past_its_lease_is_taken_over_and_fences_the_old_run(bucket,
                                                                                               monkeypatch):
    jd = JobDir(f"{bucket}/job")
    old = run_lock(jd.run_lock).acquire()
    check_holder(jd.run_lock, old.run)  # the holder's own writes pass
    presume_dead(old)
    new = take_over(jd, monkeypatch)
    assert new.took_over["run"] == old.run
    with pytest.raises(StaleRun, match="another run took the job over"):
        check_holder(jd.run_lock, old.run)
    check_holder(jd.run_lock, new.run)
    new.release()
    with pytest.raises(StaleRun, match="names no run"):  # a finished run's lock fences everyone
        check_holder(jd.run_lock, new.run)
