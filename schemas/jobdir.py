"""Names of the files in a job directory, in one place (docs/jobdir.md).

The pipeline writes these files and the trainer and the views read them; both sides take
every name from :class:`JobDir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .errors import StorageError
from .storage import is_remote, is_url, job_root, tiny_models_cache


def shard_name(shard: int) -> str:
    """``shard-000012``: the stem of a shard's commit file and of its WebDataset tar."""
    return f"shard-{shard:06d}"


@dataclass(frozen=True)
class JobDir:
    """The files of the job at ``root``: a local folder or an object-storage URL (text, a
    Path or a UPath; schemas/storage.py). Every name below is a path of the same kind."""

    root: Path  # or a upath.UPath: same API

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", job_root(self.root))

    @property
    def remote(self) -> bool:
        """On object storage (no rename, no flock, no fsync: see schemas/durable.py)."""
        return is_remote(self.root)

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
    def run_lock(self) -> Path:
        """Held (flock) by the one run or re-plan of the job (pipeline/lock.py)."""
        return self.root / "run.lock"

    @property
    def pools(self) -> Path:
        """The cluster and the actor pools of the running or last run (pipeline/pools.py)."""
        return self.root / "pools.json"

    @property
    def eval_images(self) -> Path:
        """The pictures a question file carries inside it (MMBench's TSV), decoded by plan."""
        return self.root / "images"

    @property
    def models(self) -> Path:
        """Where the tiny presets are materialised for jobs that ask for them: a local folder
        always (the loaders open local paths), the driver's cache for a URL job."""
        return tiny_models_cache() if self.remote else self.root / "models"

    def commit_path(self, shard: int) -> Path:
        """The commit file of ``shard``: the shard is done only when it exists."""
        return self.commits / f"{shard_name(shard)}.json"

    def wds_path(self, shard: int) -> Path:
        """The WebDataset tar of ``shard``."""
        return self.wds / f"{shard_name(shard)}.tar"

    def results(self) -> list[Path]:
        """Everything a run writes; a re-plan with --force removes these."""
        return [self.tokens, self.wds, self.commits, self.failures, self.pools]


class JobDirPath(click.Path):
    """The JOBDIR of a command: a local folder, or an fsspec URL (``s3://bucket/job``) given
    back as a ``UPath`` (schemas/storage.py). A URL this machine cannot open is refused in
    one line (exit status 2), never taken for a folder named ``s3:``."""

    def __init__(self, exists: bool = False):
        super().__init__(exists=exists, file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if is_remote(value) or is_url(value):
            try:
                root = job_root(value)
            except StorageError as exc:
                self.fail(str(exc), param, ctx)
            if is_remote(root):
                if self.exists and not root.exists():
                    self.fail(f"{root} does not exist", param, ctx)
                return root
            value = str(root)
        return super().convert(value, param, ctx)
