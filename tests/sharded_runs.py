"""Run by tests/test_trainer_sharded.py under torchrun: several trainings in one process
group (starting Python, torch and transformers once per rank instead of once per run).

    torchrun --standalone --nproc_per_node 2 tests/sharded_runs.py RUNS.json

RUNS.json is a list of steps: {"train": {TrainConfig fields}} runs one training;
{"copy": [SRC_CHECKPOINT, DST_RUN]} puts a copy of a checkpoint in a new run folder
(rank 0) for a later step to resume. A training step with "frozen_report": PATH also
writes, per rank, whether the LM's weights after it equal those it was built with, bit for
bit, whether the projector's changed, and how many LM parameters the optimizer holds
(PATH.<rank>.json), for the stage-1 freeze under fsdp.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from masktok.trainer.runtime import TrainConfig
from masktok.trainer.train import train


def frozen_report(cfg: TrainConfig, path: Path) -> None:
    from frozen_lm import freeze_report, recording_training

    with recording_training() as seen:
        train(cfg)
    path.with_name(f"{path.name}.{dist.get_rank()}.json").write_text(json.dumps(freeze_report(seen)))


def main() -> None:
    steps = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    for step in steps:
        if "copy" in step:
            src, dst = map(Path, step["copy"])
            if dist.get_rank() == 0:
                shutil.copytree(src, dst / src.name)
            dist.barrier()
        else:
            cfg = {k: Path(v) if k in ("cache", "data", "llm", "out") else v for k, v in step["train"].items()}
            if "frozen_report" in step:
                frozen_report(TrainConfig(**cfg), Path(step["frozen_report"]))
            else:
                train(TrainConfig(**cfg))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
