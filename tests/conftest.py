"""Shared pytest fixtures.

Tests never touch the network: the Hugging Face offline switches are set here, at import
time, before any test module imports transformers or huggingface_hub (both read them once).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run when `--dist loadgroup` would not keep the Ray tests together.

    pytest-xdist groups tests by a suffix it appends to each node id; pytest 9.2 made the
    node id a property it does not read, so the group is silently dropped and two local
    Rays run at once on 2 cores.
    """
    if getattr(config.option, "loadgroup", False):
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist's xdist_group is not applied under this pytest "
                                    f"({pytest.__version__}): e.g. {lost[0]}; install a pytest it supports")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a shared 2-core machine, OpenMP threads spinning
    against another process's load make the tiny models ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- models -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny detector/SAM/CLIP presets (seed 0) saved in the real formats, once per session.

    Keys: "detector" (HF folder), "sam" (.pth, model_type "tiny"), "clip" (state dict for
    masktok.models.clip.TINY_CLIP_NAME).
    """
    from masktok.models import materialize_tiny

    return materialize_tiny(tmp_path_factory.mktemp("tiny_checkpoints"), seed=0)



# --- one finished job (tests/small_job.py) ------------------------------------------------


@pytest.fixture(scope="session")
def job_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(LLaVA-Instruct-style JSON naming small_job.JOB_IMAGES, image root)."""
    from small_job import write_job_corpus

    return write_job_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def finished_job(tmp_path_factory: pytest.TempPathFactory, job_corpus: tuple[Path, Path]):
    """The small corpus planned and run once, uninterrupted, for the whole session: tests
    read it and never change it (copy it first to change anything). It runs in a terminal
    with ``--stages``; what it wrote there is kept beside it (``finished_run_output``)."""
    from small_job import plan_job, run_in_terminal

    jd = plan_job(tmp_path_factory.mktemp("jobs") / "finished", job_corpus)
    code, output = run_in_terminal("run", jd.root, "--stages")
    assert code == 0, output[-3000:]
    (jd.root.parent / "run-output.txt").write_text(output)
    return jd


@pytest.fixture(scope="session")
def finished_run_output(finished_job) -> str:
    """What ``masktok run --stages`` of ``finished_job`` wrote to its terminal."""
    return (finished_job.root.parent / "run-output.txt").read_text()


# --- a tiny cache and a tiny Llama for the trainer ------------------------------------------

TRAINER_IMAGES = 12


@pytest.fixture(scope="session")
def tiny_trainer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 12-image cache (4 per shard, image 5 failed), a LLaVA JSON naming them plus one
    text-only record, and a tiny Llama folder. Keys: root, job, data, llm; tests write their
    runs under root, each in a folder of its own name."""
    from masktok.tiny.cache import CAPTIONS, write_corpus, write_tiny_cache
    from masktok.tiny.llm import build_tiny_llm

    root = tmp_path_factory.mktemp("trainer")
    job = write_tiny_cache(root / "job", n=TRAINER_IMAGES, shard_size=4, failed=(5,))
    data = write_corpus(root / "data.json", TRAINER_IMAGES, [
        {"id": "t", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}])
    llm = build_tiny_llm(root / "llm", list(CAPTIONS) + ["Describe the image.", "Say hi.", "hi"], hidden=64)
    return {"root": root, "job": job, "data": data, "llm": llm}


@pytest.fixture(scope="session")
def answer_model(tiny_trainer) -> dict[str, Path]:
    """tiny_trainer plus a stage-2 run trained 4 steps on it ("run") and 15 questions
    ("questions"): image 5 failed, one image unknown; ids of both types, two categories,
    one image asked about twice, and id 7 on two lines (MME repeats ids by design: two
    questions per image, the image path as the id). Shared by the tests of ``answer``."""
    import json

    from masktok.trainer.runtime import TrainConfig
    from masktok.trainer.train import train

    out = tiny_trainer["root"] / "eval-run"
    train(TrainConfig(stage=2, cache=tiny_trainer["job"], data=tiny_trainer["data"], llm=tiny_trainer["llm"], out=out,
                      max_steps=4, batch_size=4, lr=3e-3, warmup_ratio=0.0, tokens="cls,patch:9,obj:5"))
    lines = [{"question_id": i, "image": f"img/{i:03d}.jpg", "text": f"Is there a thing {i}?",
              "category": "random" if i % 2 else "popular"} for i in range(12)]
    lines.insert(8, {"question_id": 7, "image": "img/007.jpg", "text": "Is it red?", "category": "random"})
    lines += [{"question_id": "q-extra", "image": "img/003.jpg", "text": "Describe the image."},
              {"question_id": 99, "image": "img/zzz.jpg", "text": "Where?"}]
    questions = tiny_trainer["root"] / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(q) for q in lines) + "\n\n")
    return {**tiny_trainer, "run": out, "questions": questions}


@pytest.fixture(scope="session")
def tiny_run(tiny_trainer: dict[str, Path]) -> Path:
    """A stage-2 run of one step on the tiny cache (its checkpoint answers and generates at
    ``cls,patch:9,obj:5``); tests read it and never change it."""
    from masktok.trainer.runtime import TrainConfig
    from masktok.trainer.train import train

    out = tiny_trainer["root"] / "one-step-run"
    train(TrainConfig(stage=2, cache=tiny_trainer["job"], data=tiny_trainer["data"], llm=tiny_trainer["llm"], out=out,
                      max_steps=1, batch_size=2, tokens="cls,patch:9,obj:5"))
    return out


# --- an S3 server for job directories on object storage -------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """The local S3 server of tests/s3_server.py for the session (AWS variables set); yields
    its endpoint URL. Each test makes its own bucket."""
    from s3_server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def caches(s3_endpoint, tiny_trainer) -> tuple[Path, object]:
    """(the trainer's tiny cache, the same cache written the same way into a bucket): made
    once for the session, every object being an HTTP request to the test server."""
    from masktok.schemas.jobdir import JobDir
    from masktok.tiny.cache import write_tiny_cache
    from s3_server import new_bucket

    return tiny_trainer["job"], write_tiny_cache(JobDir(f"{new_bucket('caches')}/cache").root, n=12, shard_size=4,
                                                 failed=(5,))


@pytest.fixture
def bucket(s3_endpoint, request) -> str:
    """A new, empty bucket for this test."""
    from s3_server import new_bucket

    return new_bucket(request.node.name)
