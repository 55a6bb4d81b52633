"""``python -m masktok.trainer.launch {train,generate} ...``: the trainer's commands without
the rest of the CLI, for torchrun (``torchrun --nproc_per_node N -m masktok.trainer.launch
train ...``), which needs a module or a script to start in each process. It keeps this documented path,
below cli/, so it is the one module of trainer/ that imports cli/ (an exception written in
pyproject.toml's layer contract): a program nothing imports, so no loop."""

from __future__ import annotations

import click

from ..cli.train import generate, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Mask-LLaVA trainer commands."""


main.add_command(train)
main.add_command(generate)

if __name__ == "__main__":
    main()
