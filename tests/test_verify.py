"""`masktok verify` is the check after a run (issue 35 item 5): besides the committed shards'
checksums it says how many shards are still pending and fails while the job is not complete;
``--committed-only`` checks what is committed and reports, without failing on, the rest."""

import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.pipeline import commit as commits
from masktok.schemas.jobdir import JobDir
from masktok.stages.write import open_store
from test_write_commit import DIMS, shard_items


@pytest.fixture
def planned(tmp_path):
    """A job of 8 images in 2 shards of 4, planned and never run."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        (photos / f"{i}.jpg").write_bytes(b"img")
    job = tmp_path / "job"
    r = CliRunner().invoke(main, ["plan", str(job), "--corpus", "folder", "--source", str(photos), "--spec", "demo",
                                  "--shard-size", "4", "-q"])
    assert r.exit_code == 0, r.output
    return JobDir(job)


def verify(jd, *args):
    return CliRunner().invoke(main, ["verify", str(jd.root), *args])


def test_a_planned_job_with_no_commit_fails_and_says_how_many_shards_are_pending(planned):
    r = verify(planned)
    assert r.exit_code == 1, r.output
    assert "no shard is committed yet" in r.output and "job not complete: 2 of 2 shard(s) pending" in r.output
    assert "all committed shards match" not in r.output


def test_committed_only_checks_what_is_committed_and_reports_the_rest(planned):
    r = verify(planned, "--committed-only")
    assert r.exit_code == 0, r.output
    assert "2 of 2 shard(s) pending" in r.output


def test_a_partly_done_job_names_its_pending_shards_and_a_complete_one_passes(planned):
    group = open_store(planned.tokens, rows=8, shard_size=4, dims=DIMS)
    commits.write_shard(planned, group, 0, 0, 4, shard_items(0, 4), DIMS, "sha256:f")
    r = verify(planned)
    assert r.exit_code == 1 and "all 1 committed shard(s) match" in r.output
    assert "1 of 2 shard(s) pending (no commit yet: 1)" in r.output
    assert verify(planned, "--committed-only").exit_code == 0

    commits.write_shard(planned, group, 1, 4, 8, shard_items(4, 4, failed={6}), DIMS, "sha256:f")
    r = verify(planned)
    assert r.exit_code == 0 and "all 2 committed shard(s) match" in r.output and "pending" not in r.output


def test_a_bad_shard_still_fails_with_committed_only(planned):
    group = open_store(planned.tokens, rows=8, shard_size=4, dims=DIMS)
    commits.write_shard(planned, group, 0, 0, 4, shard_items(0, 4), DIMS, "sha256:f")
    tar = planned.wds / "shard-000000.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0x01
    tar.write_bytes(bytes(data))
    r = verify(planned, "--committed-only")
    assert r.exit_code == 1 and "shard 0:" in r.output and "1 bad shard(s): 0" in r.output
