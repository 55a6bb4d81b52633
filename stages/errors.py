"""Errors shared by the stages."""


class ModelLoadError(Exception):
    """A model checkpoint could not be loaded: missing, malformed, or for another architecture.

    The message is one line naming the path and what was expected, so the CLI can print it
    as is instead of a library traceback.
    """


def require_materialised(checkpoint: object, key: str) -> None:
    """Stages load real files only: the "tiny" preset is built into a folder by the pipeline
    first (masktok.pipeline.tiny_models.materialize_tiny_checkpoints) and passed as a path."""
    if str(checkpoint) == "tiny":
        raise ModelLoadError(f"{key} 'tiny' must be materialised first "
                             "(masktok.pipeline.tiny_models.materialize_tiny_checkpoints) and passed as a path")
