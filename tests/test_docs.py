"""Docs that cannot drift (issue 35): every `masktok ...` command line of README.md and
docs/*.md names a command (and subcommand) that exists and only flags it has, by click's own
parameter lists; every repository path the docs name exists.

Command lines are read from code blocks (fenced, or indented four spaces), their ``\\``
continuations joined, comments dropped, and from inline code that starts with ``masktok ``;
a torchrun line's ``-m masktok.trainer.launch ARGS`` is ``masktok ARGS``. A word in capitals
(``NAME``, ``JOBDIR``) is a placeholder: where it stands for a subcommand, the flags are
checked against all of that group's subcommands.

Paths are the words that start with one of the repository's top-level folders
(``stages/decode.py``, ``docs/scale.md``, a folder such as ``trainer/``), the targets of
relative Markdown links, and inline code that starts with ``../``; a segment with ``*`` or a
placeholder in capitals matches any name. ``EXTERNAL`` lists the few paths that belong to
other projects (each doc names whose).
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import click.testing
import pytest

from masktok.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")
             and p.name not in ("shared", "runs", "demo-job") and not p.name.endswith(".egg-info"))
EXTERNAL = {
    "docs/Evaluation.md": "LLaVA's evaluation guide (docs/eval.md)",
    "tools/eval_tool.zip": "MME's scoring tool, on another project's branch (docs/eval.md)",
    "evaluate/toy.py": "the module docs/eval.md's 'Adding a benchmark' has the reader write",
}
EXAMPLE_COMMANDS = {"toy"}  # the subcommand that module adds (tests/test_eval_registry.py does it)
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(?:[=.][A-Za-z0-9_.]*)?|\[.*|\.\.\.|[A-Z_]+\|.*")
FLAG = re.compile(r"(?<![\w/=.:-])(--?[A-Za-z][\w-]*)")
PATH = re.compile(r"(?<![\w./$~-])((?:" + "|".join(map(re.escape, TOP)) + r")/[\w.*/{}-]*)")


def _code_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) of every masktok command line in the code blocks of a Markdown text."""
    out, fenced, lines = [], False, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
            i += 1
            continue
        start = i
        if fenced or line.startswith("    "):
            command = line.strip().removeprefix("$ ")
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            command = re.sub(r"\s#.*$", "", command)
            if "-m masktok.trainer.launch " in command:
                out.append((start + 1, "masktok " + command.split("-m masktok.trainer.launch ", 1)[1]))
            elif re.match(r"(?:[A-Z_]+=\S+\s+)*masktok\s", command):
                out.append((start + 1, command[command.index("masktok"):]))
        i += 1
    return out


def _inline_commands(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in re.finditer(r"`(masktok\s[^`\n]+)`", text)]


