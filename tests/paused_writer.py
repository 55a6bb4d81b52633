"""Run by tests/test_stale_writer.py: a shard writer of an old run, paused mid-shard.

    python tests/paused_writer.py JOBDIR RUN

A ShardWriter of run RUN (the id in the job's lock, pipeline/lock.py) writes shard 0 of
JOBDIR from :func:`old_items`; after its Zarr rows and before its tar it stops itself
(SIGSTOP), as a process paused by the OS, a debugger or a frozen VM would be. Once resumed
(SIGCONT) it finishes and prints the writer's result as one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from masktok.stages.write import TokenDims

DIMS = TokenDims(K=6, D=16, C=24)
ROWS, SIZE = 8, 4  # 2 shards; shard 0 is the one handed over
FINGERPRINT, MANIFEST = "sha256:stale", "sha256:manifest"


def old_items() -> list[dict]:
    """What the old run computed for shard 0: image 1 failed there (it ran out of memory, or
    another GPU rounded otherwise: a result that differs from the new run's)."""
    from masktok.tiny.cache import tiny_items

    return tiny_items(SIZE, DIMS, failed=(1,), seed=1)


def new_items() -> list[dict]:
    """What the run that took the job over computes for shard 0."""
    from masktok.tiny.cache import tiny_items

    return tiny_items(SIZE, DIMS, seed=0)


def main(root: str, run: str) -> None:
    import masktok.pipeline.commit as commit_module
    from masktok.pipeline.writers import ShardWriter

    encode = commit_module.encode_wds_shard

    def encode_then_pause(*args, **kwargs):
        data = encode(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGSTOP)  # paused here: the Zarr rows written, the tar not yet
        return data

    commit_module.encode_wds_shard = encode_then_pause
    writer = ShardWriter(root, ROWS, SIZE, DIMS.as_dict(), FINGERPRINT, MANIFEST, True, False, run)
    result = writer.commit(0, {item["index"]: item for item in old_items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
