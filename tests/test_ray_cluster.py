"""The suite's `ray start` cluster is stopped by its own process group: a Ray that was
running on the machine before (a real job, another suite) survives it (issue 34 item 6).

It runs beside the Ray group's tests (xdist group "beside-ray", tests/test_demo.py): it
watches and stops only the Rays it starts itself, found by their ports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray_cluster import gcs_servers, head_node, stop_group
from s3_server import free_port

pytestmark = pytest.mark.xdist_group("beside-ray")


def test_stopping_the_test_cluster_leaves_another_ray_of_the_machine_running() -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray = str(Path(sys.executable).parent / "ray")
    # a Ray as a user starts one beside the suite (daemonised head, its own session)
    port = free_port()
    outside = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120, env=env, start_new_session=True)
    assert outside.returncode == 0, outside.stdout + outside.stderr
    theirs = gcs_servers(port)
    try:
        with head_node(free_port(), env=env, num_cpus=1) as address:
            ours = gcs_servers(int(address.split(":")[1]))
            assert len(ours) == 1
        assert not ours[0].is_running(), "the test's cluster outlived its stop"
        assert theirs and all(p.is_running() for p in theirs), "stopping the test's cluster stopped another Ray"
    finally:
        for pgid in {os.getpgid(p.pid) for p in theirs if p.is_running()}:
            stop_group(pgid)


def test_the_ready_line_is_seen_when_it_arrives_in_one_write_with_the_lines_before_it() -> None:
    """CI hung here once: `ray start` wrote '--block' and the ready line in one chunk; a
    select()-then-readline() loop read both into its buffer, returned the first, and never
    woke for the second. A process that prints everything at once and then waits."""
    from ray_cluster import READY, _wait_ready

    script = f"import sys, time; sys.stdout.write('up\\n--block\\n{READY} until a signal\\n'); sys.stdout.flush(); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        _wait_ready(proc, timeout=20)
        assert proc.poll() is None
    finally:
        stop_group(proc.pid)
        proc.wait(timeout=10)
