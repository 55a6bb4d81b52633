"""``python -m masktok.trainer.launch {train,generate} ...``: the trainer's commands without
the rest of the CLI, for torchrun (``torchrun --nproc_per_node N -m masktok.trainer.launch
train ...``), which needs a module or a script to start in each process."""

from __future__ import annotations

import click

from .cli import generate, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Mask-LLaVA trainer commands."""


main.add_command(train)
main.add_command(generate)

if __name__ == "__main__":
    main()
