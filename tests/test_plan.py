"""`masktok plan`: corpus -> deduplicated, checked, sharded manifest + job.toml."""

import json
import os
import re
import tomllib

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.pipeline.plan import row_order
from masktok.schemas.manifest import SCHEMA, read_manifest

TINY = ["--spec", "demo"]  # tiny presets: no checkpoint env vars needed


def conv(image=None, rid="r"):
    rec = {"id": rid, "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yo"}]}
    if image is not None:
        rec["image"] = image
    return rec


@pytest.fixture
def corpus(tmp_path):
    """A LLaVA-Instruct-like corpus with every quirk planning must handle."""
    root = tmp_path / "data"
    for rel in ["coco/b.jpg", "coco/a.jpg", "gqa/c.jpg", "vg/d.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"img")
    (tmp_path / "outside.jpg").write_bytes(b"secret")
    os.symlink(tmp_path / "outside.jpg", root / "coco/escape.jpg")
    os.symlink(root / "gqa/c.jpg", root / "coco/inside_link.jpg")
    records = [
        conv("coco/b.jpg"), conv("coco/a.jpg"), conv(None), conv("coco/b.jpg"),  # 0..3: dup of b, text-only
        conv("gqa/c.jpg"), conv("/etc/passwd"), conv("../outside.jpg"), conv("coco/escape.jpg"),  # 4..7
        conv("ocr_vqa/missing.jpg"), {"id": "nc", "image": "vg/d.jpg"}, conv(["vg/d.jpg"]),  # 8..10
        conv("coco/inside_link.jpg"), conv(None), conv("vg/d.jpg"),  # 11..13
    ]
    source = tmp_path / "mix.json"
    source.write_text(json.dumps(records))
    return source, root


def plan(*args):
    result = CliRunner().invoke(main, ["plan", *map(str, args)])
    return result


def seed_of(job):
    return tomllib.loads((job / "job.toml").read_text())["corpus"]["seed"]


def test_manifest_has_one_row_per_unique_existing_image_in_seeded_order(tmp_path, corpus):
    source, root = corpus
    r = plan(tmp_path / "job", "--corpus", "llava-instruct", "--source", source, "--image-root", root,
             "--shard-size", 2, *TINY)
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "job" / "manifest.parquet").to_pylist()
    unique = ["coco/a.jpg", "coco/b.jpg", "coco/inside_link.jpg", "gqa/c.jpg", "vg/d.jpg"]
    assert [row["image_id"] for row in m] == row_order(unique, seed_of(tmp_path / "job")) != unique
    assert [row["index"] for row in m] == [0, 1, 2, 3, 4]
    assert [row["shard"] for row in m] == [0, 0, 1, 1, 2]
    by_id = {row["image_id"]: row for row in m}
    assert by_id["coco/b.jpg"]["corpus_rows"] == [0, 3]  # the duplicate is computed once, both records kept
    assert by_id["vg/d.jpg"]["corpus_rows"] == [13]
    assert by_id["coco/a.jpg"]["path"] == str(root.absolute() / "coco/a.jpg")
    assert pq.read_schema(tmp_path / "job" / "manifest.parquet").equals(SCHEMA, check_metadata=False)


def test_summary_counts_every_kind_of_skip(tmp_path, corpus):
    source, root = corpus
    r = plan(tmp_path / "job", "--corpus", "llava-instruct", "--source", source, "--image-root", root, *TINY)
    report = json.loads((tmp_path / "job" / "plan.json").read_text())
    assert report["records_read"] == 14 and report["text_only"] == 2
    assert report["invalid"] == 2  # no conversations; image is a list
    assert report["rejected"] == 3  # absolute, '..', symlink leaving the root
    assert report["missing"] == 1 and report["duplicate_references"] == 1
    assert report["planned_images"] == 5 and report["shards"] == 1
    out = r.output
    assert "text-only records (skipped)" in out and "'/etc/passwd' (absolute path)" in out
    assert "symlink leaves the image root" in out and "'ocr_vqa/missing.jpg'" in out


