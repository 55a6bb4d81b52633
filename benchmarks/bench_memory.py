"""Benchmark: what training needs per rank, by accounting and measured.

1. Accounting (trainer/parallel/memory.py): Vicuna-7B (and 13B) with the ViT-L projectors, built on
   the meta device; per-rank GiB of weights, gradients, AdamW state and transient gathers
   for world sizes 1, 2 and 8 under ddp and fsdp, both stages; the activations of one
   sequence of 2048 tokens with and without gradient checkpointing; and the largest
   micro-batch of 2048-token sequences that keeps stage 2 at 7B on 8 GPUs within 70 GB.
2. Measured: `masktok train` stage 2 under torchrun, 2 CPU processes (gloo), a small Llama
   (hidden 512, 16 layers, SwiGLU 1376: ~51M parameters, nearly all in its decoder layers
   as in a 7B), once with ddp and once
   with fsdp: the peak RSS of each rank and the step throughput (samples/s over all ranks,
   from the run's metrics), next to the accounting's prediction of the state per rank.
   Memory runs mmap large blocks (MALLOC_MMAP_THRESHOLD_) so that RSS follows live memory;
   speed runs use the default allocator.

    .venv/bin/python benchmarks/bench_memory.py [--steps 12] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BUDGET_GIB = 70 * 10**9 / 2**30  # the target: 70 GB per 80 GB GPU


def accounting() -> dict:
    from masktok.trainer.parallel.memory import GiB, VICUNA_7B, VICUNA_13B, VIT_L_DIMS, activation_bytes, count, meta_model, table

    out = {}
    for name, config in (("vicuna-7b", VICUNA_7B), ("vicuna-13b", VICUNA_13B)):
        c = count(meta_model(config, VIT_L_DIMS))
        rows = [r.as_dict() for r in table(c)]
        act = activation_bytes(c, 2048) / GiB
        stage2 = next(r for r in rows if (r["stage"], r["strategy"], r["world"]) == (2, "fsdp", 8))
        out[name] = {
            "params": {"llm": c.llm, "projector": c.projector, "decoder_layer": c.layer, "root_unit": c.root},
            "state_per_rank_gib": rows,
            "activations_gib_per_2048_sequence": {"checkpointed": round(act, 2),
                                                  "not_checkpointed": round(activation_bytes(c, 2048, False) / GiB, 2)},
            "stage2_fsdp_8_max_2048_sequences_within_70GB": int((BUDGET_GIB - stage2["total_state_gib"]) // act),
        }
    return out


def measured(steps: int, tmp: Path) -> dict:
    from masktok.tiny.cache import CAPTIONS, write_corpus, write_tiny_cache
    from masktok.trainer.parallel.memory import GiB, count, state_bytes
    from masktok.trainer.runtime import build_model, load_llm
    from masktok.tiny.llm import build_tiny_llm

    job = write_tiny_cache(tmp / "job", n=64, shard_size=16, failed=())
    data = write_corpus(tmp / "data.json", 64)
    llm = build_tiny_llm(tmp / "llm", list(CAPTIONS), hidden=512, layers=16, heads=8, intermediate=1376)
    c = count(build_model(load_llm(llm), {"C": 24, "D": 16}))
    out = {"params": c.llm + c.projector, "steps": steps, "batch_per_rank": 2, "world": 2}

    def train(strategy: str, run: Path, env: dict[str, str]) -> Path:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "masktok.trainer.launch", "train", "--stage", "2", "--cache", str(job), "--data", str(data),
               "--llm", str(llm), "--out", str(run), "--max-steps", str(steps), "--batch-size", "2",
               "--tokens", "cls,patch:9,obj:5", "--device", "cpu", "--strategy", strategy, "-q"]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=900)
        return run

    for strategy in ("ddp", "fsdp"):
        # memory: glibc keeps freed heap blocks, so without mmap-ed large blocks a CPU run's RSS
        # tracks the allocator's high-water mark (fsdp gathers and frees every step), not live tensors
        mem = json.loads((train(strategy, tmp / f"{strategy}-mem", {"MALLOC_MMAP_THRESHOLD_": "65536"})
                          / "summary.json").read_text())
        # speed: the allocator as users run it
        metrics = (train(strategy, tmp / f"{strategy}-speed", {}) / "metrics.jsonl").read_text().splitlines()
        predicted = sum(state_bytes(c, 2, strategy, 2, bf16=False).values()) / GiB
        out[strategy] = {"peak_rss_gib_per_rank": [round(r / 1024, 3) for r in mem["peak_memory"]["rss_mb"]],
                         "samples_per_s": round(json.loads(metrics[-1])["samples_per_s"], 2),
                         "predicted_state_gib_per_rank": round(predicted, 3)}
        print(strategy, out[strategy], flush=True)
    out["rss_saved_by_fsdp_gib"] = round(max(out["ddp"]["peak_rss_gib_per_rank"])
                                         - max(out["fsdp"]["peak_rss_gib_per_rank"]), 3)
    out["predicted_saving_gib"] = round(out["ddp"]["predicted_state_gib_per_rank"]
                                        - out["fsdp"]["predicted_state_gib_per_rank"], 3)
    out["fsdp_over_ddp_throughput"] = round(out["fsdp"]["samples_per_s"] / out["ddp"]["samples_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = {"accounting": accounting()}
    for name, a in result["accounting"].items():
        print(f"== {name}: {a['params']}")
        print("stage strategy world  weights  grads  optim  transient  total (GiB per rank)")
        for r in a["state_per_rank_gib"]:
            print(f"{r['stage']:5} {r['strategy']:8} {r['world']:5} {r['weights_gib']:8} {r['grads_gib']:6} "
                  f"{r['optimizer_gib']:6} {r['transient_gib']:10} {r['total_state_gib']:6}")
        print("activations per 2048-token sequence:", a["activations_gib_per_2048_sequence"],
              "| stage 2, fsdp, 8 GPUs: sequences of 2048 within 70 GB:",
              a["stage2_fsdp_8_max_2048_sequences_within_70GB"], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        result["measured_2_cpu_processes"] = measured(args.steps, Path(tmp))
    print(json.dumps(result["measured_2_cpu_processes"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
