"""Job specs (TOML) for the known corpora and for the demo, shipped with the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ..schemas.spec import read_toml

BUNDLED = ("demo", "llava_pretrain", "llava_instruct")


def bundled_spec(name: str) -> Path:
    """Path of a bundled spec by short name (``demo``, ``llava_pretrain``, ``llava_instruct``)."""
    if name not in BUNDLED:
        raise KeyError(name)
    return Path(str(resources.files(__name__) / f"{name}.toml"))


def spec_document(spec: str | None) -> tuple[dict[str, Any], str]:
    """Read a ``--spec`` value: a TOML file, or the name of a bundled spec; (document, origin)."""
    if spec is None:
        return {}, "job spec"
    name = spec.replace("-", "_")
    if not Path(spec).is_file() and name in BUNDLED:  # a folder named "demo" is no spec
        path = bundled_spec(name)
        return read_toml(path), f"bundled spec '{name}'"
    return read_toml(Path(spec)), spec
