"""Benchmark: `masktok run` on the demo stack against the same stages in a plain loop.

A job of N generated scenes (default 200) with the tiny models, planned with the demo
spec (detect.top_k 20, as the demo; the paper keeps 100):

- images/s through `masktok run` (local Ray, started and stopped by the command), and
  of the same stage objects called in a plain in-process loop with the same writer;
  their ratio is Ray's tax (target >= 0.7);
- bytes per image on disk for tokens.zarr and the WebDataset shards, against the raw
  bytes of the record arrays;
- the time of a rerun of the fully committed job (target: < 5 s beyond Ray start; a
  committed job does not start Ray at all).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def in_process(jd, batch_size: int) -> float:
    """Stages called directly, batch by batch, shards written and committed as in a run."""
    from masktok.pipeline.commit import write_shard
    from masktok.stages.checkpoints import resolve_checkpoints, token_dims
    from masktok.stages.chain import call_stage
    from masktok.stages.topology import build_group, topology
    from masktok.pipeline.run import load_job
    from masktok.schemas.manifest import read_manifest
    from masktok.stages.write import open_store

    spec, meta = load_job(jd)
    rows = read_manifest(jd.manifest).to_pylist()
    start = time.perf_counter()
    checkpoints = resolve_checkpoints(spec, jd.models)
    stages = [named for group in topology(spec)
              for named in build_group(spec, group, spec.corpus.image_root, checkpoints)]
    dims, size = token_dims(spec), spec.shards.size
    group = open_store(jd.tokens, len(rows), size, dims)
    for s0 in range(0, len(rows), size):
        shard_items = []
        for b0 in range(s0, min(s0 + size, len(rows)), batch_size):
            items = [{k: r[k] for k in ("index", "image_id", "path")} for r in rows[b0:min(b0 + batch_size, s0 + size)]]
            for name, stage in stages:
                items = call_stage(name, stage, items)
            shard_items += items
        write_shard(jd, group, s0 // size, s0, s0 + len(shard_items), shard_items, dims, meta["fingerprint"],
                    manifest_digest=meta["manifest_digest"])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--invert-actors", type=int, default=2)
    ap.add_argument("--auto", action="store_true",
                    help='every stage group\'s actors = "auto" (sized from the local Ray) instead of --invert-actors')
    ap.add_argument("--work", type=Path, default=HERE.parent / "bench-out" / "run")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import shutil

    from masktok.tiny.corpus import write_demo_corpus
    from masktok.schemas.jobdir import JobDir
    from masktok.schemas.record import ARRAYS

    shutil.rmtree(args.work, ignore_errors=True)
    source = write_demo_corpus(args.work / "corpus", scenes=args.images - 9)  # + 9 quirk files
    masktok = str(Path(sys.executable).parent / "masktok")
    jobs = {}
    for name in ("ray", "loop"):
        jobs[name] = JobDir(args.work / name)
        subprocess.run([masktok, "plan", jobs[name].root, "--spec", "demo", "--corpus", "llava-instruct",
                        "--source", source, "--image-root", source.parent / "images", "--shard-size", "25",
                        "--set", f"detect.top_k={args.top_k}", "--set", f"invert.iterations={args.iterations}",
                        "--set", "write.rle_masks=false", "-q"],
                       check=True)
    n = args.images
    t = time.perf_counter()
    # Two invert actors: Ray gives an actor of <= 1 CPU one torch thread, so one actor
    # would leave the second core idle; the loop's torch uses both cores.
    sizes = ([arg for group in ("decode", "detect", "segment", "filter", "invert")
              for arg in ("--set", f'{group}.resources.actors="auto"')] if args.auto
             else ["--set", f"invert.resources.actors={args.invert_actors}"])
    run = subprocess.run([masktok, "run", jobs["ray"].root, "-q", *sizes], check=True, capture_output=True, text=True)
    pools = re.search(r"^cluster: .*$", run.stdout, re.M)
    ray_s = time.perf_counter() - t
    inside_s = float(re.search(r"in ([0-9.]+) s,", run.stdout).group(1))  # from graph start to last commit
    loop_s = in_process(jobs["loop"], batch_size=4)
    t = time.perf_counter()
    subprocess.run([masktok, "run", jobs["ray"].root, "-q"], check=True, capture_output=True)
    rerun_s = time.perf_counter() - t

    import zarr

    z = zarr.open_group(jobs["ray"].tokens, mode="r")
    ok = int((z["status"][:] == 1).sum())
    raw = sum(z[a.name].nbytes for a in ARRAYS if a.name != "image_id") / n
    figures = {
        "images": n, "images_ok": ok, "top_k": args.top_k, "iterations": args.iterations,
        "ray_images_per_s": round(n / ray_s, 3), "loop_images_per_s": round(n / loop_s, 3),
        "ray_over_loop": round(loop_s / ray_s, 3), "ray_wall_s": round(ray_s, 1), "loop_wall_s": round(loop_s, 1),
        "ray_after_start_s": inside_s, "ray_over_loop_after_start": round(loop_s / inside_s, 3),
        "invert_actors": "auto" if args.auto else args.invert_actors,
        "pools_line": pools.group(0) if pools else None,
        "rerun_committed_s": round(rerun_s, 2),
        "zarr_bytes_per_image": round(du(jobs["ray"].tokens) / n), "wds_bytes_per_image": round(du(jobs["ray"].wds) / n),
        "raw_array_bytes_per_image": round(raw),
    }
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
