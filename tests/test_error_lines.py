"""Every documented error of plan, run, train, answer and score is one line on stderr and exit
status 1, never a traceback (docs/cli.md, "Errors"): the command ends by SystemExit(1), not
by the exception escaping, and its output is that one line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from masktok.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_trainer):
    root = tmp_path_factory.mktemp("errors")
    (root / "imgs").mkdir()
    (root / "imgs" / "a.jpg").write_bytes(b"x")
    (root / "empty").mkdir()
    (root / "bad.toml").write_text("not = [toml")
    (root / "bad.jsonl").write_text("not json\n")
    (root / "answers.jsonl").write_text(json.dumps({"question_id": 1, "text": "yes"}) + "\n")
    (root / "labels.json").write_text("[]")
    (root / "pope_labels.json").write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a cat?",
                                                       "label": "yes"}) + "\n")
    (root / "text.json").write_text("{}")
    planned = CliRunner().invoke(main, ["plan", str(root / "job"), "--spec", "demo", "--corpus", "folder",
                                        "--source", str(root / "imgs"), "-q"])
    assert planned.exit_code == 0, planned.output
    return {**{k: str(v) for k, v in tiny_trainer.items()}, "root": root}  # root: this module's files


def train_args(f: dict, **changed: str) -> list[str]:
    args = {"--stage": "2", "--cache": f["job"], "--data": f["data"], "--llm": f["llm"], "--out": str(f["root"] / "o"),
            "--max-steps": "1", **changed}
    return [x for kv in args.items() for x in kv]


CASES = {
    "plan without a source": (lambda f: ["plan", f"{f['root']}/j", "--spec", "demo", "--corpus", "llava-instruct"],
                              "no corpus source"),
    "plan of a missing source": (lambda f: ["plan", f"{f['root']}/j", "--spec", "demo", "--corpus", "llava-instruct",
                                            "--source", f"{f['root']}/nope.json"], "corpus source not found"),
    "plan with an unknown key": (lambda f: ["plan", f"{f['root']}/j", "--spec", "demo", "--corpus", "folder", "--source",
                                            f"{f['root']}/imgs", "--set", "detect.nope=1"], "unknown key 'detect.nope'"),
    "plan with a spec that is no TOML": (lambda f: ["plan", f"{f['root']}/j", "--spec", f"{f['root']}/bad.toml",
                                                    "--corpus", "folder", "--source", f"{f['root']}/imgs"],
                                         "not valid TOML"),
    "plan of a folder with an image root": (lambda f: ["plan", f"{f['root']}/j", "--spec", "demo", "--corpus", "folder",
                                                       "--source", f"{f['root']}/imgs", "--image-root", f["root"]],
                                            "a folder corpus is its own image root"),
    "plan over a different job": (lambda f: ["plan", f"{f['root']}/job", "--spec", "demo", "--corpus", "folder",
                                             "--source", f"{f['root']}/imgs", "--set", "detect.top_k=3"],
                                  "already holds a different job"),
    "run of an unplanned folder": (lambda f: ["run", f"{f['root']}/empty"], "holds no planned job"),
    "run with a changed result setting": (lambda f: ["run", f"{f['root']}/job", "--set", "detect.top_k=3"],
                                          "detect.top_k"),
    "train without a cache": (lambda f: ["train", *train_args(f, **{"--cache": f"{f['root']}/empty"})],
                              "no token cache"),
    "train with a bad token spec": (lambda f: ["train", *train_args(f, **{"--tokens": "cls,patch:7:pool"})],
                                    "token spec"),
    "train on a missing data file": (lambda f: ["train", *train_args(f, **{"--data": f"{f['root']}/nope.json"})],
                                     "nope.json"),
    "train with no LM folder": (lambda f: ["train", *train_args(f, **{"--llm": f"{f['root']}/empty"})], "empty"),
    "answer without a checkpoint": (lambda f: ["answer", "--checkpoint", f"{f['root']}/empty", "--cache", f["job"],
                                               "--questions", f"{f['root']}/answers.jsonl", "--out", f"{f['root']}/a"],
                                    "no checkpoint"),
    "score of labels that are no label file": (lambda f: ["score", "pope", "--answers", f"{f['root']}/answers.jsonl",
                                                          "--labels", f"{f['root']}/labels.json"], "question_id"),
    "score of answers that are no JSON": (lambda f: ["score", "pope", "--answers", f"{f['root']}/bad.jsonl",
                                                     "--labels", f"{f['root']}/pope_labels.json"], "not JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_documented_error_is_one_line_and_exit_status_1(files, case):
    argv, fragment = CASES[case]
    result = CliRunner().invoke(main, argv(files))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert "Traceback" not in result.output and lines and lines[-1].startswith("Error: "), result.output
    assert fragment in lines[-1], lines[-1]
    assert not [line for line in lines if line.startswith("Error: ")][1:], "one error line"


def test_run_checks_that_the_cluster_has_the_gpus_the_spec_asks_for(files, monkeypatch):
    """`run` refuses, before any work, a spec asking for more GPUs than the cluster has (Ray
    Data would wait for them forever): here a cluster with CPUs only, as Ray reports it."""
    import ray

    import masktok.pipeline.run as run_module

    from masktok.pipeline.pools import Node

    monkeypatch.setattr(run_module, "_start_ray", lambda address, cpus: False)  # joined, not started
    # the cluster as Ray reports it, without a Ray (any other call to Ray would start one)
    monkeypatch.setattr(run_module, "cluster_nodes", lambda: [Node("head", 4.0, 0.0, 16.0)])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Context", (), {"get_node_id": lambda self: "head"})())
    monkeypatch.setenv("XDG_CACHE_HOME", str(files["root"] / "cache"))
    result = CliRunner().invoke(main, ["run", f"{files['root']}/job", "--set", "segment.resources.gpus=0.5", "-q"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "asks for 0.5 GPUs (segment 0.5) and the Ray cluster has 0" in result.output, result.output
    assert not ray.is_initialized(), "the check ran before any Ray was started"
