"""Every command that reads a job reads it from object storage as from a folder (issue 34
item 3): `status`, `verify`, `inspect` and `report` on the session's finished job uploaded
once to the tests' S3 server; `answer` and `generate` on the tiny token cache written into a
bucket (conftest.caches); `answer --out s3://...` is refused in one line, and `report`'s
default output (JOBDIR/report.html) is a PUT, whose refusal is one line too. (`train` and
`generate` from a bucket: tests/test_object_storage.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.schemas.jobdir import JobDir

# The finished job is a Ray run: with the other tests that start Ray, in one xdist worker.
pytestmark = pytest.mark.xdist_group("ray")

SPEC = "cls,patch:9,obj:5"


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def s3_job(s3_endpoint, finished_job) -> tuple[JobDir, str]:
    """(the finished job, the same job uploaded once to a bucket of its own)."""
    import s3fs

    from s3_server import new_bucket

    url = f"{new_bucket('s3-readers')}/job"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(finished_job.root), url.removeprefix("s3://"), recursive=True)
    return finished_job, url


def test_status_and_verify_read_the_job_from_the_bucket(s3_job):
    local, url = s3_job
    remote_status, local_status = invoke("status", url, "--json"), invoke("status", local.root, "--json")
    assert remote_status.exit_code == 0, remote_status.output
    counts = ("images_total", "images_done", "images_failed", "shards_total", "shards_committed")
    remote, here = json.loads(remote_status.output), json.loads(local_status.output)
    assert {k: remote[k] for k in counts} == {k: here[k] for k in counts} and remote["shards_committed"] == 3
    verified = invoke("verify", url)
    assert verified.exit_code == 0 and "all 3 committed shard(s) match their commit files" in verified.output


def test_inspect_draws_the_same_picture_from_the_bucket(s3_job, tmp_path):
    local, url = s3_job
    for name, job in (("local", local.root), ("remote", url)):
        res = invoke("inspect", job, "--index", 0, "-o", tmp_path / f"{name}.png")
        assert res.exit_code == 0, res.output
    assert (tmp_path / "remote.png").read_bytes() == (tmp_path / "local.png").read_bytes()


def test_report_reads_the_bucket_and_writes_its_default_output_there(s3_job, tmp_path):
    from upath import UPath

    local, url = s3_job
    res = invoke("report", url, "-o", tmp_path / "report.html", "--images", 1)
    assert res.exit_code == 0, res.output
    assert "<html" in (tmp_path / "report.html").read_text()
    default = invoke("report", url, "--images", 0)
    assert default.exit_code == 0 and f"wrote {url}/report.html" in default.output, default.output
    assert "<html" in UPath(f"{url}/report.html").read_text()


def test_answer_and_generate_read_the_cache_from_the_bucket_as_from_a_folder(caches, tiny_run, tmp_path):
    local, remote = caches
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": f"img/{i:03d}.jpg", "text": "What?"}) + "\n"
                                 for i in (0, 4, 5, 11)))  # a row of each shard, the failed one among them
    answers = {}
    for name, cache in (("local", local), ("remote", remote)):
        res = invoke("answer", "--checkpoint", tiny_run, "--cache", cache, "--questions", questions,
                     "--out", tmp_path / name, "--max-new-tokens", 3, "-q")
        assert res.exit_code == 0, res.output
        answers[name] = [(a["question_id"], a["text"], a["metadata"]) for a in
                         map(json.loads, (tmp_path / name / f"{SPEC}.jsonl").read_text().splitlines())]
    assert answers["remote"] == answers["local"] and len(answers["local"]) == 4
    said = [invoke("generate", "--checkpoint", tiny_run, "--cache", cache, "--image-id", "img/004.jpg",
                   "--tokens", SPEC, "--max-new-tokens", 3) for cache in (local, remote)]
    assert said[0].exit_code == said[1].exit_code == 0 and said[0].output == said[1].output


def test_answers_to_a_bucket_are_refused_in_one_line(caches, tiny_run, tmp_path):
    _, remote = caches
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "image": "img/000.jpg", "text": "What?"}) + "\n")
    res = invoke("answer", "--checkpoint", tiny_run, "--cache", remote, "--questions", questions,
                 "--out", f"{remote}/answers")
    assert res.exit_code == 1 and res.output.startswith(f"Error: --out {remote}/answers: answers are written to a "
                                                        "local folder"), res.output
    assert len(res.output.strip().splitlines()) == 1 and not Path("s3:").exists()


def test_a_refused_put_of_the_report_is_one_line(s3_job):
    import boto3
    from test_full_disk import assert_one_line, deny_puts

    _, url = s3_job
    name = url.removeprefix("s3://").split("/")[0]
    deny_puts(f"s3://{name}")
    try:
        res = invoke("report", url, "--images", 0)
    finally:
        boto3.client("s3").delete_bucket_policy(Bucket=name)
    assert res.exit_code == 1
    assert_one_line(res.output, f"the report ({url}/report.html)", "Forbidden", "the job is only read",
                    "fix what the object store refused")
