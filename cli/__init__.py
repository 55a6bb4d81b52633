"""The `masktok` command line: the one package on top of all the others.

Each command is a thin click shell over a function below it (job.py: pipeline/; train.py:
trainer/ and inference/; answer.py and score.py: evaluate/; views.py: pipeline/views/);
group.py registers them on the ``masktok`` group. Nothing below cli/ imports it, except the
torchrun entry point ``python -m masktok.trainer.launch`` (its documented path).

``main`` is resolved on first use, so that importing one command module (as torchrun's
launcher does in every process) does not import every other command's packages.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "main":  # the console script masktok = masktok.cli:main
        from .group import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
