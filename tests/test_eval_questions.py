"""LLaVA-1.5's question files read as LLaVA's eval scripts read them (evaluate/questions.py),
planned as a corpus (`masktok plan --corpus llava-eval`), and the answer lines masktok writes
for them (evaluate/answer.py). Hand-made files in the real formats; no model."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from masktok.evaluate.answer import answer_line
from masktok.evaluate.questions import read_question_file
from masktok.schemas.eval_files import embedded_image_id
from masktok.cli import main
from masktok.schemas.errors import DataError
from masktok.schemas.manifest import read_manifest

SUFFIX_SQA = "Answer with the option's letter from the given choices directly."


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE = _png((200, 0, 0)), _png((0, 0, 200))


def _mmbench_tsv(path: Path) -> Path:
    """Two questions, the first with two circular copies (index + k x 1,000,000, same picture,
    options rotated); the second has a hint, only options A and B (C is "nan": LLaVA's is_none)
    and another picture."""
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    red, blue = base64.b64encode(RED).decode(), base64.b64encode(BLUE).decode()
    rows = [[0, "What colour?", "", "red", "blue", "green", "grey", "A", "color", red],
            [1, "Which shape?", "Look at it.", "square", "circle", "nan", "", "B", "shape", blue],
            [1000000, "What colour?", "", "blue", "green", "grey", "red", "D", "color", red],
            [2000000, "What colour?", "", "green", "grey", "red", "blue", "C", "color", red]]
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def _scienceqa(path: Path) -> Path:
    path.write_text(json.dumps([
        {"id": "4", "conversations": [{"from": "human", "value": "Which word?\nA. chiasmus\nB. apostrophe"},
                                      {"from": "gpt", "value": "B"}]},
        {"id": "11", "image": "11/image.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat is the colony?\nA. Maryland\nB. Vermont"},
                           {"from": "gpt", "value": "A"}]}]))
    return path


def test_repeated_question_ids_are_kept_line_for_line(tmp_path: Path) -> None:
    """MME asks two questions per image with the image path as the id."""
    path = tmp_path / "llava_mme.jsonl"
    lines = [{"question_id": "count/1.jpg", "image": "count/1.jpg", "text": t, "category": "count"}
             for t in ("Are there two dogs?", "Are there three dogs?")]
    path.write_text("".join(json.dumps(q) + "\n" for q in lines))
    qfile = read_question_file(path)
    assert [(q.line, q.question_id, q.prompt) for q in qfile.questions] == [
        (0, "count/1.jpg", "Are there two dogs?"), (1, "count/1.jpg", "Are there three dogs?")]
    assert qfile.kind == "loader" and qfile.max_new_tokens == 128
    mmvet = tmp_path / "llava-mm-vet.jsonl"
    mmvet.write_text(json.dumps({"image": "v1_0.png", "text": "What is x?", "category": "conv", "question_id": 0}))
    assert read_question_file(mmvet).max_new_tokens == 1024  # model_vqa.py's fixed 1024
    renamed = tmp_path / "questions.jsonl"  # known by MM-Vet's own images, not by the name
    renamed.write_text(mmvet.read_text() + "\n" + json.dumps({"image": "v1_17.jpg", "text": "Why?", "question_id": 17}))
    assert read_question_file(renamed).max_new_tokens == 1024
    assert read_question_file(renamed).kind == "mm-vet"
    assert read_question_file(path, benchmark="mmvet").max_new_tokens == 1024  # named outright
    assert read_question_file(mmvet, benchmark="gqa").max_new_tokens == 128
    with pytest.raises(DataError, match="unknown benchmark"):
        read_question_file(mmvet, benchmark="nope")


def test_scienceqa_items_are_asked_as_model_vqa_science_asks_them(tmp_path: Path) -> None:
    qfile = read_question_file(_scienceqa(tmp_path / "llava_test_CQM-A.json"))
    text_only, with_image = qfile.questions
    assert qfile.kind == "scienceqa" and qfile.max_new_tokens == 1024
    assert text_only.image is None and text_only.question_id == "4"
    assert text_only.text == text_only.prompt == f"Which word?\nA. chiasmus\nB. apostrophe\n{SUFFIX_SQA}"
    assert with_image.image == "11/image.png"
    assert with_image.text == f"What is the colony?\nA. Maryland\nB. Vermont\n{SUFFIX_SQA}"  # <image> removed
    assert with_image.prompt == "<image>\n" + with_image.text  # as LLaVA's answer files have it


def test_mmbench_rows_prompt_options_and_one_image_per_picture(tmp_path: Path) -> None:
    qfile = read_question_file(_mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv"))
    first, second, copy1, copy2 = qfile.questions
    assert [q.question_id for q in qfile.questions] == [0, 1, 1000000, 2000000]
    assert first.image == copy1.image == copy2.image == embedded_image_id(RED) != second.image
    assert first.image.endswith(".png") and len({first.image, second.image}) == 2
    assert first.prompt == "What colour?\nA. red\nB. blue\nC. green\nD. grey"
    assert first.text == first.prompt + "\n" + SUFFIX_SQA
    assert second.prompt == "Look at it.\nWhich shape?\nA. square\nB. circle"  # options stop at "nan"
    assert second.extra == {"round_id": 0, "options": ["square", "circle"], "option_char": ["A", "B"]}
    assert copy1.category == "color" and qfile.max_new_tokens == 1024
    cn = read_question_file(tmp_path / "mmbench_dev_20230712.tsv", lang="cn").questions[0]
    assert cn.text == first.prompt + "\n请直接回答选项字母。" and cn.prompt == first.prompt


def test_a_file_in_no_known_format_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "Your_Results.txt"
    path.write_text("1.jpg\tIs it?\tYes\n")
    with pytest.raises(DataError, match="no LLaVA question file"):
        read_question_file(path)


def test_mmbench_answer_lines_carry_llavas_fields_in_its_order(tmp_path: Path) -> None:
    q = read_question_file(_mmbench_tsv(tmp_path / "mmbench.tsv")).questions[1]
    line = answer_line(q, "B", "cls,patch:9,obj:5", 15, "mask-llava")
    assert list(line) == ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id",
                          "model_id", "metadata"]
    assert line["question_id"] == 1 and json.loads(json.dumps(line)) == line
    assert line["metadata"] == {"tokens": "cls,patch:9,obj:5", "visual_tokens": 15, "line": 1, "category": "shape"}


def _plan(job: Path, source: Path, *extra: str):
    return CliRunner().invoke(main, ["plan", str(job), "--corpus", "llava-eval", "--source", str(source),
                                     "--spec", "demo", *extra])


def test_plan_decodes_mmbench_pictures_once_each_into_the_job(tmp_path: Path) -> None:
    source = _mmbench_tsv(tmp_path / "mmbench.tsv")
    job = tmp_path / "job"
    r = _plan(job, source)
    assert r.exit_code == 0, r.output
    rows = {row["image_id"]: row for row in read_manifest(job / "manifest.parquet").to_pylist()}
    red, blue = embedded_image_id(RED), embedded_image_id(BLUE)
    assert set(rows) == {red, blue}
    assert rows[red]["corpus_rows"] == [0, 2, 3] and rows[blue]["corpus_rows"] == [1]
    assert (job / "images" / red).read_bytes() == RED and (job / "images" / blue).read_bytes() == BLUE
    assert rows[red]["path"] == str((job / "images" / red).absolute())
    manifest = (job / "manifest.parquet").read_bytes()
    again = _plan(job, source)  # the same TSV again: the same content ids, nothing to re-plan
    assert again.exit_code == 0 and "already holds this exact job" in again.output
    assert (job / "manifest.parquet").read_bytes() == manifest
    assert sorted(p.name for p in (job / "images").iterdir()) == sorted([red, blue])
    refused = _plan(tmp_path / "job2", source, "--image-root", str(tmp_path))
    assert refused.exit_code == 1 and "leave out --image-root" in refused.output


def test_plan_takes_scienceqa_with_its_text_only_items_skipped(tmp_path: Path) -> None:
    source = _scienceqa(tmp_path / "llava_test_CQM-A.json")
    root = tmp_path / "images"
    (root / "11").mkdir(parents=True)
    (root / "11" / "image.png").write_bytes(RED)
    r = _plan(tmp_path / "job", source, "--image-root", str(root))
    assert r.exit_code == 0, r.output
    assert [row["image_id"] for row in read_manifest(tmp_path / "job" / "manifest.parquet").to_pylist()] == [
        "11/image.png"]
    report = json.loads((tmp_path / "job" / "plan.json").read_text())
    assert report["records_read"] == 2 and report["text_only"] == 1
    assert "text-only records" in r.output
