"""A `ray start --head` cluster that a test starts and stops itself, touching no other Ray
of the machine (never `ray stop`, which stops every Ray of the host: a real job beside the
suite, or another suite's cluster).

`ray start --block` keeps the head in the foreground; it runs in a session of its own, so
every process of the cluster (GCS, raylet, workers, Ray's reaper) is in its process group
and one `killpg` ends exactly them."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

READY = "will now block forever"  # what `ray start --block` prints once the node is up


@contextmanager
def head_node(port: int, env: dict[str, str], num_cpus: int = 4, timeout: float = 120) -> Iterator[str]:
    """Start a one-node cluster on 127.0.0.1:``port``; yield its address; stop it (and only it)."""
    ray = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        _wait_ready(proc, timeout)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(proc.pid)
        proc.wait(timeout=60)


def _wait_ready(proc: subprocess.Popen, timeout: float) -> None:
    output, deadline = [], time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=1):
                continue
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}:\n{''.join(output)[-3000:]}")
            output.append(line)
            if READY in line:
                # keep draining its output, so the head never blocks on a full pipe
                proc.stdout = _drain(proc.stdout)
                return
    stop_group(proc.pid)
    raise RuntimeError(f"ray start did not come up in {timeout} s:\n{''.join(output)[-3000:]}")


def _drain(stream):
    import threading

    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
    return stream


def stop_group(pgid: int, timeout: float = 60) -> None:
    """SIGTERM every process of the group (Ray's own graceful stop signal), SIGKILL what is
    left after ``timeout``, and wait until none is alive."""
    members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        _, members = psutil.wait_procs(members, timeout=timeout if sig == signal.SIGTERM else 10)
        if not members:
            return


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
