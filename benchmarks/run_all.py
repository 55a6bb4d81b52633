"""`make bench`: run the benchmarks one after another (one heavy job at a time on a small
machine) and collect their figures in bench-out/results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = {
    "plan": ["bench_plan.py"],
    "stages": ["bench_stages.py"],
    "invert_issue_config": ["bench_invert.py"],  # each shape in its own process: peak RSS is per process
    "invert_vit_l_14_336": ["bench_invert.py", "--shape", "vit-l-14-336", "--quick-gelu"],
    "run": ["bench_run.py"],
    "trainer": ["bench_trainer.py"],
    "reader": ["bench_reader.py"],
    "sink": ["bench_sink.py"],
    "memory": ["bench_memory.py"],
    "eval": ["bench_eval.py"],
    "image_memory": ["bench_image_memory.py"],
    "transport": ["bench_transport.py"],
    "gpu": ["bench_gpu.py"],
    "exit": ["bench_exit.py"],
    "answer": ["bench_answer.py"],
    "cluster": ["bench_cluster.py"],  # declared GPUs: pools, the driver's CPU per image, the Ray tax with auto pools
}


def main() -> None:
    out = HERE.parent / "bench-out"
    out.mkdir(exist_ok=True)
    only = set(sys.argv[1:]) or set(BENCHMARKS)
    results, failed = {}, []
    for name, (script, *args) in BENCHMARKS.items():
        if name not in only:
            continue
        print(f"== {name}", flush=True)
        target = out / f"{name}.json"
        if subprocess.run([sys.executable, HERE / script, *args, "--out", target]).returncode != 0:
            failed.append(name)
            continue
        results[name] = json.loads(target.read_text())
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"figures: {out / 'results.json'}")
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
