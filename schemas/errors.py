"""The errors a user can cause and fix, all in one place, under one base.

Every command of masktok (the cli/ package) is a
:class:`Command` or belongs to a :class:`Group`: they catch :class:`MasktokError` and print
its message as one line, exit status 1, no traceback. Anything else that escapes is a bug
and keeps its traceback (e.g. ``stages.write.WriteError``, a broken batch contract).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click


class MasktokError(Exception):
    """A problem with the user's input, files or setup, described in one actionable line."""


# Planning and running a job (pipeline/).
class SpecError(MasktokError):
    """A job spec that cannot be used; the message names the key and the problem."""


class ManifestError(MasktokError):
    """A missing manifest, or one written by another manifest version."""


class CorpusError(MasktokError):
    """A corpus that cannot be read at all; the message says where and why."""


class PlanError(MasktokError):
    """A job that cannot be planned; the message says why."""


class RunError(MasktokError):
    """A job that cannot run as asked (not planned, edited, results-changing override...)."""


class StorageError(MasktokError):
    """A job directory URL this machine cannot use (unknown protocol, missing library or
    bucket), or an object store that refused a read or a write (schemas/storage.py)."""


class LockedError(MasktokError):
    """The job directory is locked by another live run."""


class CheckpointError(MasktokError):
    """Weights that are missing or unknown: a model checkpoint a job needs, or a trainer
    checkpoint folder to resume or generate from."""


class ModelLoadError(MasktokError):
    """A model checkpoint that cannot be loaded: missing, malformed, or for another
    architecture. One line naming the path and what was expected (models/)."""


class InspectError(MasktokError):
    """`masktok inspect` / `report` asked about something the job does not hold (yet)."""


# Training from the cache (trainer/).
class CacheError(MasktokError):
    """A job directory without a usable token cache (the message says what to run)."""


class DataError(MasktokError):
    """A data file or LM folder that cannot be read (the message names it and the problem)."""


class TokenSpecError(MasktokError):
    """A token spec string that cannot be parsed (the message names the bad item)."""


class TrainError(MasktokError):
    """A training run that cannot start as asked (the message says why)."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a :class:`MasktokError` into click's one-line error (stderr, exit status 1)."""
    try:
        yield
    except MasktokError as exc:
        raise click.ClickException(str(exc)) from None


class Command(click.Command):
    """A click command whose user errors are one line (see :func:`one_line_errors`)."""

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors():
            return super().invoke(ctx)


class Group(click.Group):
    """A click group whose own and whose commands' user errors are one line."""

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors():
            return super().invoke(ctx)
