"""The refusals that protect resume: `masktok run` stops, in one line and before starting
Ray, on a job.toml edited by hand, on shards committed for another plan, on an unreadable
commit file, and while another run holds the job (docs/architecture.md, "The commit rule
and resume")."""

import json

import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.pipeline.lock import run_lock
from masktok.schemas.jobdir import JobDir
from masktok.schemas.spec import read_toml


@pytest.fixture
def planned(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (images / name).write_bytes(b"not decoded before run")
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "job"), "--spec", "demo", "--corpus", "folder",
                                       "--source", str(images), "--shard-size", "2", "-q"])
    assert result.exit_code == 0, result.output
    return JobDir(tmp_path / "job")


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def run(jd: JobDir):
    return invoke("run", jd.root, "-q")


def commit_file(jd: JobDir, shard: int, **changes) -> None:
    """A commit file as a run of this plan writes it, with ``changes``."""
    meta = read_toml(jd.job_toml)["meta"]
    commit = {"version": 1, "shard": shard, "rows": [2 * shard, 2 * shard + 2], "fingerprint": meta["fingerprint"],
              "manifest_digest": meta["manifest_digest"], "images_ok": 2, "images_failed": 0,
              "failures": [], "zarr": {}, "wds": None, **changes}
    jd.commits.mkdir(exist_ok=True)
    jd.commit_path(shard).write_text(json.dumps(commit))


def assert_refused(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "Traceback" not in result.output, result.output
    for word in words:
        assert word in line, line


def test_a_job_toml_edited_by_hand_is_refused(planned):
    text = planned.job_toml.read_text()
    assert "top_k = 20" in text
    planned.job_toml.write_text(text.replace("top_k = 20", "top_k = 30"))
    assert_refused(run(planned), "edited after planning", "plan again")


def test_shards_committed_for_another_plan_are_refused(planned):
    commit_file(planned, 0, fingerprint="sha256:another-spec")
    assert_refused(run(planned), "shards [0]", "different plan", "--force")
    commit_file(planned, 0, manifest_digest="sha256:another-manifest")
    assert_refused(run(planned), "shards [0]", "different plan")


def test_an_unreadable_commit_file_is_refused_with_the_repair(planned):
    commit_file(planned, 1)
    planned.commit_path(1).write_text('{"shard": 1, "rows": [2, 4], "fingerpri')  # a torn copy
    assert_refused(run(planned), "shards [1]", "unreadable", "masktok verify --repair")


def test_a_second_driver_on_a_running_job_is_refused_and_status_names_the_first(planned):
    import os

    with run_lock(planned.run_lock):  # as a live run in another process holds it
        assert_refused(run(planned), "already being run", "pid")
        assert json.loads(invoke("status", planned.root, "--json").output)["running"]["pid"] == os.getpid()
        replan = invoke("plan", planned.root, "--spec", "demo", "--corpus", "folder",
                        "--source", planned.root.parent / "photos", "--force")
        assert replan.exit_code == 1 and "already being run" in replan.output
    assert json.loads(invoke("status", planned.root, "--json").output)["running"] is None


def test_retry_failed_uncommits_exactly_the_shards_with_failed_images_before_the_run(planned):
    """What `run --retry-failed` changes: the shards whose commits list failed images are
    uncommitted (their commit files removed first) and so redone, like any pending shard."""
    from masktok.pipeline.run import _pending_shards

    meta = read_toml(planned.job_toml)["meta"]
    commit_file(planned, 0, images_ok=1, images_failed=1,
                failures=[{"index": 1, "image_id": "b.jpg", "stage": "decode", "reason": "truncated"}])
    commit_file(planned, 1, rows=[2, 3], images_ok=1)
    todo, kept = _pending_shards(planned, meta, shards=2, retry_failed=False)
    assert (todo, sorted(kept)) == ([], [0, 1])
    assert planned.commit_path(0).exists(), "without --retry-failed nothing is uncommitted"
    todo, kept = _pending_shards(planned, meta, shards=2, retry_failed=True)
    assert (todo, sorted(kept)) == ([0], [1])
    assert not planned.commit_path(0).exists() and planned.commit_path(1).exists()
