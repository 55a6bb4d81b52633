"""The ``masktok`` group: every command of cli/ registered on one click group. Every expected
problem is a ``MasktokError``, which the group prints as one line on stderr with exit status
1, never a traceback (schemas/errors.py)."""

from __future__ import annotations

from importlib.metadata import version

import click

from ..schemas.errors import Group
from .answer import answer
from .job import demo, plan, run, status, verify
from .score import score, submission
from .train import ask, export, generate, train
from .views import inspect, report


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("masktok"), prog_name="masktok")
def main() -> None:
    """Precompute Mask-LLaVA visual tokens (global, pooled patch and object tokens) for
    whole corpora, and train from the cache.

    A job lives in one directory: `masktok plan` writes its spec (job.toml) and its
    manifest (one row per unique image); later commands fill and read it.
    """


for _command in (plan, run, status, verify, demo, inspect, report, train, generate, ask, export, answer, score,
                 submission):
    main.add_command(_command)
