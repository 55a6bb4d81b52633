"""A full disk or a refused write is one line: what was being written, what is safe, what to
do; exit status 1; no temporary file left (issue 34 item 2; docs/reliability.md).

The full disk is real: a 16 MiB tmpfs mounted for the test (skipped where this process may
not mount one), with a ballast file leaving a chosen number of bytes free. The refused PUT is
the local S3 server's (tests/s3_server.py) answer to a bucket policy denying s3:PutObject.
The helper's own cases (torch's, safetensors' and torch.distributed.checkpoint's wrappings of
the OSError) run everywhere, with no mount.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.schemas.refusals import WriteRefusedError, refusal_of, refused_writes

DISK_BYTES = 16 << 20


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 16 MiB tmpfs of its own (unmounted after the test)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
                                 capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here: the full-disk tests need a tmpfs")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the full-disk tests need one")
    try:
        yield disk
    finally:
        # lazy: a file this process still holds open (a lock) would make it busy
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True, timeout=30)


def fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``disk``; returns it."""
    ballast = disk / "ballast"
    stat = os.statvfs(disk)
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return ballast


def temp_files(folder: Path) -> list[Path]:
    """Files and folders with a temp name under ``folder`` (write_atomic's, the models', the
    checkpoints', the answers')."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def assert_one_line(output: str, *parts: str) -> str:
    """The command's output is the one error line, naming ``parts``; returns it."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: could not write "), output
    assert "Traceback" not in output and all(p in lines[0] for p in parts), output
    return lines[0]


# --- the helper, everywhere -------------------------------------------------------------------


def _raised(make):
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the test looks at whatever was raised
        return exc
    raise AssertionError("nothing raised")


def _chained(outer: BaseException, inner: BaseException):
    def make():
        try:
            raise inner
        except BaseException:
            raise outer
    return make


def test_the_refusal_is_found_behind_torch_safetensors_and_checkpoint_wrappers():
    full = OSError(errno.ENOSPC, "No space left on device")
    torch_save = _raised(_chained(RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos"), full))
    assert refusal_of(torch_save) is full
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert refusal_of(rust).errno == errno.ENOSPC

    class CheckpointException(BaseException):  # torch.distributed.checkpoint's: per rank, (exc, traceback)
        failures = {0: (torch_save, None)}

    assert refusal_of(CheckpointException()) is full
    denied = PermissionError("Forbidden")  # s3fs's 403: no errno
    assert refusal_of(denied) is denied
    assert refusal_of(FileNotFoundError(errno.ENOENT, "gone", "x")) is None
    assert refusal_of(ValueError("not a write")) is None
    with pytest.raises(WriteRefusedError) as caught:
        with refused_writes("the thing", "the rest is safe"):
            raise CheckpointException()
    line = str(caught.value)
    assert line == "could not write the thing: No space left on device; the rest is safe; free space (or raise the " \
                   "quota) and run again"
    with pytest.raises(ValueError):  # not a refusal: unchanged
        with refused_writes("the thing", "safe"):
            raise ValueError("a bug")


def test_a_full_quota_injected_at_the_file_system_is_one_line_from_plan(job_corpus, tmp_path, monkeypatch):
    """Injected at the file-system boundary (runs with no mount): every os.fsync raises
    EDQUOT, as a full quota does."""
    from small_job import JOB_PLAN_ARGS

    def full_quota(fd: int) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "fsync", full_quota)
    source, images = job_corpus
    res = invoke("plan", tmp_path / "job", "--corpus", "llava-instruct", "--source", source, "--image-root", images,
                 *JOB_PLAN_ARGS)
    assert res.exit_code == 1
    assert_one_line(res.output, f"the plan ({tmp_path / 'job' / 'manifest.parquet'})", "Disk quota exceeded",
                    "no job.toml was written", "free space")
    assert {p.name for p in (tmp_path / "job").iterdir()} <= {"run.lock"}  # the lock plan took, nothing written


# --- on a full tmpfs ---------------------------------------------------------------------------


def test_plan_on_a_full_disk_is_one_line_and_leaves_no_job(small_disk, job_corpus):
    from small_job import JOB_PLAN_ARGS

    fill(small_disk, 0)
    source, images = job_corpus
    res = invoke("plan", small_disk / "job", "--corpus", "llava-instruct", "--source", source,
                 "--image-root", images, *JOB_PLAN_ARGS)
    assert res.exit_code == 1
    assert_one_line(res.output, "the plan", "No space left on device", "no job.toml was written", "free space")
    assert not (small_disk / "job" / "job.toml").exists() and temp_files(small_disk) == []


@pytest.mark.xdist_group("ray")  # starts no Ray, but plans and runs a job as the Ray tests do
def test_run_on_a_full_disk_stops_at_the_models_in_one_line(small_disk, job_corpus):
    from small_job import plan_job, run_masktok

    jd = plan_job(small_disk / "job", job_corpus)
    ballast = fill(small_disk, 256 << 10)  # the tiny models take ~8 MB
    res = run_masktok("run", jd.root, "-q", check=False)
    assert res.returncode == 1, res.stderr[-3000:]
    assert_one_line(res.stderr, f"the tiny models under {jd.models}", "No space left on device",
                    "no shard has run yet", "free space")
    assert temp_files(small_disk) == [] and not jd.commits.exists()
    ballast.unlink()
    assert (small_disk / "job" / "job.toml").exists(), "the plan is untouched"


def test_answer_on_a_full_disk_is_one_line_and_a_rerun_completes(small_disk, tiny_run, tiny_trainer, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": f"img/{i:03d}.jpg", "text": "What?"}) + "\n"
                                 for i in range(4)))
    args = ["answer", "--checkpoint", tiny_run, "--cache", tiny_trainer["job"], "--questions", questions,
            "--out", small_disk / "answers", "--max-new-tokens", "2", "-q"]
    ballast = fill(small_disk, 0)
    res = invoke(*args)
    assert res.exit_code == 1
    assert_one_line(res.output, f"the answers in {small_disk / 'answers'}", "No space left on device",
                    "a rerun answers only the batches left", "free space")
    assert temp_files(small_disk) == []
    ballast.unlink()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    (written,) = (small_disk / "answers").glob("*.jsonl")
    assert [json.loads(line)["question_id"] for line in written.read_text().splitlines()] == [0, 1, 2, 3]


