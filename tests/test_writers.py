"""Shard writers: actors that own disjoint shards, write and commit each once they hold all of
it, and report to the driver; any number of writers gives the same bytes, a dead writer loses
only its own uncommitted shards, a failed write is one line and leaves nothing half-written."""

import hashlib
import os
import signal
import time

import numpy as np
import pytest
import zarr

from masktok.pipeline.commit import verify_shard
from masktok.schemas.durable import sweep_temp_files, write_atomic
from masktok.tiny.cache import tiny_items
from masktok.pipeline.writers import Books, ShardWriter, WriterPool, WriterStopped, coordinate, writer_of
from masktok.schemas.commits import read_commits
from masktok.schemas.errors import RunError
from masktok.schemas.jobdir import JobDir
from masktok.schemas.spec import JobSpec
from masktok.schemas.storage import open_zarr
from masktok.stages.write import TokenDims, open_store

DIMS = TokenDims(K=6, D=16, C=24)
ROWS, SIZE = 22, 4  # 6 shards, the last one short
META = {"fingerprint": "sha256:writers", "manifest_digest": "sha256:manifest"}
ITEMS = tiny_items(ROWS, DIMS, failed=(5,))
TIMING = ("committed_at", "stage_seconds", "images")  # commit keys that are no result


def new_job(root) -> JobDir:
    jd = JobDir(root)
    if not jd.remote:
        jd.root.mkdir(parents=True)
    open_store(jd.tokens, ROWS, SIZE, DIMS)
    return jd


def spec_with(writers: int) -> JobSpec:
    return JobSpec.model_validate({"shards": {"size": SIZE}, "write": {"resources": {"actors": writers, "cpus": 0.5}}})


def plain_writer(jd: JobDir) -> ShardWriter:
    return ShardWriter(str(jd.root), ROWS, SIZE, DIMS.as_dict(), META["fingerprint"], META["manifest_digest"],
                       True, False)


