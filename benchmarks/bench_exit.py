"""Benchmark (stress): does every command that reads a job exit 0, every time?

Each command that reads a finished job (status, status --json, verify, report, inspect, run on
a committed job, answer on a finished cache) runs many times as its own ``masktok``
subprocess, ``--parallel`` at a time, while ``--load`` busy processes keep the CPUs full (an
exit-time race needs a thread to be scheduled late). Every exit status and signal is counted;
the stderr tail of each failed run is kept. A run that printed its whole output and then died
of SIGABRT is the failure of issue 37 (a native thread destroyed at interpreter exit).

Setup (once, in a temporary folder): the tests' small job (9 images, 3 shards) planned and
run on a local Ray with the tiny presets, a tiny Llama trained 2 steps on it, and a question
file over its images.

    .venv/bin/python benchmarks/bench_exit.py [--runs 250] [--heavy-runs 30] [--parallel 4]
        [--load 2] [--commands status,verify,...] [--keep DIR] [--out PATH]

``--runs`` is the count of each light command (status, status_json, verify, run_finished);
``--heavy-runs`` of each command that imports torch or draws (report, inspect, answer).
The default, 1,090 runs, takes about 10 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from small_job import JOB_IMAGES, MASKTOK, plan_job, run_masktok, write_job_corpus  # noqa: E402


def build_fixture(root: Path) -> dict[str, Path]:
    """The finished small job, a trained tiny checkpoint over it and a question file."""
    from masktok.trainer.runtime import TrainConfig
    from masktok.tiny.llm import build_tiny_llm
    from masktok.trainer.train import train

    job = root / "job"
    if not (job / "commits").is_dir() or len(list((job / "commits").iterdir())) < 3:
        corpus = write_job_corpus(root / "corpus")
        plan_job(job, corpus)
        run_masktok("run", job, "-q")
    data = root / "data.json"
    turns = [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "a scene"}]
    data.write_text(json.dumps([{"id": str(i), "image": im, "conversations": turns} for i, im in enumerate(JOB_IMAGES)]))
    run = root / "train"
    if not (run / "latest").exists():
        llm = build_tiny_llm(root / "llm", ["What is in the picture?", "a scene", "yes", "no"], hidden=32)
        train(TrainConfig(stage=2, cache=job, data=data, llm=llm, out=run, tokens="cls,patch:9,obj:5",
                          max_steps=2, batch_size=4, lr=1e-3, warmup_ratio=0.0, device="cpu"))
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": im, "text": "Is there a thing?"}) + "\n"
                                 for i, im in enumerate(JOB_IMAGES)))
    return {"job": job, "run": run, "questions": questions, "root": root}


def commands(fx: dict[str, Path]) -> dict[str, list[str]]:
    """Every command that reads a finished job, by name; each writes only under fx['root']/out."""
    job, out = str(fx["job"]), fx["root"] / "out"
    return {
        "status": ["status", job],
        "status_json": ["status", job, "--json"],
        "verify": ["verify", job],
        "report": ["report", job, "-o", str(out / "report-{n}.html"), "--images", "1"],
        "inspect": ["inspect", job, "scenes/000.png", "-o", str(out / "inspect-{n}.png")],
        "run_finished": ["run", job, "-q"],
        "answer": ["answer", "--checkpoint", str(fx["run"]), "--cache", job, "--questions", str(fx["questions"]),
                   "--out", str(out / "answers-{n}"), "--max-new-tokens", "2", "-q"],
    }


def _burn(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


#: Commands that must not overlap with themselves: two `masktok run` on one job are refused
#: by its run lock (exit 1, "already being run"), as designed.
ONE_AT_A_TIME = {"run_finished": threading.Lock()}


def _one(name: str, args: list[str], n: int) -> dict:
    with ONE_AT_A_TIME.get(name, contextlib.nullcontext()):
        start = time.perf_counter()
        proc = subprocess.run([MASKTOK, *(a.replace("{n}", str(n)) for a in args)], capture_output=True, text=True,
                              timeout=600)
    return {"command": name, "returncode": proc.returncode, "seconds": time.perf_counter() - start,
            "stdout_bytes": len(proc.stdout), "stderr_tail": proc.stderr[-400:] if proc.returncode else ""}


def describe(returncode: int) -> str:
    """'exit 0', 'exit 1', or the signal's name for a negative status (subprocess's -N)."""
    if returncode < 0:
        return signal.Signals(-returncode).name
    return f"exit {returncode}"


HEAVY = ("report", "inspect", "answer")


def stress(fx: dict[str, Path], names: list[str], runs: int, heavy_runs: int, parallel: int, load: int) -> dict:
    cmds = commands(fx)
    (fx["root"] / "out").mkdir(exist_ok=True)
    count = {name: heavy_runs if name in HEAVY else runs for name in names}
    # interleaved, so that different commands overlap in time
    todo = [(name, cmds[name], n) for n in range(max(count.values())) for name in names if n < count[name]]
    burners = [multiprocessing.Process(target=_burn, args=(time.time() + 3600,), daemon=True) for _ in range(load)]
    for b in burners:
        b.start()
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(parallel) as pool:
            results = []
            for result in pool.map(lambda t: _one(*t), todo):
                results.append(result)
                if len(results) % 100 == 0 or len(results) == len(todo):
                    bad = sum(r["returncode"] != 0 for r in results)
                    print(f"  {len(results)}/{len(todo)} runs, {bad} non-zero, {time.perf_counter() - start:.0f} s",
                          flush=True)
    finally:
        for b in burners:
            b.kill()
    wall = time.perf_counter() - start
    per_command = {}
    for name in names:
        mine = [r for r in results if r["command"] == name]
        per_command[name] = {"runs": len(mine), "outcomes": dict(Counter(describe(r["returncode"]) for r in mine)),
                             "mean_seconds": round(sum(r["seconds"] for r in mine) / len(mine), 2)}
    failures = [r for r in results if r["returncode"] != 0]
    return {
        "runs": len(results), "parallel": parallel, "load_processes": load, "wall_s": round(wall, 1),
        "nonzero": len(failures), "aborts": sum(r["returncode"] in (-signal.SIGABRT, 134) for r in results),
        "per_command": per_command, "failures": failures[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=250, help="Runs of each light command.")
    parser.add_argument("--heavy-runs", type=int, default=30, help="Runs of report, inspect and answer.")
    parser.add_argument("--parallel", type=int, default=4, help="Commands running at once.")
    parser.add_argument("--load", type=int, default=2, help="Busy processes beside them.")
    parser.add_argument("--commands", default=",".join(commands({"job": Path(), "run": Path(), "questions": Path(),
                                                                   "root": Path()})))
    parser.add_argument("--keep", type=Path, help="Build (or reuse) the fixture here instead of a temporary folder.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    names = args.commands.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        fx = build_fixture(root)
        result = stress(fx, names, args.runs, args.heavy_runs, args.parallel, args.load)
    line = (f"{result['aborts']} aborts, {result['nonzero']} non-zero exits in {result['runs']:,} runs "
            f"({args.parallel} at a time, {args.load} busy processes beside them, {result['wall_s']} s)")
    print(line)
    for name, c in result["per_command"].items():
        print(f"  {name:13s} {c['runs']:5d} runs  {c['outcomes']}  {c['mean_seconds']} s each")
    for f in result["failures"][:5]:
        print(f"  {f['command']} {describe(f['returncode'])}: {f['stderr_tail'].strip()[-200:]}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": line, **result}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    main()
