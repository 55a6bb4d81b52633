"""Errors shared by the stages."""


class ModelLoadError(Exception):
    """A model checkpoint could not be loaded: missing, malformed, or for another architecture.

    The message is one line naming the path and what was expected, so the CLI can print it
    as is instead of a library traceback.
    """
