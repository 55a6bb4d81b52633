"""`masktok ask`: the job spec's stages in process on pictures no job planned give the
tokens `masktok run` caches for them, and so the answers `generate` gives from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from masktok.stages.checkpoints import token_dims
from masktok.cli import main
from masktok.pipeline.run import load_job
from masktok.trainer.data.readers import ZarrImages

# It reads the session's finished job, which the Ray tests' worker builds (tests/test_run.py).
pytestmark = pytest.mark.xdist_group("ray")

QUESTION = "What is in the picture?"
CAPTION = "some shapes on a plain background"


@pytest.fixture(scope="module")
def trained(finished_job, tmp_path_factory):
    """Stage-2 and stage-1 checkpoints of a tiny Llama trained on the finished job."""
    from small_job import JOB_IMAGES

    from masktok.trainer.runtime import TrainConfig
    from masktok.tiny.llm import build_tiny_llm
    from masktok.trainer.train import train

    root = tmp_path_factory.mktemp("ask")
    data = root / "data.json"
    data.write_text(json.dumps([{"id": im, "image": im, "conversations": [
        {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": CAPTION}]} for im in JOB_IMAGES]))
    llm = build_tiny_llm(root / "llm", [QUESTION, CAPTION], hidden=32)
    out = {}
    for stage in (2, 1):
        out[stage] = root / f"stage{stage}"
        train(TrainConfig(stage=stage, cache=finished_job.root, data=data, llm=llm, out=out[stage], batch_size=4,
                          max_steps=20, lr=3e-3, warmup_ratio=0.0, schedule="constant", tokens="cls,patch:9,obj:5"))
    return out


@pytest.fixture
def tiny_home(tmp_path, monkeypatch):
    """Where `ask` builds the tiny presets (the same seeded weights as the job's models/)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def ask(*args: object, input: str | None = None):
    return CliRunner().invoke(main, ["ask", *map(str, args)], input=input)


def test_asks_tokens_equal_the_cached_rows_to_float16_rounding(finished_job, tmp_path):
    from masktok.inference.ask import PictureTokens

    spec, _ = load_job(finished_job)
    root = Path(spec.corpus.image_root)
    cached = ZarrImages(finished_job.root)
    names = ["scenes/000.png", "quirks/cmyk.jpg"]
    records = PictureTokens(spec, "cpu", tmp_path / "models").records([root / n for n in names])
    assert token_dims(spec).as_dict() == cached.dims
    for name, got in zip(names, records):
        want = cached[cached.row_of(name)]
        assert got["num_objects"] == want["num_objects"] and got.keys() == want.keys()
        for key in ("object_tokens", "global_token", "patch_tokens", "boxes", "scores", "mask_iou"):
            np.testing.assert_allclose(got[key].astype(np.float32), want[key].astype(np.float32),
                                       rtol=2e-3, atol=2e-3, err_msg=f"{name} {key}")  # batch mates: f16 rounding
        np.testing.assert_array_equal(got["keep_rank"], want["keep_rank"])


@pytest.mark.parametrize("tokens", ["cls,patch:9,obj:5", "patch:4"])
def test_ask_answers_as_generate_answers_from_the_cache(finished_job, trained, tiny_home, tokens):
    from masktok.inference.generate import generate

    spec, _ = load_job(finished_job)
    image = Path(spec.corpus.image_root) / "scenes/000.png"
    want = generate(trained[2], finished_job.root, "scenes/000.png", QUESTION, tokens=tokens)
    res = ask("--checkpoint", trained[2], "--spec", finished_job.job_toml, image, "--question", QUESTION,
              "--tokens", tokens, "--json")
    assert res.exit_code == 0, res.output
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line == {"image": str(image), "question": QUESTION, "answer": want}


def test_the_chat_answers_each_question_with_one_stage_run(finished_job, trained, tiny_home, monkeypatch):
    from masktok.inference import ask as ask_module

    runs = []
    real = ask_module.PictureTokens.records
    monkeypatch.setattr(ask_module.PictureTokens, "records", lambda self, paths: runs.append(paths) or real(self, paths))
    spec, _ = load_job(finished_job)
    res = ask("--checkpoint", trained[2], "--spec", finished_job.job_toml, Path(spec.corpus.image_root) / "scenes/001.jpg",
              input="What is in the picture?\nAnd the colours?\nWhere?\n\nnever read\n")
    assert res.exit_code == 0, res.output
    assert len(res.stdout.strip().splitlines()) == 3 and len(runs) == 1


def test_bad_input_is_one_line(finished_job, trained, tiny_home, tmp_path):
    spec, _ = load_job(finished_job)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a picture")
    missing = tmp_path / "missing.toml"
    missing.write_text(finished_job.job_toml.read_text().replace('checkpoint = "tiny"', 'checkpoint = "/nope/w.pth"', 1))
    good = Path(spec.corpus.image_root) / "scenes/000.png"
    other_clip = tmp_path / "vit_b.toml"
    other_clip.write_text(finished_job.job_toml.read_text().replace('model = "masktok-tiny-clip"', 'model = "ViT-B-32"'))
    cases = [
        (["--checkpoint", trained[2], "--spec", finished_job.job_toml, broken, "--question", QUESTION],
         "no tokens for 1 of 1 images"),
        (["--checkpoint", trained[1], "--spec", finished_job.job_toml, good, "--question", QUESTION],
         "stage-1 checkpoint: it captions"),
        (["--checkpoint", trained[2], "--spec", missing, good, "--question", QUESTION], "checkpoint not found"),
        (["--checkpoint", trained[2], "--spec", finished_job.job_toml, tmp_path / "nope.jpg"], "no such image"),
        (["--checkpoint", trained[2], "--spec", other_clip, good, "--question", QUESTION], "trained on tokens of widths"),
    ]
    for argv, message in cases:
        res = ask(*argv)
        assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, (argv, res.output)