def commands() -> list[tuple[str, str]]:
    """(where, command) of every masktok command line the docs show."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for line, command in _code_commands(text) + _inline_commands(text):
            found.append((f"{doc.relative_to(ROOT)}:{line}", command))
    return found


def check_command(command: str) -> list[str]:
    """What is wrong with one command line: an unknown (sub)command, or flags it lacks."""
    words = command.split()
    assert words[0] == "masktok", command
    cmd: click.Command = main
    ctx = click.Context(main, info_name="masktok")
    names, rest = ["masktok"], words[1:]
    candidates = [cmd]
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        word = rest[0]
        if word.startswith("{") and word.endswith("}"):  # `masktok score {pope,mme}`: each one
            names.append(word)
            missing = [w for w in word[1:-1].split(",") if cmd.get_command(ctx, w) is None]
            if missing:
                return [f"`{' '.join(names[:-1])}` has no subcommand {w!r}" for w in missing]
            candidates = [cmd.get_command(ctx, w) for w in word[1:-1].split(",")]
            rest = rest[1:]
            break
        if PLACEHOLDER.fullmatch(word) or word in EXAMPLE_COMMANDS:  # `masktok score NAME`: any subcommand
            candidates = [cmd.get_command(ctx, n) for n in cmd.list_commands(ctx)]
            rest = rest[1:]
            break
        sub = cmd.get_command(ctx, word)
        if sub is None:
            return [f"`{' '.join(names)}` has no subcommand {word!r}"]
        ctx = click.Context(sub, info_name=word, parent=ctx)
        cmd, candidates = sub, [sub]
        names.append(word)
        rest = rest[1:]
    known = {"--help", "-h"} | {o for c in candidates for p in c.params for o in (*p.opts, *p.secondary_opts)}
    flags = [f for w in rest for f in FLAG.findall(w.strip("[]()|,;'\""))]
    return [f"`{' '.join(names)}` has no option {f}" for f in flags if f not in known]


def repository_paths(doc: Path) -> list[tuple[int, str]]:
    """(line, path relative to the repository) of every repository path a doc names."""
    text, out = doc.read_text(), []
    lineno = lambda pos: text.count("\n", 0, pos) + 1  # noqa: E731
    for m in PATH.finditer(text):
        out.append((lineno(m.start()), m.group(1).rstrip(".,:;")))
    for m in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):  # relative Markdown links
        if not re.match(r"[a-z]+:", m.group(1)):
            out.append((lineno(m.start()), _relative(doc, m.group(1))))
    for m in re.finditer(r"`(\.\./[^`\s]+)`", text):  # a path that leaves the doc's folder
        out.append((lineno(m.start()), _relative(doc, m.group(1))))
    return out


def _relative(doc: Path, target: str) -> str:
    path = (doc.parent / target).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else f"{target} (outside the repository)"


def path_exists(path: str) -> bool:
    if path in EXTERNAL:
        return True
    pattern = "/".join("*" if re.search(r"[A-Z]{3,}|\{", part) and not (ROOT / part).exists() else part
                       for part in path.rstrip("/").split("/"))
    return any(ROOT.glob(pattern)) if "*" in pattern else (ROOT / pattern).exists()


def test_the_docs_show_commands_at_all():
    """The readers above find the README's and the docs' commands (a parser that finds none passes nothing)."""
    found = commands()
    assert len(found) > 50
    shown = {" ".join(c.split()[:2]) for _, c in found}
    assert {"masktok plan", "masktok run", "masktok verify", "masktok train", "masktok score"} <= shown


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_command_and_flag_the_docs_show_exists(doc):
    problems = [f"{where}: {problem}  [{command}]" for where, command in commands()
                if where.startswith(str(doc.relative_to(ROOT)) + ":") for problem in check_command(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_repository_path_the_docs_name_exists(doc):
    missing = [f"{doc.relative_to(ROOT)}:{line}: {path}" for line, path in repository_paths(doc)
               if not path_exists(path)]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("command, problem", [
    ("masktok verify runs/x --committed-only", None),
    ("masktok score sweep pope=answers/pope --plot t.png", None),
    ("masktok score NAME --labels F", None),
    ("masktok score {pope,mme} --answers F", None),
    ("masktok score {pope,mmx} --answers F", "`masktok score` has no subcommand 'mmx'"),
    ("masktok score {pope,mme} --answerz F", "`masktok score {pope,mme}` has no option --answerz"),
    ("masktok verify runs/x --no-such-flag", "`masktok verify` has no option --no-such-flag"),
    ("masktok train --stage 1 --save-evry 5", "`masktok train` has no option --save-evry"),
    ("masktok score swep pope=a", "`masktok score` has no subcommand 'swep'"),
    ("masktok nosuch JOBDIR", "`masktok` has no subcommand 'nosuch'"),
])
def test_the_checker_names_a_stale_flag_or_command(command, problem):
    assert check_command(command) == ([problem] if problem else [])


def test_the_path_reader_finds_paths_and_names_a_missing_one():
    assert path_exists("stages/decode.py") and path_exists("docs/scale.md") and path_exists("trainer/")
    assert path_exists("benchmarks/bench_*.py")
    assert not path_exists("stages/no_such_stage.py") and not path_exists("docs/nowhere.md")
    doc = ROOT / "docs" / "cli.md"
    assert _relative(doc, "jobdir.md") == "docs/jobdir.md" and _relative(doc, "../README.md") == "README.md"
    assert _relative(doc, "../../elsewhere/x.py").endswith("(outside the repository)")


GLOSSARY_TERMS = ("commit", "fingerprint", "sink", "k", "obj-101", "keep_rank", "iou", "legrad", "c7")


def test_the_glossary_defines_each_term_and_the_docs_link_it():
    glossary = (ROOT / "docs" / "glossary.md").read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', glossary))
    assert set(GLOSSARY_TERMS) <= anchors
    assert "background" in glossary.split('id="obj-101"', 1)[1].split("<a id=", 1)[0]
    linked = {m for doc in DOCS for m in re.findall(r"glossary\.md#([\w-]+)", doc.read_text())}
    assert set(GLOSSARY_TERMS) <= linked, set(GLOSSARY_TERMS) - linked
    assert linked <= anchors, linked - anchors  # no link to an anchor the glossary lacks


def _table_defaults(doc: Path) -> list[tuple[str, str, str]]:
    """(command, flag, default cell) of each `| `--flag` | default | ... |` row, by the `## name` section it is in."""
    rows, section = [], None
    for line in doc.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"\| `(--[\w-]+)` \| ([^|]+) \|", line)
        if m and section:
            rows.append((section, m.group(1), m.group(2).strip()))
    return rows


def test_the_defaults_docs_cli_gives_are_clicks():
    """A numeric default, or none/off, in docs/cli.md's option tables is the option's default."""
    ctx = click.Context(main, info_name="masktok")
    checked = 0
    for section, flag, cell in _table_defaults(ROOT / "docs" / "cli.md"):
        command = main.get_command(ctx, section)
        assert command is not None, section
        param = next((p for p in command.params if flag in p.opts), None)
        assert param is not None, f"{section} {flag}"
        if re.fullmatch(r"-?\d[\d.e-]*", cell):
            assert float(cell) == float(param.default), (section, flag, cell, param.default)
        elif cell in ("none", "off"):
            unset = str(param.default).endswith("UNSET")  # click 8.3's default of a flag given none
            assert unset or param.default in (None, False, ()), (section, flag, cell, param.default)
        else:
            continue
        checked += 1
    assert checked >= 10


def test_inspect_help_shows_the_image_id_optional():
    out = click.testing.CliRunner().invoke(main, ["inspect", "--help"]).output
    assert "JOBDIR [IMAGE_ID]" in out
