"""Job specs (TOML) for the known corpora and for the demo, shipped with the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED = ("demo", "llava_pretrain", "llava_instruct")


def bundled_spec(name: str) -> Path:
    """Path of a bundled spec by short name (``demo``, ``llava_pretrain``, ``llava_instruct``)."""
    if name not in BUNDLED:
        raise KeyError(name)
    return Path(str(resources.files(__name__) / f"{name}.toml"))
