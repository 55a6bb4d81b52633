"""Reading LLaVA JSON as a stream (pipeline/corpus.py)."""

import json

import pytest

from masktok.pipeline.corpus import iter_json_array, lexical_reject
from masktok.schemas.errors import CorpusError

TRICKY = [
    {"id": "1", "image": "coco/train2017/000000033471.jpg", "conversations": [{"from": "human", "value": "<image>\nA \"quoted\" ünïcødé ✓ \\ path"}]},
    12345678901234567890,
    -1.5e-7,
    "a string, with ] and , inside",
    [1, [2, [3]], {"k": "}"}],
    {"id": "x" * 300, "conversations": []},
    None, True, False,
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 1])
def test_stream_gives_exactly_what_json_load_gives_whatever_the_chunking(tmp_path, chunk, indent):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(TRICKY, indent=indent, ensure_ascii=False), encoding="utf-8")
    assert list(iter_json_array(path, chunk_chars=chunk)) == TRICKY


def test_empty_array_yields_nothing(tmp_path):
    (tmp_path / "e.json").write_text(" [ \n ] \n")
    assert list(iter_json_array(tmp_path / "e.json")) == []


@pytest.mark.parametrize("text, where", [
    ('[\n {"a": 1},\n {"a": 2,}\n]', "line 3, column 10"),
    ('[\n {"a": 1}\n {"a": 2}\n]', "line 3, column 2"),
    ('[{"a": "unterminated}]', "line 1, column 8"),
    ('[{"a": 1}, ]', "line 1, column 12"),
    ('[{"a": 1}] extra', "line 1, column 12"),
    ('{"a": 1}', "line 1, column 1"),
    ('[{"a": 1}', "line 1, column 10"),
])
@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_malformed_json_says_where(tmp_path, text, where, chunk):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(CorpusError) as err:
        list(iter_json_array(path, chunk_chars=chunk))
    assert f"malformed JSON at {where}" in str(err.value) and str(path) in str(err.value)


def test_empty_file_and_non_utf8_are_clear_errors(tmp_path):
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(CorpusError, match="the file is empty"):
        list(iter_json_array(tmp_path / "empty.json"))
    (tmp_path / "latin1.json").write_bytes('[{"a": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        list(iter_json_array(tmp_path / "latin1.json"))


@pytest.mark.parametrize("image_id, verdict", [
    ("coco/train2017/1.jpg", None), ("00453/004539375.jpg", None), ("a..b/c.jpg", None),
    ("/etc/passwd", "absolute path"), ("C:\\x.jpg", "absolute path"), ("../x.jpg", "'..' leaves the image root"),
    ("a/../../x.jpg", "'..' leaves the image root"), ("a\\..\\x.jpg", "'..' leaves the image root"),
    ("", "empty or padded with spaces"), (" a.jpg", "empty or padded with spaces"), (".", "names the image root itself"),
    ("a\x00.jpg", "contains a NUL byte"),
])
def test_paths_are_judged_before_any_file_is_touched(image_id, verdict):
    assert lexical_reject(image_id) == verdict
