"""``masktok train``, ``generate``, ``export`` and ``ask`` as click commands (registered in
cli/__init__.py with ``main.add_command``). Imports stay light here; torch and transformers load inside the
commands. Expected problems (bad spec, missing cache or LM folder, unknown image id, a
refused resume) are ``MasktokError``s: one line on stderr and exit status 1 (schemas/errors.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..inference.device import DTYPE_CHOICES
from ..schemas.dtypes import WEIGHT_DTYPES
from ..schemas.errors import Command
from ..schemas.refusals import refused_writes
from ..schemas.jobdir import JobDirPath

_DIR = click.Path(file_okay=False, path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)
# Steps between checkpoints by default: a crash loses at most this much (stage 1 at the paper's
# global batch of 256 is ~2,180 steps over 558K captions, stage 2 at 128 ~5,200 over 665K).
SAVE_EVERY = 500


@click.command("train", cls=Command)
@click.option("--stage", type=click.IntRange(1, 2), required=True,
              help="1: projector only, plain template (captions). 2: projector + LM, v1 conversations.")
@click.option("--cache", type=JobDirPath(), required=True, help="A finished masktok job directory (JOBDIR).")
@click.option("--data", type=_FILE, required=True, help="LLaVA JSON (list of {image?, conversations}).")
@click.option("--llm", type=_DIR, required=True, help="Local Hugging Face causal-LM folder (model + tokenizer).")
@click.option("--out", type=_DIR, required=True, help="Run folder: metrics.jsonl, run.json, checkpoint-*/.")
@click.option("--tokens", default=None, help="Token spec, e.g. cls,patch:36,obj:101:all (the default: the paper's 138, every mask) "
                   "or cls,patch:9,obj:5.")
@click.option("--scaling", type=click.Choice(["none", "per-image-std", "per-image-std-unpooled", "per-image",
                                             "dataset-global", "c7"]), default=None,
              help="Norm scaling of global/object tokens (default per-image-std: the paper's, per image, "
                   "mean and std of the 36 pooled patch tokens' norms; docs/trainer.md).")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Optimizer steps (default: --epochs).")
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True, help="Per process.")
@click.option("--grad-accum", type=click.IntRange(1), default=1, show_default=True)
@click.option("--lr", type=float, default=None, help="Default 1e-3 (stage 1), 2e-5 (stage 2).")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.03, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="0 disables clipping.")
@click.option("--max-length", type=click.IntRange(8), default=2048, show_default=True,
              help="Sequence length incl. visual tokens; longer examples are cut at the end.")
@click.option("--log-every", type=click.IntRange(1), default=1, show_default=True)
@click.option("--save-every", type=click.IntRange(0), default=SAVE_EVERY, show_default=True,
              help="Also checkpoint every N steps, for --resume after a crash (the last step is always saved; "
                   "0: the last step only).")
@click.option("--keep-checkpoints", type=click.IntRange(1), default=None, help="Keep only the newest N.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint under --out.")
@click.option("--init-from", type=_DIR, default=None,
              help="Start from a checkpoint's projector (and LM, if it has one): stage 2 after stage 1.")
@click.option("--reader", type=click.Choice(["zarr", "wds"]), default="zarr", show_default=True)
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="DataLoader workers.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the per-epoch shuffle of the examples and the projectors' initialisation.")
@click.option("--group-by-modality-length/--no-group-by-modality-length", default=None,
              help="LLaVA-1.5's batching: image and text-only examples in separate batches, lengths grouped. "
                   "Default: on in stage 2, off in stage 1, as LLaVA-1.5's scripts.")
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Train on this deterministic fraction of --data's records (the paper's stage 1: 0.9 of "
                   "LLaVA-Pretrain); the same subset on every run (docs/trainer.md).")
@click.option("--fraction-seed", type=int, default=0, show_default=True, help="Which subset --fraction takes.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 compute on CUDA when supported (fp32 master weights), fp32 on CPU.")
@click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]), default="auto", show_default=True,
              help="With several processes: ddp replicates the model; fsdp (FSDP2) shards parameters, "
                   "gradients and optimizer state per decoder layer. auto: fsdp on CUDA, ddp on CPU. "
                   "One process runs unwrapped.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute each decoder layer's activations in the backward pass (less memory, ~1/3 more compute).")
@click.option("--device", default=None, help="Default cuda:LOCAL_RANK when CUDA is available, else cpu.")
@click.option("-q", "--quiet", is_flag=True)
def train(quiet: bool, **opts: Any) -> None:
    """Train Mask-LLaVA from a token cache (stage 1 or 2). Under torchrun (WORLD_SIZE > 1)
    it runs on all processes: torchrun --nproc_per_node N -m masktok.trainer.launch train ...
    The last checkpoint is consolidated (projector.pt, llm/ as a Hugging Face folder)."""
    from transformers.utils.logging import disable_progress_bar

    from ..trainer.runtime import TrainConfig
    from ..trainer.train import train as run

    disable_progress_bar()  # transformers 5's "Loading weights" bars, once per rank

    cfg = TrainConfig(**opts)
    echo = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    with refused_writes(f"the training run under {cfg.out}",
                        "the checkpoints already saved are whole (a half-written one is removed): --resume "
                        "continues from the newest"):
        summary = run(cfg, echo)
    if summary.get("checkpoint"):
        click.echo(f"step {summary['step']}  loss {summary['loss']:.4f}  checkpoint {summary['checkpoint']}")


@click.command("generate", cls=Command)
@click.option("--checkpoint", type=_DIR, required=True, help="A checkpoint-*/ folder, or a run folder (its latest).")
@click.option("--cache", type=JobDirPath(), required=True, help="The job directory holding the image's tokens.")
@click.option("--image-id", required=True, help="The image's id, as the corpus names it.")
@click.option("--prompt", default="Describe the image.", show_default=True, help="The user's question (stage 2).")
@click.option("--tokens", default=None, help="Token spec at test time (default: the checkpoint's).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto: cuda when there is a GPU, else cpu.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
              help="The weights' dtype; auto: bfloat16 on CUDA, float32 on the CPU.")
def generate(**opts: Any) -> None:
    """Print a trained model's greedy answer about one cached image."""
    from transformers.utils.logging import disable_progress_bar

    from ..inference.generate import generate as run

    disable_progress_bar()  # the answer is all the command prints (transformers 5 shows "Loading weights")
    click.echo(run(**opts))


