"""A local S3 server for tests and benchmarks: moto in server mode (as s3fs's own tests
run it), a process of its own on 127.0.0.1, with this process's AWS variables pointing at
it, so that every client started from here (s3fs in-process, `masktok` subprocesses, their
Ray workers) finds it the way a user's clients find their store. In a thread of the test
process it would share one GIL with the code that talks to it (an S3 run took 3x as long)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """Start the server (its output to ``log``), point the AWS variables at it; yields its
    endpoint URL. Stops it and restores the variables on exit."""
    port = free_port()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the local S3 server did not start (see {log})") from None
                time.sleep(0.1)
        variables = {**ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint}
        saved = {k: os.environ.get(k) for k in variables}
        os.environ.update(variables)
        try:
            yield endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        server.terminate()
        server.wait(timeout=30)


def new_bucket(name: str) -> str:
    """A new, empty bucket of the running server named after ``name``: ``s3://...``."""
    import re

    import s3fs

    name = re.sub(r"[^a-z0-9-]+", "-", name.lower())[:50].strip("-") + f"-{os.getpid()}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
