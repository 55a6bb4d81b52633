"""Benchmark: `masktok plan` on a LLaVA-Instruct-sized corpus (665K records).

The corpus is generated once (benchmarks/make_llava_json.py: ~10% text-only, ~5% duplicate
images, ~640 MB) and cached in bench-out/. The existence check is off (no images exist).
Reports wall time and the peak RSS of the `masktok plan` process. Target: < 60 s, < 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=665_298)
    ap.add_argument("--work", type=Path, default=HERE.parent / "bench-out" / "plan")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = args.work / f"llava_instruct_{args.records}.json"
    if not corpus.exists():
        print(f"generating {corpus} ...", flush=True)
        subprocess.run([sys.executable, HERE / "make_llava_json.py", corpus, "--records", str(args.records)], check=True)
    (args.work / "images").mkdir(exist_ok=True)
    job = args.work / "job"
    shutil.rmtree(job, ignore_errors=True)
    masktok = Path(sys.executable).parent / "masktok"
    cmd = [masktok, "plan", job, "--spec", "llava_instruct", "--source", corpus, "--image-root",
           args.work / "images", "--set", "corpus.check_files=false", "--set", "detect.checkpoint=/x",
           "--set", "segment.checkpoint=/x", "--set", "invert.checkpoint=/x", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"masktok plan failed with status {status}")
    report = json.loads((job / "plan.json").read_text())
    figures = {
        "records": report["records_read"], "corpus_mb": round(corpus.stat().st_size / 2**20),
        "images_planned": report["planned_images"], "wall_s": round(wall, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
    }
    print(f"plan: {figures['records']:,} records ({figures['corpus_mb']} MB) -> {figures['images_planned']:,} images "
          f"in {figures['wall_s']} s, peak RSS {figures['peak_rss_mib']} MiB (targets: < 60 s, < 4096 MiB)")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
