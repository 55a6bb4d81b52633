"""Running out of GPU memory is never a bad image (docs/architecture.md, "Failures"): the
real ``torch.cuda.OutOfMemoryError``, raised inside each model stage's model call, makes
the run's stage call (stages/chain.call_stage) retry the batch in halves down to one
image; an image that alone still runs out is a failure of kind ``resource`` (the run goes
on; ``run --retry-failed`` redoes it), never an image's failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import masktok.stages.invert as invert_module
from masktok.tiny.corpus import write_demo_corpus
from masktok.stages.chain import call_stage
from masktok.stages.topology import build_group, topology
from masktok.schemas.spec import JobSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = JobSpec.model_validate({"detect": {"top_k": 4}, "segment": {"model_type": "tiny"},
                               "invert": {"model": "masktok-tiny-clip", "iterations": 2}})
IMAGES = ["scenes/000.png", "scenes/001.jpg", "scenes/002.jpg"]
OUTPUT = {"detect": "boxes", "segment": "mask_iou", "invert": "object_tokens"}  # what each model stage adds


@pytest.fixture(scope="module")
def stages(tmp_path_factory, tiny_checkpoints):
    """Every stage of the topology, in order, as (name, stage), and the image root."""
    root = tmp_path_factory.mktemp("oom")
    write_demo_corpus(root)
    images = root / "images"
    built = [pair for group in topology(SPEC) for pair in build_group(SPEC, group, images, tiny_checkpoints, "cpu")]
    return built, images


def items(root) -> list[dict]:
    return [{"index": i, "image_id": x, "path": str(root / x)} for i, x in enumerate(IMAGES)]


def run(built, batch, upto: str) -> list[dict]:
    """The stages before ``upto`` on ``batch``."""
    for name, stage in built:
        if name == upto:
            return batch
        batch = call_stage(name, stage, batch)
    raise AssertionError(upto)


def raise_out_of_memory(name: str, stage, monkeypatch, request, when) -> list[int]:
    """Make ``stage``'s model call raise torch.cuda.OutOfMemoryError on the calls ``when``
    (call number -> bool) picks; returns the list of call numbers seen."""
    calls: list[int] = []

    def check() -> None:
        calls.append(len(calls))
        if when(calls[-1]):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    if name == "invert":
        real = invert_module.invert_batch

        def invert_batch(*args, **kwargs):
            check()
            return real(*args, **kwargs)

        monkeypatch.setattr(invert_module, "invert_batch", invert_batch)
    else:
        module = stage.model if name == "detect" else stage.sam.image_encoder
        request.addfinalizer(module.register_forward_pre_hook(lambda *_: check()).remove)  # a shared model
    return calls


@pytest.mark.parametrize("name", ["detect", "segment", "invert"])
def test_an_out_of_memory_batch_is_retried_smaller_and_no_image_fails(stages, name, monkeypatch, request):
    built, root = stages
    stage = dict(built)[name]
    before = run(built, items(root), name)
    reference = call_stage(name, stage, [dict(item) for item in before])
    calls = raise_out_of_memory(name, stage, monkeypatch, request, when=lambda n: n == 0)  # the first call: 3 images resident
    out = call_stage(name, stage, [dict(item) for item in before])
    assert len(calls) > 1, "the batch was not retried"
    assert [item["image_id"] for item in out] == IMAGES and not [item for item in out if "error" in item]
    for got, want in zip(out, reference):
        np.testing.assert_allclose(np.asarray(got[OUTPUT[name]], np.float32), np.asarray(want[OUTPUT[name]], np.float32),
                                   rtol=1e-3, atol=1e-3, err_msg=got["image_id"])


@pytest.mark.parametrize("name", ["detect", "segment", "invert"])
def test_an_image_that_alone_runs_out_of_memory_is_a_resource_failure_not_a_bad_image(stages, name, monkeypatch,
                                                                                       request):
    built, root = stages
    stage = dict(built)[name]
    before = run(built, items(root), name)
    raise_out_of_memory(name, stage, monkeypatch, request, when=lambda n: True)
    out = call_stage(name, stage, [dict(item) for item in before])
    assert [item["image_id"] for item in out] == IMAGES, "the stage call did not come back with every image"
    for item in out:
        assert item["error"]["kind"] == "resource" and item["error"]["stage"] == name, item["error"]
        assert item["error"]["reason"].startswith("out of device memory"), item["error"]
