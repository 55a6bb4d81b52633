"""`masktok plan --corpus llava-eval`: a LLaVA-1.5 eval question file (JSON Lines) as a corpus.

Corpus rows of an eval file are 0-based line indexes (line number - 1), blank lines included.
"""

import json
import subprocess
import sys
import tomllib

import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.pipeline.corpus import iter_json_lines, scan_llava_eval
from masktok.pipeline.plan import row_order
from masktok.schemas.errors import CorpusError
from masktok.schemas.manifest import read_manifest

TINY = ["--spec", "demo"]  # tiny presets: no checkpoint env vars needed
COCO = "COCO_val2014_000000310196.jpg"


def question(qid, image=None, **extra):
    """One line of a question file, as LLaVA's model_vqa_loader reads it."""
    rec = {"question_id": qid, "text": "Is there a snowboard in the image?", "category": "adversarial", **extra}
    if image is not None:
        rec["image"] = image
    return json.dumps(rec)


#: Lines of the eval corpus (line number = position + 1). Images: COCO (3 questions), a/b.png, c.jpg.
LINES = [
    question(1, COCO),           # line 1
    question(2, "a/b.png"),      # line 2
    "",                          # line 3: blank, skipped
    question(3, COCO),           # line 4: same image again
    question(4),                 # line 5: no image -> invalid
    question(5, "c.jpg"),        # line 6
    question(6, "../up.jpg"),    # line 7: leaves the root -> rejected path
    question(7, COCO),           # line 8
]


@pytest.fixture
def eval_corpus(tmp_path):
    """(questions.jsonl, image root) with every image of LINES on disk."""
    root = tmp_path / "images"
    for rel in (COCO, "a/b.png", "c.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"img")
    source = tmp_path / "questions.jsonl"
    source.write_text("\n".join(LINES) + "\n")
    return source, root


def plan(job, source, root, *extra):
    return CliRunner().invoke(main, ["plan", str(job), "--corpus", "llava-eval", "--source", str(source),
                                     "--image-root", str(root), *TINY, *map(str, extra)])


def test_eval_questions_give_one_manifest_row_per_distinct_image(tmp_path, eval_corpus):
    source, root = eval_corpus
    r = plan(tmp_path / "job", source, root)
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "job" / "manifest.parquet").to_pylist()
    seed = tomllib.loads((tmp_path / "job" / "job.toml").read_text())["corpus"]["seed"]
    assert [row["image_id"] for row in m] == row_order(sorted([COCO, "a/b.png", "c.jpg"]), seed)
    by_id = {row["image_id"]: row for row in m}
    assert by_id[COCO]["corpus_rows"] == [0, 3, 7]  # three questions, one image planned once
    assert by_id["a/b.png"]["corpus_rows"] == [1] and by_id["c.jpg"]["corpus_rows"] == [5]
    assert by_id["a/b.png"]["path"] == str(root.absolute() / "a/b.png")


def test_plan_report_counts_questions_duplicates_and_bad_lines(tmp_path, eval_corpus):
    source, root = eval_corpus
    r = plan(tmp_path / "job", source, root)
    report = json.loads((tmp_path / "job" / "plan.json").read_text())
    assert report["kind"] == "llava-eval"
    assert report["records_read"] == 7  # the blank line is not a record
    assert report["invalid"] == 1 and report["invalid_examples"] == ["line 5: no 'image'"]
    assert report["rejected"] == 1 and report["rejected_examples"] == ["'../up.jpg' ('..' leaves the image root)"]
    assert report["text_only"] == 0 and report["duplicate_references"] == 2
    assert report["unique_images"] == 3 and report["planned_images"] == 3 and report["missing"] == 0
    assert "line 5: no 'image'" in r.output and "text-only" not in r.output  # no text-only questions


def test_scan_judges_each_lines_image_like_the_other_llava_kinds(tmp_path):
    lines = [question(1, "x.jpg"), "[1, 2]", question(2, 5), question(3, "/abs.jpg"), "   ", question(4, "x.jpg")]
    path = tmp_path / "q.jsonl"
    path.write_bytes("\r\n".join(lines).encode())  # Windows line ends, no final newline
    scan = scan_llava_eval(path)
    assert scan.references == {"x.jpg": [0, 5]}
    assert scan.records_read == 5 and scan.text_only == 0
    assert scan.invalid_examples == ["line 2: must be an object, got list", "line 3: 'image' must be a string, got int"]
    assert scan.rejected_examples == ["'/abs.jpg' (absolute path)"]


@pytest.mark.parametrize("content, message", [
    (question(1, COCO) + "\n\n" + '{"question_id": 2, "image": }\n', "malformed JSON at line 3, column 29"),
    (question(1, COCO) + "\n" + question(2, COCO) + question(3, COCO) + "\n", "malformed JSON at line 2"),
    (b"\xff\xfe not utf-8\n", "not UTF-8 text"),
])
def test_unreadable_line_is_a_one_line_error_naming_file_and_line(tmp_path, eval_corpus, content, message):
    _, root = eval_corpus
    source = tmp_path / "bad.jsonl"
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = plan(tmp_path / "job", source, root)
    assert r.exit_code == 1 and r.output.startswith("Error: ") and r.output.count("\n") == 1
    assert str(source) in r.output and message in r.output
    assert not (tmp_path / "job" / "job.toml").exists()


def test_lines_are_read_one_at_a_time(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(question(1, "a.jpg") + "\n{not json\n")
    lines = iter_json_lines(path)
    assert next(lines) == (1, json.loads(question(1, "a.jpg")))  # a whole-file parse would fail here
    with pytest.raises(CorpusError, match="line 2"):
        next(lines)


def test_same_eval_inputs_give_the_same_manifest_byte_for_byte(tmp_path, eval_corpus):
    source, root = eval_corpus
    for name in ("a", "b"):
        assert plan(tmp_path / name, source, root).exit_code == 0
    assert (tmp_path / "a/manifest.parquet").read_bytes() == (tmp_path / "b/manifest.parquet").read_bytes()
    meta = [tomllib.loads((tmp_path / n / "job.toml").read_text())["meta"] for n in ("a", "b")]
    assert meta[0]["manifest_digest"] == meta[1]["manifest_digest"] and meta[0]["fingerprint"] == meta[1]["fingerprint"]


def test_planning_an_eval_corpus_loads_neither_ray_nor_a_model(tmp_path, eval_corpus):
    source, root = eval_corpus
    code = (
        "import sys\nfrom masktok.cli import main\n"
        f"try: main(['plan', {str(tmp_path / 'job')!r}, '--corpus', 'llava-eval', '--source', {str(source)!r},"
        f" '--image-root', {str(root)!r}, '--spec', 'demo', '-q'])\n"
        "except SystemExit as e: assert e.code in (0, None), e.code\n"
        "print(sorted(m for m in ('ray', 'torch', 'open_clip', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]" and (tmp_path / "job" / "manifest.parquet").exists()
