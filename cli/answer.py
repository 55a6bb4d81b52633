"""``masktok answer`` (click; registered in cli/__init__.py). Imports stay light here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..evaluate.benchmarks import REGISTRY
from ..inference.device import DTYPE_CHOICES
from ..schemas.errors import Command, StorageError
from ..schemas.refusals import refused_writes
from ..schemas.storage import is_url
from ..schemas.jobdir import JobDirPath

_DIR = click.Path(file_okay=False, path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("answer", cls=Command)
@click.option("--checkpoint", type=_DIR, required=True, help="A checkpoint-*/ folder, or a run folder (its latest).")
@click.option("--cache", type=JobDirPath(), required=True, help="The job directory holding the questions' images.")
@click.option("--questions", "questions_file", type=_FILE, required=True,
              help="A LLaVA-1.5 benchmark file as LLaVA ships it: JSON Lines of {question_id, image, text, "
                   "category?} (VQAv2, GQA, VizWiz, TextVQA, POPE, MME, MM-Vet), ScienceQA's JSON list "
                   "(llava_test_CQM-A.json) or MMBench's .tsv.")
@click.option("--tokens", "specs", multiple=True,
              help="A token spec to answer at (repeat for a budget sweep). Default: the checkpoint's.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder of the answer files, one <spec>.jsonl per --tokens.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=None,
              help="Default: LLaVA-1.5's for the benchmark: 128 (model_vqa_loader benchmarks), 1024 (MM-Vet, "
                   "ScienceQA, MMBench).")
@click.option("--benchmark", type=click.Choice(REGISTRY), default=None,
              help="The benchmark the file belongs to: its reader and generation limit, whatever the file "
                   "is called (default: recognised by the file's content).")
@click.option("--lang", type=click.Choice(["en", "cn"]), default=None,
              help="MMBench's single-prediction suffix (default: cn for a *_cn* file, else en).")
@click.option("--model-id", default=None, help="The answers' model_id (default: the name of the folder given to --checkpoint).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds sampling (temperature > 0).")
@click.option("--device", default="auto", show_default=True, help="auto: cuda when there is a GPU, else cpu.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
              help="The weights' dtype; auto: bfloat16 on CUDA, float32 on the CPU.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Answer only the file's first N questions (a smoke run: give it an --out of its own).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Model replicas on Ray actors (one GPU each on a GPU cluster, else one CPU each). "
                   "Default: one in this process, or one per GPU of --ray-address.")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="Join a running Ray cluster ('auto' or host:port), as `masktok run` does; "
                   "one replica per GPU of it unless --workers says otherwise.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or report.")
def answer(specs: tuple[str, ...], quiet: bool, **opts: Any) -> None:
    """Answer a LLaVA-1.5 benchmark question file from the cache, at every token spec, in
    LLaVA's answer format (its scoring scripts read the files unchanged). Batches are planned
    before any work (OUT/<spec>.plan.json); one process writes OUT. A rerun answers only the
    unfinished batches; a rerun with other settings, or a second run on OUT, is refused."""
    import sys

    from transformers.utils.logging import disable_progress_bar

    from ..trainer.model.checkpoint import read_state, resolve
    from ..evaluate.answer import answer as run

    disable_progress_bar()
    if is_url(opts["out"]):
        raise StorageError(f"--out {opts['out']}: answers are written to a local folder (appended as they come, "
                           "resumed from the file); write them locally, then copy them to the store")
    opts["out"] = Path(opts["out"])
    specs = specs or (read_state(resolve(opts["checkpoint"]))["tokens"],)
    echo = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    with refused_writes(f"the answers in {opts['out']}",
                        "every finished batch written before is kept: a rerun answers only the batches left"):
        summary = run(specs=list(specs), echo=echo, progress=not quiet and sys.stderr.isatty(), **opts)
    empty = sum(len(ids) for ids in summary.skipped.values())
    for spec, path in summary.files.items():
        click.echo(f"{path}  ({summary.answered[spec]} answered, {summary.kept[spec]} kept, {empty} empty: no image)")
