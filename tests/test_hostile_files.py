"""Hostile and broken input files (issue 34 item 5): the corpus readers of `masktok plan`, the
question files of `answer` and the answer files of `score`, given random junk, truncated files
and records of the wrong types (hypothesis), each either read or refused in one line (a
MasktokError: `Error: ...`, exit status 1), never a traceback; question files naming an image
outside the image root are refused as plan refuses it. Each test prints how many inputs it
tried (`pytest -s`) and asserts it tried enough. Broken job directories: tests/test_broken_jobs.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from masktok.cli import main
from masktok.evaluate.questions import read_question_file
from masktok.evaluate.scoring import read_answer_file
from masktok.schemas.errors import DataError, MasktokError

#: Few examples each (the suite stays fast); no deadline (a shared 2-core machine).
CHEAP = settings(max_examples=50, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
#: Inputs each test must have tried: hypothesis stops early only on a strategy it exhausted.
AT_LEAST = 40

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
image_paths = st.sampled_from(["a.jpg", "x/b.png", "../up.jpg", "/abs.jpg", " pad.jpg", "", ".", "c\x00.jpg",
                               "C:\\win.jpg", "dir/../../out.jpg"]) | st.text(max_size=12)
#: Records with the keys the readers look for, their values of any type (or the right one).
records = st.fixed_dictionaries({}, optional={
    "id": json_values, "question_id": json_values, "image": image_paths | json_values,
    "text": st.text(max_size=10) | json_values, "category": json_values, "prompt": json_values,
    "conversations": st.lists(st.fixed_dictionaries({}, optional={"from": st.sampled_from(["human", "gpt"]) | json_values,
                                                                  "value": st.text(max_size=10) | json_values}),
                              max_size=3) | json_values,
}) | json_values
#: Records as the real files hold them (a question line; a LLaVA record; an answer line), so
#: that some inputs are read, not all refused.
plausible = st.builds(lambda i, image: {"question_id": i, "id": str(i), "image": image, "text": "Is it red?",
                                        "conversations": [{"from": "human", "value": "<image>\nIs it red?"},
                                                          {"from": "gpt", "value": "Yes"}]},
                      st.integers(0, 3), st.sampled_from(["a.jpg", "x/b.png"]))
records = plausible | records


@st.composite
def file_bytes(draw: st.DrawFn) -> bytes:
    """Junk bytes, or the records as a JSON array or as JSON Lines, maybe cut anywhere."""
    kind = draw(st.sampled_from(["junk", "array", "lines", "lines"]))
    if kind == "junk":
        return draw(st.binary(max_size=300))
    items = draw(st.lists(records, max_size=5))
    text = (json.dumps(items) if kind == "array" else "".join(json.dumps(r) + "\n" for r in items)).encode()
    if draw(st.booleans()):  # truncated, as by a full disk or a cut download
        text = text[:draw(st.integers(0, len(text)))]
    return text


def read_or_one_line(call, tried: Counter) -> None:
    """``call()`` reads, or raises a MasktokError of one line; anything else fails the test."""
    try:
        call()
        tried["read"] += 1
    except MasktokError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        tried["one line"] += 1


def cli_read_or_one_line(args: list[object], tried: Counter) -> None:
    """The command exits 0, or 1 with one `Error:` line; never an exception (a traceback)."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code in (0, 1) and (res.exception is None or isinstance(res.exception, SystemExit)), \
        (res.output, res.exception)
    if res.exit_code == 1:
        last = res.output.strip().splitlines()[-1]
        assert last.startswith("Error: ") and "Traceback" not in res.output, res.output
    tried[f"exit {res.exit_code}"] += 1


def fuzz_file(name: str, path: Path, *checks: Callable[[Counter], None]) -> None:
    """Write each drawn input to ``path`` and run every check on it (each counts what it saw
    in ``tried``); at least AT_LEAST inputs must have been tried."""
    tried: Counter = Counter()

    @CHEAP
    @given(data=file_bytes())
    def check(data: bytes) -> None:
        path.write_bytes(data)
        for one in checks:
            one(tried)

    check()
    print(f"\n{name}: {sum(tried.values())} inputs tried ({dict(tried)})")
    assert sum(tried.values()) >= AT_LEAST


@pytest.mark.parametrize("kind, suffix", [("llava-instruct", ".json"), ("llava-eval", ".jsonl")])
def test_plan_reads_or_refuses_in_one_line_any_corpus_file(kind, suffix, tmp_path):
    source, images = tmp_path / f"corpus{suffix}", tmp_path / "images"
    images.mkdir()
    fuzz_file(f"plan --corpus {kind}", source, lambda tried: cli_read_or_one_line(
        ["plan", tmp_path / "job", "--corpus", kind, "--source", source, "--image-root", images,
         "--spec", "demo", "--set", "corpus.check_files=false", "--force", "-q"], tried))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".tsv"])
def test_question_files_are_read_or_refused_in_one_line(suffix, tmp_path):
    path = tmp_path / f"questions{suffix}"
    fuzz_file(f"question files ({suffix})", path, lambda tried: read_or_one_line(lambda: read_question_file(path), tried))


def test_answer_files_are_read_or_refused_in_one_line_by_the_reader_and_score(tmp_path):
    answers, labels = tmp_path / "answers.jsonl", tmp_path / "coco_pope_random.json"
    labels.write_text("".join(json.dumps({"question_id": i, "label": "yes" if i % 2 else "no"}) + "\n"
                              for i in range(4)))
    fuzz_file("answer files", answers,
              lambda tried: read_or_one_line(lambda: read_answer_file(answers), tried),
              lambda tried: cli_read_or_one_line(["score", "pope", "--answers", answers, "--labels", labels], tried))


@pytest.mark.parametrize("image", ["../outside.jpg", "/etc/passwd", "img/../../x.jpg", "C:\\x.jpg"])
def test_a_question_naming_an_image_outside_the_image_root_is_refused_as_in_plan(image, tmp_path):
    from masktok.pipeline.corpus import lexical_reject

    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(json.dumps({"question_id": 1, "image": "ok.jpg", "text": "?"}) + "\n"
                     + json.dumps({"question_id": 2, "image": image, "text": "?"}) + "\n")
    with pytest.raises(DataError, match=rf"line 2: image .* is refused \({lexical_reject(image)}\)"):
        read_question_file(jsonl)
    science = tmp_path / "llava_test_CQM-A.json"
    science.write_text(json.dumps([{"id": "a", "image": image, "conversations": [{"from": "human", "value": "?"}]}]))
    with pytest.raises(DataError, match=rf"is refused \({lexical_reject(image)}\), as `masktok plan` refuses it"):
        read_question_file(science)
