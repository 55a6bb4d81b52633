"""The small job that the run, inspect and report tests share (one finished copy per session,
the ``finished_job`` fixture of conftest.py), and the helpers to plan and run more like it.

Every ``masktok`` call is a subprocess with a timeout: Ray waits forever when it cannot
place work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from masktok.tiny.corpus import write_demo_corpus
from masktok.schemas.jobdir import JobDir

#: Demo scenes plus the file quirks of real corpora (quirks/broken.jpg is truncated, so one
#: image fails at decode). Manifest rows follow a seeded permutation: find them by id
#: with :func:`manifest_index`.
JOB_IMAGES = ["scenes/000.png", "scenes/001.jpg", "scenes/002.jpg", "scenes/003.jpg", "scenes/004.png",
              "quirks/broken.jpg", "quirks/cmyk.jpg", "quirks/animated.gif", "quirks/rgba.png"]
#: The demo spec made small: 4 boxes, 2 inversion steps, shards of 3 images (3 shards).
JOB_PLAN_ARGS = ["--spec", "demo", "--set", "detect.top_k=4", "--set", "invert.iterations=2", "--shard-size", "3"]
RUN_TIMEOUT = 300
MASKTOK = str(Path(sys.executable).parent / "masktok")


def run_masktok(*args: object, timeout: int = RUN_TIMEOUT, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed ``masktok`` command; AssertionError with its output when it fails and ``check``."""
    result = subprocess.run([MASKTOK, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"masktok {args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}")
    return result


def run_in_terminal(*args: object, timeout: int = RUN_TIMEOUT, env: dict[str, str] | None = None,
                    columns: int = 200) -> tuple[int, str]:
    """The installed ``masktok`` with a terminal (a pseudo-terminal ``columns`` wide) as its
    stdin, stdout and stderr, as a user runs it: (exit status, everything it wrote)."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    ours, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen([MASKTOK, *map(str, args)], stdin=side, stdout=side, stderr=side, env=env)
    os.close(side)
    chunks: list[bytes] = []

    def read() -> None:  # until the last holder of the terminal closes it (EIO on Linux)
        while True:
            try:
                data = os.read(ours, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    finally:
        proc.kill()
    reader.join(timeout=10)
    os.close(ours)
    return code, b"".join(chunks).decode(errors="replace")


def write_job_corpus(root: Path) -> tuple[Path, Path]:
    """The demo images under ``root`` and a LLaVA-Instruct-style JSON naming JOB_IMAGES."""
    write_demo_corpus(root)
    source = root / "small.json"
    source.write_text(json.dumps([{"id": str(i), "image": im, "conversations": []} for i, im in enumerate(JOB_IMAGES)]))
    return source, root / "images"


def plan_job(job: Path | str, corpus: tuple[Path, Path], *extra: object, image_root: Path | None = None) -> JobDir:
    """``masktok plan`` of the small corpus into ``job`` (another image root if given)."""
    source, images = corpus
    run_masktok("plan", job, "--corpus", "llava-instruct", "--source", source, "--image-root", image_root or images,
                *JOB_PLAN_ARGS, *extra, "-q")
    return JobDir(job)


def manifest_index(jd: JobDir, image_id: str) -> int:
    """The manifest row of ``image_id``."""
    from masktok.schemas.manifest import read_manifest

    return read_manifest(jd.manifest).column("image_id").to_pylist().index(image_id)
