"""Errors a user can cause and fix (the CLI prints them as one line, exit status 1)."""


class RunError(RuntimeError):
    """A job that cannot run as asked (not planned, edited, results-changing override...)."""


class CheckpointError(ValueError):
    """A model checkpoint the job needs is missing or unknown."""
