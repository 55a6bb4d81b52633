"""A `ray start --head` cluster that a test starts and stops itself, touching no other Ray
of the machine (never `ray stop`, which stops every Ray of the host: a real job beside the
suite, or another suite's cluster).

`ray start --block` keeps the head in the foreground; it runs in a session of its own, so
every process of the cluster (GCS, raylet, workers, Ray's reaper) is in its process group
and one `killpg` ends exactly them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

READY = "will now block forever"  # what `ray start --block` prints once the node is up


@contextmanager
def head_node(port: int, env: dict[str, str], num_cpus: int = 4, timeout: float = 120,
              num_gpus: int = 0) -> Iterator[str]:
    """Start a one-node cluster on 127.0.0.1:``port`` (``num_gpus`` declared: no GPU needed);
    yield its address; stop it (and only it)."""
    with _node(["--head", f"--port={port}", "--include-dashboard=false"], env, num_cpus, num_gpus, timeout):
        yield f"127.0.0.1:{port}"


@contextmanager
def worker_node(address: str, env: dict[str, str], num_cpus: int = 1, num_gpus: int = 0,
                timeout: float = 120, tries: int = 1) -> Iterator[int]:
    """Join a second node to the cluster at ``address`` (``ray start --address``, its own
    declared resources); yield its process group (its raylet and workers: kill them to lose
    the node); stop it (and only it) at the end if it is still there. ``tries``: how many
    starts before giving up (on 2 busy cores a joining node's dashboard agent can miss the
    raylet's start deadline, ray-project/ray#65983: the raylet exits and the node never joins)."""
    with _node([f"--address={address}"], env, num_cpus, num_gpus, timeout, tries) as pgid:
        yield pgid


@contextmanager
def _node(args: list[str], env: dict[str, str], num_cpus: int, num_gpus: int, timeout: float,
          tries: int = 1) -> Iterator[int]:
    ray = str(Path(sys.executable).parent / "ray")
    for attempt in range(1, tries + 1):
        proc = subprocess.Popen([ray, "start", *args, "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                                 f"--num-gpus={num_gpus}", "--disable-usage-stats"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            _wait_ready(proc, timeout)  # stops the node when it does not come up
            break
        except RuntimeError:
            proc.wait(timeout=60)
            if attempt == tries:
                raise
    try:
        yield proc.pid
    finally:
        stop_group(proc.pid)
        proc.wait(timeout=60)


def _wait_ready(proc: subprocess.Popen, timeout: float) -> None:
    """Wait for READY in the head's output. One thread reads every line to the end (so the head
    never blocks on a full pipe). No select() on the pipe: a buffered readline() may take
    several lines at once, and select() then never wakes for the READY line already read
    into the buffer (what hung CI for 120 s after the '--block' line)."""
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            if READY in line:
                ready.set()
        ready.set()  # end of output: the head exited

    threading.Thread(target=read, daemon=True).start()
    if ready.wait(timeout) and proc.poll() is None and any(READY in line for line in output):
        return
    what = f"exited {proc.returncode}" if proc.poll() is not None else f"did not come up in {timeout} s"
    stop_group(proc.pid)  # after the verdict: a stopped node exits too
    raise RuntimeError(f"ray start {what}:\n{''.join(output)[-3000:]}")


def stop_group(pgid: int, timeout: float = 3) -> None:
    """SIGTERM every process of the group (Ray's own graceful stop signal), SIGKILL what is
    left after ``timeout``, and wait until none is alive. The grace is short: a test cluster
    keeps nothing worth a graceful stop, and Ray's GCS and raylet take ~30 s to stop on SIGTERM
    (half a minute of the suite for each cluster)."""
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


def node_processes(pgid: int) -> list[psutil.Process]:
    """A `ray start` node's processes: its process group (the raylet, its agents) and their
    children (each Ray worker leads a process group of its own, under the raylet)."""
    members = [p for p in psutil.process_iter() if _pgid(p.pid) == pgid]
    children = [c for p in members for c in _children(p)]
    return members + [c for c in children if c not in members]


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def process_name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.NoSuchProcess:
        return ""


def stage_actors(address: str) -> dict[int, str]:
    """The stage actors (Ray Data workers of StageGroup) of the cluster at ``address``, pid ->
    process name (``ray::MapWorker(MapBatches(StageGroup[invert]))...``)."""
    return ray_workers(address, "StageGroup")


def gcs_servers(port: int) -> list[psutil.Process]:
    """The GCS server of the Ray whose head listens on ``port``."""
    return [p for p in psutil.process_iter(["name", "cmdline"]) if "gcs_server" in (p.info["name"] or "")
            and any(arg.startswith("--gcs_server_port=") and arg.endswith(f"={port}") for arg in p.info["cmdline"] or [])]


def ray_workers(address: str, name_part: str) -> dict[int, str]:
    """The Ray workers of the cluster at ``address`` whose process name holds ``name_part``,
    pid -> name: children of its raylets, which name the GCS address on their command line
    (other Rays of the machine, such as the demo's beside the Ray group, are not matched)."""
    port = address.rsplit(":", 1)[1]
    raylets = {p.pid for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "raylet"
               and any(arg.startswith("--gcs-address=") and arg.endswith(f":{port}") for arg in p.info["cmdline"] or [])}
    return {p.pid: p.info["name"] for p in psutil.process_iter(["name", "ppid"]) if p.info["ppid"] in raylets
            and name_part in (p.info["name"] or "")}
