"""Failures that say what they are (schemas/failures.py): an image that alone exhausts
memory, even at one image per call, is a failure of kind ``resource``, not a bad image and
not the end of the job; ``status`` (text and --json) and the report count it apart, name the
``--set`` that gives its stage more room, and ``run --retry-failed`` redoes it.

The job runs in process, no Ray: the stage chain (stages/chain.run_chain, what every Ray
actor of the graph calls) and a shard writer (pipeline/writers.ShardWriter, the writer
actors' class), as pipeline/run.py wires them. The memory failure is injected on CPU: a
wrapper of the invert stage raises ``torch.OutOfMemoryError`` whenever its batch holds the
chosen image.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from small_job import JOB_PLAN_ARGS, manifest_index

from masktok.cli import main
from masktok.pipeline.run import _pending_shards, load_job, write_failures
from masktok.pipeline.status import verify_job
from masktok.pipeline.writers import ShardWriter
from masktok.schemas.commits import valid_commits
from masktok.schemas.failures import IMAGE, RESOURCE, kind_of
from masktok.schemas.jobdir import JobDir
from masktok.schemas.manifest import read_manifest
from masktok.stages.chain import build_chain, run_chain
from masktok.stages.checkpoints import token_dims
from masktok.stages.write import open_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the image that alone exhausts (injected) device memory at invert
GREEDY = "scenes/002.jpg"


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


class ExhaustsMemory:
    """A stage that raises torch.OutOfMemoryError whenever its batch holds ``image_id``
    (at any batch size, down to one image), else runs ``stage``."""

    def __init__(self, stage, image_id: str):
        self.stage, self.image_id, self.calls = stage, image_id, 0

    def __call__(self, batch):
        self.calls += 1
        if any(item.get("image_id") == self.image_id for item in batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.stage(batch)


def run_in_process(jd: JobDir, checkpoints, overrides=(), retry_failed=False, greedy: str | None = None) -> int:
    """`masktok run` without Ray (see the module docstring); returns the shards it committed."""
    spec, meta = load_job(jd, tuple(overrides))
    manifest = read_manifest(jd.manifest, columns=["index", "image_id", "path", "shard"]).to_pydict()
    rows, size = len(manifest["index"]), spec.shards.size
    todo, _ = _pending_shards(jd, meta, -(-rows // size), retry_failed)
    dims = token_dims(spec)
    open_store(jd.tokens, rows=rows, shard_size=size, dims=dims, filter_settings=spec.filter.model_dump(),
               patch_grid=spec.write.patch_grid)
    chain = build_chain(spec, spec.corpus.image_root, {k: str(v) for k, v in checkpoints.items()}, device="cpu")
    if greedy:
        chain = [(name, ExhaustsMemory(stage, greedy) if name == "invert" else stage) for name, stage in chain]
    writer = ShardWriter(str(jd.root), rows, size, dims.as_dict(), meta["fingerprint"], meta["manifest_digest"],
                         spec.write.webdataset, spec.write.rle_masks)
    for shard in todo:
        items = [{"index": i, "image_id": manifest["image_id"][i], "path": manifest["path"][i]}
                 for i in range(rows) if manifest["shard"][i] == shard]
        writer.hold(run_chain(chain, items))
    done = writer.finish()
    assert not done["incomplete"] and all("commit" in r for r in done["results"]), done
    write_failures(jd, valid_commits(jd))
    return len(done["results"])


#: 4 images of the shared test corpus (a truncated one among them), 2 shards of 2
IMAGES = ["scenes/000.png", GREEDY, "quirks/broken.jpg", "scenes/001.jpg"]


@pytest.fixture(scope="module")
def job(tmp_path_factory, job_corpus):
    _, images = job_corpus
    folder = tmp_path_factory.mktemp("resource")
    source = folder / "corpus.json"
    source.write_text(json.dumps([{"id": str(i), "image": x, "conversations": []} for i, x in enumerate(IMAGES)]))
    result = invoke("plan", folder / "job", "--corpus", "llava-instruct", "--source", source, "--image-root", images,
                    *JOB_PLAN_ARGS[:-2], "--shard-size", 2, "-q")
    assert result.exit_code == 0, result.output
    return JobDir(folder / "job")


@pytest.fixture(scope="module")
def exhausted(job, tiny_checkpoints):
    """The job run once with GREEDY exhausting memory at invert: (job, status --json)."""
    assert run_in_process(job, tiny_checkpoints, greedy=GREEDY) == 2, "the job did not finish"
    result = invoke("status", job.root, "--json")
    assert result.exit_code == 0, result.output
    return job, json.loads(result.output)


def test_an_image_that_alone_exhausts_memory_is_a_resource_failure_and_the_job_finishes(exhausted):
    job, status = exhausted
    failures = {f["image_id"]: f for c in valid_commits(job).values() for f in c["failures"]}
    assert failures[GREEDY]["kind"] == RESOURCE and failures[GREEDY]["stage"] == "invert"
    assert failures[GREEDY]["reason"].startswith("out of device memory")
    assert failures["quirks/broken.jpg"]["kind"] == IMAGE  # a truncated file stays the image's fault
    assert status["shards_committed"] == status["shards_total"] == 2 and status["images_pending"] == 0
    assert status["images_failed"] == 2 and status["images_failed_by_kind"] == {IMAGE: 1, RESOURCE: 1}
    parquet = pq.read_table(job.failures).to_pylist()
    assert {r["image_id"]: r["kind"] for r in parquet} == {GREEDY: RESOURCE, "quirks/broken.jpg": IMAGE}


def test_status_and_report_count_resource_failures_apart_and_name_a_set_that_gives_room(exhausted, tmp_path):
    job, status = exhausted
    assert "--retry-failed" in status["retry"] and "--set invert.resources.batch_size=1" in status["retry"]
    text = invoke("status", job.root)
    assert text.exit_code == 0 and "2 failed (1 for lack of resources)" in text.output, text.output
    assert "retry   1 image(s) failed for lack of device memory" in text.output, text.output
    report = tmp_path / "report.html"
    result = invoke("report", job.root, "--output", report, "--images", 0)
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert "1 for lack of resources" in html and "invert.resources.batch_size=1" in html


def test_retry_failed_with_the_named_settings_redoes_the_resource_failure(exhausted, tiny_checkpoints):
    job, status = exhausted
    settings = [word for word in status["retry"].split("`")[1].split() if "=" in word]
    with_failures = sum(1 for c in valid_commits(job).values() if c["failures"])
    assert run_in_process(job, tiny_checkpoints, overrides=settings, retry_failed=True) == with_failures  # no injection
    failures = [f for c in valid_commits(job).values() for f in c["failures"]]
    assert [(f["image_id"], kind_of(f)) for f in failures] == [("quirks/broken.jpg", IMAGE)]
    row = manifest_index(job, GREEDY)
    assert verify_job(job) == {}
    after = json.loads(invoke("status", job.root, "--json").output)
    assert after["images_failed_by_kind"] == {IMAGE: 1, RESOURCE: 0} and after["retry"] is None
    from masktok.schemas.storage import open_zarr

    assert open_zarr(job.tokens, mode="r")["status"][row] == 1


def test_a_failure_recorded_before_kinds_reads_as_the_images_fault(tmp_path):
    """Commits written before kinds existed: counted and listed as the image's fault."""
    from masktok.schemas.failures import count_by_kind

    old = {"index": 1, "image_id": "b.jpg", "stage": "decode", "reason": "truncated"}
    assert count_by_kind([old]) == {IMAGE: 1, RESOURCE: 0}
    jd = JobDir(tmp_path)
    write_failures(jd, {0: {"failures": [old]}})
    assert pq.read_table(jd.failures).to_pylist() == [{**old, "shard": 0, "kind": IMAGE}]


def test_host_memory_exhausted_while_decoding_one_image_is_a_resource_failure(job_corpus, monkeypatch):
    """decode caught every exception as a bad image: a host MemoryError on one file hid among
    the corrupt ones. Now it is retried alone (stages/chain.call_stage) and recorded as the
    run's resources, and the other images of the batch decode."""
    import masktok.stages.decode as decode_module
    from masktok.schemas.spec import DecodeSpec
    from masktok.stages.chain import call_stage

    _, images = job_corpus
    real = decode_module.decode_image

    def decode_image(path, *args, **kwargs):
        if str(path).endswith(GREEDY):
            raise MemoryError()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode_module, "decode_image", decode_image)
    ids = ["scenes/000.png", GREEDY, "scenes/001.jpg"]
    out = call_stage("decode", decode_module.DecodeStage(DecodeSpec(), images),
                     [{"index": i, "image_id": x, "path": str(images / x)} for i, x in enumerate(ids)])
    assert [item["image_id"] for item in out] == ids
    assert out[1]["error"]["kind"] == RESOURCE and out[1]["error"]["reason"].startswith("out of host memory")
    assert "error" not in out[0] and "error" not in out[2] and out[0]["image"].shape[2] == 3