def test_existence_check_off_keeps_missing_files_but_still_rejects_bad_paths(tmp_path, corpus):
    source, root = corpus
    r = plan(tmp_path / "job", "--corpus", "llava-instruct", "--source", source, "--image-root", root,
             "--set", "corpus.check_files=false", *TINY)
    assert r.exit_code == 0, r.output
    ids = read_manifest(tmp_path / "job" / "manifest.parquet").column("image_id").to_pylist()
    assert "ocr_vqa/missing.jpg" in ids and "coco/escape.jpg" in ids  # only decode can tell
    assert "/etc/passwd" not in ids and "../outside.jpg" not in ids
    assert "not checked" in r.output


def test_same_inputs_give_the_same_manifest(tmp_path, corpus):
    source, root = corpus
    for name in ("a", "b"):
        plan(tmp_path / name, "--corpus", "llava-instruct", "--source", source, "--image-root", root, *TINY)
    assert (tmp_path / "a/manifest.parquet").read_bytes() == (tmp_path / "b/manifest.parquet").read_bytes()
    meta = [tomllib.loads((tmp_path / n / "job.toml").read_text())["meta"] for n in ("a", "b")]
    assert meta[0]["fingerprint"] == meta[1]["fingerprint"] and meta[0]["manifest_digest"] == meta[1]["manifest_digest"]
    plan(tmp_path / "c", "--corpus", "llava-instruct", "--source", source, "--image-root", root, *TINY,
         "--set", f"corpus.seed={seed_of(tmp_path / 'a') + 1}")
    a, c = (read_manifest(tmp_path / n / "manifest.parquet").column("image_id").to_pylist() for n in ("a", "c"))
    assert a != c and sorted(a) == sorted(c)  # another seed: another order of the same images


def test_every_shard_is_a_mix_of_the_corpus_sources(tmp_path):
    sources = ["coco", "gqa", "ocr_vqa", "textvqa", "vg"]
    records = [conv(f"{s}/{i:03d}.jpg", rid=f"{s}{i}") for s in sources for i in range(40)]  # 200 images, by source
    (tmp_path / "images").mkdir()
    (tmp_path / "mix.json").write_text(json.dumps(records))
    r = plan(tmp_path / "job", "--corpus", "llava-instruct", "--source", tmp_path / "mix.json", "--image-root",
             tmp_path / "images", "--set", "corpus.check_files=false", "--shard-size", 20, *TINY)
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "job" / "manifest.parquet").to_pylist()
    assert len(m) == 200 and max(row["shard"] for row in m) == 9
    for shard in range(10):
        held = {row["image_id"].split("/")[0] for row in m if row["shard"] == shard}
        assert len(held) >= 3, (shard, held)  # in id order, a shard would be one source


def test_a_negative_seed_is_refused_in_one_line(tmp_path, corpus):
    source, root = corpus
    r = plan(tmp_path / "job", "--corpus", "llava-instruct", "--source", source, "--image-root", root, *TINY,
             "--set", "corpus.seed=-1")
    assert r.exit_code == 1 and "'corpus.seed': input should be greater than or equal to 0" in r.output
    assert "Traceback" not in r.output


def test_sample_is_a_seeded_subset(tmp_path, corpus):
    source, root = corpus
    args = ["--corpus", "llava-instruct", "--source", source, "--image-root", root, "--sample", 3, *TINY]
    ids = {}
    for name, seed in (("s1", 0), ("s2", 0), ("s3", 1)):
        assert plan(tmp_path / name, *args, "--set", f"corpus.seed={seed}").exit_code == 0
        ids[name] = read_manifest(tmp_path / name / "manifest.parquet").column("image_id").to_pylist()
    assert ids["s1"] == ids["s2"] and len(ids["s1"]) == 3 and ids["s1"] == row_order(sorted(ids["s1"]), 0)
    full = {"coco/a.jpg", "coco/b.jpg", "coco/inside_link.jpg", "gqa/c.jpg", "vg/d.jpg"}
    assert set(ids["s3"]) <= full and ids["s3"] != ids["s1"]


