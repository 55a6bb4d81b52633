"""A command that succeeded exits 0: it leaves no native worker thread behind for the
interpreter's exit to trip on (issue 37).

The abort these tests guard against is rare and timing-dependent (`terminate called without
an active exception`, SIGABRT, after the command's whole output): a stress run is a benchmark
(`make bench BENCH=exit`), not a test. What is deterministic is its precondition: Arrow's
thread pools, started by a threaded Parquet read through a Python file object, still alive at
exit. So these tests count the process's OS threads around the reads, in a fresh interpreter
(Linux's /proc/self/task), with every library already imported so that only threads the
read itself starts are counted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from small_job import plan_job

COUNT_THREADS = """
import os, sys, threading
import numpy, pyarrow, pyarrow.parquet, zarr  # their import-time threads are not the command's
from masktok.cli import main
def native():
    return len(os.listdir('/proc/self/task')) - threading.active_count()
before = native()
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print('native threads started:', native() - before, file=sys.stderr)
"""


def _threads_started(code: str, *args: object) -> int:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stderr.rsplit("native threads started:", 1)[1].split()[0])


@pytest.fixture(scope="module")
def planned(tmp_path_factory, job_corpus) -> Path:
    return plan_job(tmp_path_factory.mktemp("exit") / "job", job_corpus).root


def test_reading_the_manifest_starts_no_native_thread(planned) -> None:
    code = """
import os, sys
import numpy, pyarrow, pyarrow.parquet
from masktok.schemas.manifest import read_manifest
from pathlib import Path
before = len(os.listdir('/proc/self/task'))
for columns in (None, ['shard'], ['index', 'image_id']):
    read_manifest(Path(sys.argv[1]) / 'manifest.parquet', columns=columns)
print('native threads started:', len(os.listdir('/proc/self/task')) - before, file=sys.stderr)
"""
    assert _threads_started(code, planned) == 0


@pytest.mark.parametrize("command", [["status", "--json"], ["status"], ["verify", "--committed-only"]],
                         ids=lambda c: " ".join(c))
def test_commands_that_read_a_job_leave_no_native_thread_at_exit(planned, command) -> None:
    assert _threads_started(COUNT_THREADS, command[0], planned, *command[1:]) == 0