@click.command("export", cls=Command)
@click.option("--checkpoint", type=_DIR, required=True, help="A checkpoint-*/ folder, or a run folder (its latest).")
@click.option("--out", type=_DIR, required=True, help="A new folder: projector.pt, state.json and (stage 2) llm/.")
@click.option("--dtype", type=click.Choice(WEIGHT_DTYPES), default="float32", show_default=True,
              help="The LM weights' dtype in llm/.")
def export(checkpoint: Path, out: Path, dtype: str) -> None:
    """Consolidate a (sharded) checkpoint, whatever world size wrote it: llm/ loads with
    AutoModelForCausalLM.from_pretrained, and `masktok generate --checkpoint OUT` answers
    with it. Needs the memory of the whole model in one process (fp32: 27 GB at 7B)."""
    from transformers.utils.logging import disable_progress_bar

    from ..trainer.model.consolidate import export as run

    disable_progress_bar()
    with refused_writes(f"the export {out}", f"{checkpoint} is untouched and no half-written export stays"):
        click.echo(run(checkpoint, out, dtype))


@click.command("ask", cls=Command)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--checkpoint", type=_DIR, required=True, help="A checkpoint-*/ folder, or a run folder (its latest).")
@click.option("--spec", "spec_name", required=True,
              help="The job spec of the cache the checkpoint learnt from: a TOML file (a job's job.toml will do) "
                   "or a bundled name (demo, llava_pretrain, llava_instruct).")
@click.option("--question", default=None,
              help="Asked of every image. Without it: one image, and a chat on stdin (an empty line or Ctrl-D ends).")
@click.option("--tokens", default=None, help="Token spec at test time (default: the checkpoint's).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image: image, question, answer.")
@click.option("--verbose", is_flag=True, help="Each stage's seconds per image, on stderr.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
@click.option("--device", default=None, help="Default: cuda when there is one, else cpu (the stages and the LM).")
def ask(images: tuple[Path, ...], checkpoint: Path, spec_name: str, question: str | None, tokens: str | None,
        as_json: bool, verbose: bool, max_new_tokens: int, device: str | None) -> None:
    """Answer questions about pictures no job has planned: the spec's stages run here (no
    Ray, no job directory, models loaded once), and the checkpoint answers from the
    tokens, composed as in training. IMAGES: files, or folders of them.

    \b
    Examples:
      masktok ask --checkpoint runs/finetune --spec llava_instruct photo.jpg
      masktok ask --checkpoint runs/finetune --spec llava_instruct photos/ --question "What is on the table?" --json
    """
    import json
    import sys

    import torch
    from transformers.utils.logging import disable_progress_bar

    from ..inference.ask import Asker, PictureTokens, chat, image_paths
    from ..jobs import spec_document
    from ..models import quiet_model_libraries
    from ..schemas.errors import DataError, TrainError
    from ..schemas.spec import expand_env, spec_from_dict
    from ..schemas.storage import tiny_models_cache
    from ..stages.checkpoints import token_dims

    disable_progress_bar()
    quiet_model_libraries()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    paths = image_paths(images)
    job_spec = expand_env(spec_from_dict(*spec_document(spec_name)))
    asker = Asker(checkpoint, job_spec, token_dims(job_spec).as_dict(), tokens, device)
    if asker.stage == 1 and question is not None:
        raise TrainError(f"{checkpoint} is a stage-1 checkpoint: it captions (plain template), it does not take a "
                         "question; leave out --question")
    chatting = question is None and asker.stage == 2
    if chatting and len(paths) > 1:
        raise DataError(f"{len(paths)} images: a chat is about one image; give --question to ask it of each")
    click.echo(f"computing the tokens of {len(paths)} image{'s' if len(paths) > 1 else ''} on {device} "
               "(loading the spec's models first)", err=True)
    pictures = PictureTokens(job_spec, device, tiny_models_cache())
    records = pictures.records(paths)
    if verbose:
        click.echo("stages: " + ", ".join(f"{name} {s / len(paths):.3g}" for name, s in pictures.seconds.items())
                   + " s/image", err=True)
    bad = [(path, rec["error"]) for path, rec in zip(paths, records) if "error" in rec]
    if chatting and not bad:
        def read() -> str | None:
            if sys.stdin.isatty():
                click.echo("USER: ", nl=False, err=True)
            line = sys.stdin.readline()
            return line if line else None

        chat(asker, records[0], read, click.echo, max_new_tokens)
        return
    for path, rec in zip(paths, records):
        if "error" not in rec:
            text = asker.answer(rec, question or "", max_new_tokens)
            click.echo(json.dumps({"image": str(path), "question": question, "answer": text}) if as_json
                       else text if len(paths) == 1 else f"{path}: {text}")
    if bad:
        raise DataError(f"no tokens for {len(bad)} of {len(paths)} images: "
                        + "; ".join(f"{path} ({e['stage']}: {e['reason']})" for path, e in bad[:3]))
