"""Broken job directories (issue 34 item 5): a truncated commit, manifest or tar, a lost Zarr
chunk (a copy of the session's finished job, broken one way each) give every command that
reads them a result or one line (`Error: ...`, exit status 1), never a traceback; `verify`
names what is wrong. The count of command runs tried is printed (`pytest -s`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.schemas.jobdir import JobDir

# The finished job is a Ray run: with the other tests that start Ray, in one xdist worker.
pytestmark = pytest.mark.xdist_group("ray")

#: Shard 1 is the one each breakage hits (shards of 3 images: manifest rows 3 to 5).
SHARD = 1


def image_of_shard_1(jd: JobDir) -> tuple[int, str]:
    """(manifest index, image id) of an image of shard 1 that did not fail."""
    from masktok.schemas.manifest import read_manifest

    ids = read_manifest(jd.manifest, columns=["image_id"]).column("image_id").to_pylist()
    return next((i, ids[i]) for i in range(3 * SHARD, 3 * SHARD + 3) if ids[i] != "quirks/broken.jpg")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def shard_1_chunk(jd: JobDir) -> Path:
    """The file of shard 1 of tokens.zarr/object_tokens (Zarr v3: ``c/<shard>/0/0``)."""
    (chunk,) = [p for p in (jd.tokens / "object_tokens" / "c").rglob("*")
                if p.is_file() and p.relative_to(jd.tokens / "object_tokens" / "c").parts[0] == str(SHARD)]
    return chunk


BREAKAGES: dict[str, Callable[[JobDir], None]] = {
    "truncated commit": lambda jd: truncate(jd.commit_path(SHARD)),
    "truncated manifest": lambda jd: truncate(jd.manifest),
    "truncated tar": lambda jd: truncate(jd.wds_path(SHARD)),
    "lost zarr chunk": lambda jd: shard_1_chunk(jd).unlink(),
}


def commands(jd: JobDir, index: int, image_id: str, out: Path) -> dict[str, list[object]]:
    """Every command that reads a job, by a label."""
    return {"status": ["status", jd.root], "status --json": ["status", jd.root, "--json"],
            "verify": ["verify", jd.root], "verify --committed-only": ["verify", jd.root, "--committed-only"],
            "inspect --index": ["inspect", jd.root, "--index", index, "-o", out / "i.png"],
            "inspect IMAGE_ID": ["inspect", jd.root, image_id, "-o", out / "j.png"],
            "report": ["report", jd.root, "-o", out / "r.html", "--images", 9]}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_every_reading_command_gives_a_result_or_one_line_on_a_broken_job(breakage, finished_job, tmp_path):
    index, image_id = image_of_shard_1(finished_job)
    jd = JobDir(tmp_path / "job")
    shutil.copytree(finished_job.root, jd.root, ignore=shutil.ignore_patterns("run.lock"))
    BREAKAGES[breakage](jd)
    outcomes = {}
    for name, args in commands(jd, index, image_id, tmp_path).items():
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exception is None or isinstance(res.exception, SystemExit), \
            f"{breakage}: masktok {name} raised {res.exception!r}\n{res.output}"
        assert res.exit_code in (0, 1) and "Traceback" not in res.output, res.output
        if res.exit_code == 1:
            assert res.output.strip().splitlines()[-1].startswith("Error: "), res.output
        outcomes[name] = res.exit_code, res.output.strip().splitlines()[-1] if res.output.strip() else ""
    print(f"\n{breakage}: {len(outcomes)} command runs tried: "
          + "; ".join(f"{k} -> {code}" for k, (code, _) in outcomes.items()))
    assert len(outcomes) == 7
    verify_code, verify_line = outcomes["verify"]
    assert verify_code == 1, f"verify passed a job with a {breakage}"
    if breakage == "truncated manifest":
        assert all(code == 1 and "manifest.parquet cannot be read" in line for code, line in outcomes.values())
    else:
        assert verify_line == f"Error: 1 bad shard(s): {SHARD}; run with --repair to redo them"


def test_plan_writes_a_damaged_manifest_again_and_keeps_the_results(finished_job, job_corpus, tmp_path):
    from small_job import JOB_PLAN_ARGS

    jd = JobDir(tmp_path / "job")
    shutil.copytree(finished_job.root, jd.root, ignore=shutil.ignore_patterns("run.lock"))
    truncate(jd.manifest)
    source, images = job_corpus
    res = CliRunner().invoke(main, [str(a) for a in ["plan", jd.root, "--corpus", "llava-instruct", "--source", source,
                                                     "--image-root", images, *JOB_PLAN_ARGS]])
    assert res.exit_code == 0 and "it was damaged" in res.output, res.output
    assert jd.manifest.read_bytes() == finished_job.manifest.read_bytes()
    verified = CliRunner().invoke(main, ["verify", str(jd.root)])
    assert verified.exit_code == 0 and "all 3 committed shard(s) match" in verified.output, verified.output


def test_training_from_a_truncated_tar_is_one_line(tiny_trainer, tmp_path):
    job = tmp_path / "cache"
    shutil.copytree(tiny_trainer["job"], job)
    truncate(JobDir(job).wds_path(1))
    res = CliRunner().invoke(main, [
        "train", "--stage", "2", "--cache", str(job), "--data", str(tiny_trainer["data"]), "--llm",
        str(tiny_trainer["llm"]), "--out", str(tmp_path / "run"), "--tokens", "cls,patch:9,obj:5", "--max-steps", "3",
        "--batch-size", "4", "--reader", "wds", "-q"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    (line,) = res.output.strip().splitlines()
    assert line.startswith(f"Error: {JobDir(job).wds_path(1)} cannot be read (ReadError: unexpected end of data)")
