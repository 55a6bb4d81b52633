"""`make bench`: run every benchmarks/bench_*.py in turn (one heavy job at a time) and
collect their figures in bench-out/results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    out = HERE.parent / "bench-out"
    out.mkdir(exist_ok=True)
    results, failed = {}, []
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        print(f"== {name}", flush=True)
        target = out / f"{name}.json"
        if subprocess.run([sys.executable, script, "--out", target]).returncode != 0:
            failed.append(name)
            continue
        results[name] = json.loads(target.read_text()) if target.exists() else None
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"figures: {out / 'results.json'}")
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