def test_a_different_job_is_refused_unless_forced(tmp_path, corpus):
    source, root = corpus
    job = tmp_path / "job"
    base = ["--corpus", "llava-instruct", "--source", source, "--image-root", root, *TINY]
    assert plan(job, *base).exit_code == 0
    def files():  # bytes and mtime of what plan wrote (run.lock records the last lock holder)
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in job.iterdir()
                if p.is_file() and p.name != "run.lock"}

    written = files()
    again = plan(job, *base)
    assert again.exit_code == 0 and "nothing rewritten" in again.output
    assert files() == written  # a repeated plan rewrites nothing
    results = [job / "commits", job / "tokens.zarr", job / "wds"]  # what a run writes
    for folder in results:
        folder.mkdir()
        (folder / "x").write_text("{}")
    (job / "failures.parquet").write_bytes(b"PAR1")
    refused = plan(job, *base, "--set", "detect.top_k=5")
    assert refused.exit_code == 1 and re.search(r"detect\.top_k: \d+ -> 5", refused.output) and "--force" in refused.output
    assert all(path.exists() for path in [*results, job / "failures.parquet"])
    forced = plan(job, *base, "--set", "detect.top_k=5", "--force")
    assert forced.exit_code == 0 and not any(path.exists() for path in [*results, job / "failures.parquet"])
    assert tomllib.loads((job / "job.toml").read_text())["detect"]["top_k"] == 5


def test_speed_settings_do_not_make_a_different_job(tmp_path, corpus):
    source, root = corpus
    base = ["--corpus", "llava-instruct", "--source", source, "--image-root", root, *TINY]
    assert plan(tmp_path / "job", *base).exit_code == 0
    r = plan(tmp_path / "job", *base, "--set", "invert.resources.batch_size=64")
    assert r.exit_code == 0 and "nothing rewritten" in r.output


def test_folder_corpus_plans_every_image_below_the_folder(tmp_path):
    photos = tmp_path / "photos"
    for rel in ["b/x.JPG", "a/y.png", "a/deep/z.webp", "notes.txt", "a/w.gif"]:
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(b"img")
    (tmp_path / "secret.jpg").write_bytes(b"s")
    os.symlink(tmp_path / "secret.jpg", photos / "leak.jpg")
    r = plan(tmp_path / "job", "--corpus", "folder", "--source", photos, *TINY)
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "job" / "manifest.parquet").to_pylist()
    assert [row["image_id"] for row in m] == row_order(["a/deep/z.webp", "a/w.gif", "a/y.png", "b/x.JPG"],
                                                       seed_of(tmp_path / "job"))
    assert all(row["corpus_rows"] == [] for row in m)
    assert "leak.jpg" in r.output


@pytest.mark.parametrize("setup, args, message", [
    (lambda t: None, ["--source", "{t}/nope.json", "--image-root", "{t}"], "corpus source not found"),
    (lambda t: (t / "c.json").write_text("[]"), ["--source", "{t}/c.json", "--image-root", "{t}/nodir"], "image root is not a directory"),
    (lambda t: (t / "c.json").write_text("[]"), ["--source", "{t}/c.json", "--image-root", "{t}"], "empty corpus"),
    (lambda t: (t / "c.json").write_text('[{"image": "a.jpg", "conversations": []},\n{"image": }]'),
     ["--source", "{t}/c.json", "--image-root", "{t}"], "malformed JSON at line 2, column 11"),
    (lambda t: (t / "c.json").write_text('[{"conversations": []}]'), ["--source", "{t}/c.json", "--image-root", "{t}"],
     "no images to plan"),
    (lambda t: (t / "c.json").write_text("[]"), ["--source", "{t}/c.json"], "needs --image-root"),
    (lambda t: None, ["--source", "{t}", "--image-root", "{t}"], "is a directory"),
])
def test_bad_input_is_one_line_error_not_a_traceback(tmp_path, setup, args, message):
    setup(tmp_path)
    r = plan(tmp_path / "job", "--corpus", "llava-instruct", *[a.format(t=tmp_path) for a in args], *TINY)
    assert r.exit_code == 1
    assert message in r.output and r.output.startswith("Error: ") and r.output.count("\n") == 1
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)
    assert not (tmp_path / "job" / "job.toml").exists()