def outputs(jd: JobDir) -> dict:
    """Everything a run leaves that is a result: array values, tar bytes, commits less timing."""
    z = open_zarr(jd.tokens, mode="r")
    return {"arrays": {name: z[name][:] for name in z.array_keys()},
            "tars": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(jd.wds.glob("*.tar"))},
            "commits": {s: {k: v for k, v in c.items() if k not in TIMING} for s, c in read_commits(jd).items()}}


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a["arrays"].keys() == b["arrays"].keys()
    for name in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][name], b["arrays"][name], err_msg=name)
    assert a["tars"] == b["tars"] and len(a["tars"]) == -(-ROWS // SIZE)
    assert a["commits"] == b["commits"]


def test_consecutive_shards_belong_to_different_writers():
    assert [writer_of(s, 3) for s in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_a_writer_commits_a_shard_once_it_holds_all_of_it_and_reports_what_it_lacks(tmp_path):
    jd = new_job(tmp_path / "job")
    writer = plain_writer(jd)
    assert writer.hold(ITEMS[4:7]) == 3  # shard 1 is rows 4..7: one missing
    assert writer.hold(ITEMS[0:3] + ITEMS[0:2]) == 3  # a redelivered item counts once
    assert writer.report() == {"new_images": 6, "results": []}
    assert writer.hold(ITEMS[3:4]) == 1  # completes shard 0
    assert writer.hold(ITEMS[0:4]) == 0, "a batch redone after its shard was written is not written again"
    done = writer.finish()
    assert done["incomplete"] == {1: 3} and done["new_images"] == 1
    (result,) = done["results"]
    assert result["commit"]["rows"] == [0, 4] and verify_shard(jd, writer.group, result["commit"]) == []
    assert sorted(read_commits(jd)) == [0]
    books = Books({0, 1})
    books.take(done)
    with pytest.raises(RunError, match=r"shards \[1\] stay uncommitted \(a shard writer died.*run again"):
        books.raise_problems()


def test_a_full_disk_is_one_line_naming_shard_and_path_and_leaves_no_temp_file(tmp_path):
    jd = new_job(tmp_path / "job")
    writer = plain_writer(jd)
    jd.wds.mkdir()
    # the tar's temp name points at /dev/full: the kernel's own ENOSPC on the write
    tmp = jd.wds / f".shard-000001.tar.tmp-{os.getpid()}"
    tmp.symlink_to("/dev/full")
    writer.hold(ITEMS[4:8])
    done = writer.finish()
    line = done["results"][0]["error"]
    assert "\n" not in line and line.startswith("shard 1: could not write ")
    assert str(jd.wds / "shard-000001.tar") in line and "No space left on device" in line
    assert "free space" in line and "run again" in line
    assert not os.path.lexists(tmp) and list(jd.wds.iterdir()) == [] and not jd.commits.exists()
    books = Books({1})
    books.take(done)
    with pytest.raises(RunError, match="^shard 1: could not write"):
        books.raise_problems()


def test_a_stopping_run_takes_no_more_images_but_keeps_what_it_committed(tmp_path):
    jd = new_job(tmp_path / "job")
    writer = plain_writer(jd)
    writer.hold(ITEMS[0:4])
    writer.stop()  # after a failed write: the stages get an error, the stream ends
    with pytest.raises(WriterStopped):
        writer.hold(ITEMS[4:8])
    assert [r["shard"] for r in writer.finish()["results"]] == [0] and sorted(read_commits(jd)) == [0]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "commit.json"
    target.write_bytes(b"old")
    (tmp_path / f".commit.json.tmp-{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(OSError) as info:
        write_atomic(target, b"new" * 10000)
    assert info.value.filename == str(target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["commit.json"]


def test_the_next_run_sweeps_temp_files_a_killed_writer_left(tmp_path):
    (tmp_path / "wds").mkdir()
    left = tmp_path / "wds" / ".shard-000003.tar.tmp-4242"
    left.write_bytes(b"half a tar")
    kept = tmp_path / "wds" / "shard-000002.tar"
    kept.write_bytes(b"a committed tar")
    assert sweep_temp_files(tmp_path / "wds", tmp_path / "commits") == [left]
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == [kept.name]


# --- the writer actors on a local Ray ---------------------------------------------------

@pytest.fixture(scope="module")
def ray_local(s3_endpoint):  # the S3 server's variables set before Ray's workers start
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Deliver, for workers that cannot import tests/
    # a Ray of its own, beside the session's cluster (conftest.ray_cluster)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


class Deliver:
    """A last stage group without models: hands its (already finished) items to the writers."""

    def __init__(self, writers: tuple[str, ...]):
        import ray

        self.writers = [ray.get_actor(name) for name in writers]

    def __call__(self, batch):
        from masktok.pipeline.graph import deliver
        from masktok.pipeline.transport import from_columns

        return deliver(from_columns(batch), self.writers, SIZE)


def write_through_ray(jd: JobDir, writers: int, shards: list[int]) -> Books:
    """The finished items of ``shards`` through Ray Data to ``writers`` writer actors, with
    the driver's loop (``coordinate``) as ``masktok run`` has it."""
    import ray.data

    from masktok.pipeline.transport import to_columns

    pool = WriterPool(jd, spec_with(writers), META, ROWS, DIMS)
    items = [it for it in ITEMS if it["index"] // SIZE in shards]
    ds = ray.data.from_items([{"item": blob} for blob in to_columns(items, ())["item"]], override_num_blocks=8)
    ds = ds.map_batches(Deliver, fn_constructor_args=(tuple(pool.names),), batch_size=3, num_cpus=0.5,
                        compute=ray.data.ActorPoolStrategy(size=1))
    return coordinate(ds, pool, Books(set(shards)))


@pytest.fixture(scope="module")
def one_writer(ray_local, tmp_path_factory):
    """Every shard written by one writer: what the tests below compare with."""
    jd = new_job(tmp_path_factory.mktemp("writers") / "one")
    books = write_through_ray(jd, 1, list(range(6)))
    books.raise_problems()
    assert sorted(c["shard"] for c in books.committed) == list(range(6)) and books.failed == 1
    assert books.images == ROWS
    return outputs(jd)


@pytest.mark.xdist_group("ray")
def test_one_writer_and_three_writers_write_the_same_bytes(one_writer, tmp_path):
    three = new_job(tmp_path / "three")
    write_through_ray(three, 3, list(range(6))).raise_problems()
    assert_same_outputs(one_writer, outputs(three))
    group = zarr.open_group(three.tokens, mode="r")
    assert all(verify_shard(three, group, c) == [] for c in read_commits(three).values())


@pytest.mark.xdist_group("ray")
@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_killed_writer_loses_only_its_shards_and_the_next_run_does_exactly_them(ray_local, one_writer, tmp_path,
                                                                                 storage, request):
    ray = ray_local
    jd = new_job(tmp_path / "killed" if storage == "local" else f"{request.getfixturevalue('bucket')}/killed")
    assert jd.remote == (storage == "s3")
    pool = WriterPool(jd, spec_with(2), META, ROWS, DIMS)
    by_shard = {s: [it for it in ITEMS if it["index"] // SIZE == s] for s in range(6)}
    # shards 0..3 held but 1 and 3 not complete (their last image is still to come)
    ray.get([pool.actors[writer_of(s, 2)].hold.remote(by_shard[s][:3 if s % 2 else SIZE]) for s in range(4)],
            timeout=60)
    victim = pool.pids()[1]
    os.kill(victim, signal.SIGKILL)  # writer 1 held shards 1 and 3
    deadline = time.time() + 60
    while time.time() < deadline:  # Ray restarts it, holding nothing
        try:
            if ray.get(pool.actors[1].pid.remote(), timeout=10) != victim:
                break
        except ray.exceptions.RayError:
            time.sleep(0.5)
    # the stream goes on: the last images of shards 1 and 3, then shards 4 and 5
    rest = {1: by_shard[1][3:], 3: by_shard[3][3:], 4: by_shard[4], 5: by_shard[5]}
    ray.get([pool.actors[writer_of(s, 2)].hold.remote(items) for s, items in rest.items()], timeout=60)
    books = Books(set(range(6)))
    for report in pool.finish():
        books.take(report)
    assert sorted(c["shard"] for c in books.committed) == [0, 2, 4, 5]
    assert books.uncommitted() == [1, 3] and books.lost == {1: 1, 3: 1}
    with pytest.raises(RunError, match=r"shards \[1, 3\] stay uncommitted.*run again to do exactly them"):
        books.raise_problems()
    assert sorted(read_commits(jd)) == [0, 2, 4, 5] and not list(jd.root.rglob(".*.tmp-*"))

    # what the next run does: exactly the uncommitted shards, to a new pool (the stream's
    # path through Ray Data is the other test's)
    again = WriterPool(jd, spec_with(2), META, ROWS, DIMS)
    ray.get([again.actors[writer_of(s, 2)].hold.remote(by_shard[s]) for s in (1, 3)], timeout=60)
    resumed = Books({1, 3})
    for report in again.finish():
        resumed.take(report)
    resumed.raise_problems()
    assert sorted(c["shard"] for c in resumed.committed) == [1, 3]
    assert_same_outputs(one_writer, outputs(jd))
