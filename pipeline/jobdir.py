"""Names of the files in a job directory (the contract of DESIGN.md), in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobDir:
    root: Path

    @property
    def job_toml(self) -> Path:
        return self.root / "job.toml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def plan_report(self) -> Path:
        return self.root / "plan.json"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.zarr"

    @property
    def wds(self) -> Path:
        return self.root / "wds"

    @property
    def commits(self) -> Path:
        return self.root / "commits"

    @property
    def failures(self) -> Path:
        return self.root / "failures.parquet"

    @property
    def models(self) -> Path:
        """Where the tiny presets are materialised for jobs that ask for them."""
        return self.root / "models"

    def results(self) -> list[Path]:
        """Everything a run writes; a re-plan with --force removes these."""
        return [self.tokens, self.wds, self.commits, self.failures]


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (POSIX: the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