def test_checkpoints_must_be_given_for_real_models(tmp_path, corpus, monkeypatch):
    source, root = corpus
    monkeypatch.delenv("MASKTOK_DETR_CHECKPOINT", raising=False)
    r = plan(tmp_path / "job", "--corpus", "llava-instruct", "--source", source, "--image-root", root)
    assert r.exit_code == 1 and "MASKTOK_DETR_CHECKPOINT" in r.output
    monkeypatch.setenv("MASKTOK_DETR_CHECKPOINT", "/w/detr")
    monkeypatch.setenv("MASKTOK_SAM_CHECKPOINT", "/w/sam.pth")
    monkeypatch.setenv("MASKTOK_CLIP_CHECKPOINT", "/w/clip.bin")
    r = plan(tmp_path / "job", "--corpus", "llava-instruct", "--source", source, "--image-root", root, "--spec", "llava-instruct")
    assert r.exit_code == 0, r.output
    resolved = tomllib.loads((tmp_path / "job" / "job.toml").read_text())
    assert resolved["segment"]["checkpoint"] == "/w/sam.pth" and resolved["corpus"]["kind"] == "llava-instruct"


def test_help_explains_the_commands():
    top = CliRunner().invoke(main, ["--help"])
    assert top.exit_code == 0 and "plan" in top.output
    sub = CliRunner().invoke(main, ["plan", "--help"])
    for option in ("--corpus", "--source", "--image-root", "--spec", "--shard-size", "--set", "--sample", "--force"):
        assert option in sub.output


def test_a_job_planned_for_an_older_record_version_is_not_run_further(tmp_path, corpus):
    """masktok run refuses it with what to do, before starting anything (no misleading
    'edited after planning')."""
    from masktok.pipeline.run import load_job
    from masktok.schemas.errors import RunError
    from masktok.schemas.jobdir import JobDir

    source, root = corpus
    job = tmp_path / "job"
    assert plan(job, "--corpus", "llava-instruct", "--source", source, "--image-root", root, *TINY).exit_code == 0
    load_job(JobDir(job))  # as planned: fine
    text = (job / "job.toml").read_text()
    assert "record_schema_version = 2" in text
    (job / "job.toml").write_text(text.replace("record_schema_version = 2", "record_schema_version = 1"))
    with pytest.raises(RunError, match="older masktok .*record version 1.*--force"):
        load_job(JobDir(job))


def test_a_json_source_without_corpus_says_to_pass_corpus(tmp_path, corpus, monkeypatch):
    """corpus.kind defaults to folder (no --spec, no --corpus): the error says what to pass."""
    source, root = corpus
    for name in ("DETR", "SAM", "CLIP"):
        monkeypatch.setenv(f"MASKTOK_{name}_CHECKPOINT", "/w/x")
    jsonl = tmp_path / "questions.jsonl"
    jsonl.write_text("{}\n")
    for path in (source, jsonl):
        r = plan(tmp_path / "job", "--source", path)
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        assert "--corpus llava-pretrain|llava-instruct|llava-eval" in r.output and path.name in r.output


def test_plan_help_examples_write_under_runs_not_the_spec_folder():
    text = CliRunner().invoke(main, ["plan", "--help"]).output
    examples = re.findall(r"masktok plan (\S+)", text)
    assert len(examples) == 4 and all(e.startswith("runs/") for e in examples), examples