def test_train_on_a_full_disk_loses_no_checkpoint_and_leaves_no_half_one(small_disk, tiny_trainer):
    out = small_disk / "run"
    fill(small_disk, 200 << 10)  # run.json and the metrics fit, a checkpoint (~2.5 MB) does not
    res = CliRunner().invoke(main, [
        "train", "--stage", "2", "--cache", str(tiny_trainer["job"]), "--data", str(tiny_trainer["data"]),
        "--llm", str(tiny_trainer["llm"]), "--out", str(out), "--tokens", "cls,patch:9,obj:5", "--max-steps", "1",
        "--batch-size", "2", "-q"])
    assert res.exit_code == 1
    assert_one_line(res.output, f"the training run under {out}", "No space left on device",
                    "--resume continues from the newest", "free space")
    assert (out / "run.json").exists() and temp_files(small_disk) == []
    assert not list(out.glob("checkpoint-*")) and not (out / "latest").exists()


@pytest.mark.xdist_group("ray")  # reads the session's finished job (a Ray run)
@pytest.mark.parametrize("command", ["report", "inspect"])
def test_report_and_inspect_on_a_full_disk_are_one_line(small_disk, finished_job, command):
    fill(small_disk, 0)
    target = small_disk / "out" / "picture"
    args = ["--images", "0"] if command == "report" else ["--index", "0"]
    res = invoke(command, finished_job.root, "-o", target, *args)
    assert res.exit_code == 1
    assert_one_line(res.output, str(target), "No space left on device", "the job is only read", "free space")
    assert not target.exists() and temp_files(small_disk) == []


# --- a PUT the object store refuses ------------------------------------------------------------


def deny_puts(bucket: str) -> None:
    """A bucket policy denying every PutObject of ``bucket`` (moto enforces it)."""
    import boto3

    name = bucket.removeprefix("s3://")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                                                      "Resource": f"arn:aws:s3:::{name}/*"}]}
    boto3.client("s3").put_bucket_policy(Bucket=name, Policy=json.dumps(policy))


def test_a_refused_put_of_the_plan_is_one_line(bucket, job_corpus):
    from small_job import JOB_PLAN_ARGS

    deny_puts(bucket)
    source, images = job_corpus
    res = invoke("plan", f"{bucket}/job", "--corpus", "llava-instruct", "--source", source, "--image-root", images,
                 *JOB_PLAN_ARGS)
    assert res.exit_code == 1
    assert_one_line(res.output, f"the plan ({bucket}/job/", "Forbidden",
                    "fix what the object store refused")
    import s3fs

    assert not s3fs.S3FileSystem(skip_instance_cache=True).exists(f"{bucket}/job/job.toml")
