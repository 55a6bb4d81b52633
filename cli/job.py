"""The job's commands: ``masktok plan``, ``run``, ``status``, ``verify`` and ``demo``, each a
thin shell over a function of pipeline/ (the demo: tiny/demo.py). Every expected problem (bad
spec, bad corpus, refused job) is a ``MasktokError``: one line on stderr with exit status 1,
never a traceback (schemas/errors.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..jobs import BUNDLED, spec_document
from ..pipeline.passes import STALL_TIMEOUT_S
from ..pipeline.plan import plan_job
from ..schemas.errors import Command
from ..schemas.refusals import refused_writes
from ..schemas.jobdir import JobDir, JobDirPath
from ..schemas.spec import CORPUS_KINDS, apply_overrides, set_value, spec_from_dict


@click.command(cls=Command)
@click.argument("jobdir", type=JobDirPath())
@click.option("--corpus", "kind", type=click.Choice(CORPUS_KINDS),
              help="Corpus format: a LLaVA JSON file, a LLaVA eval question file (JSON Lines), "
                   "or a folder of images.")
@click.option("--source", type=click.Path(path_type=Path),
              help="The corpus JSON (or .jsonl) file, or the image folder.")
@click.option("--image-root", type=click.Path(path_type=Path),
              help="Folder the JSON's 'image' paths are relative to (LLaVA corpora).")
@click.option("--spec", "spec", metavar="FILE|NAME",
              help=f"Job spec TOML, or a bundled one: {', '.join(BUNDLED)}. Default: the paper's settings.")
@click.option("--shard-size", type=int, help="Images per shard (spec shards.size).")
@click.option("--sample", type=int, help="Plan a seeded random subset of N images (spec corpus.sample, corpus.seed).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any spec key, e.g. --set detect.top_k=50 --set corpus.check_files=false.")
@click.option("--force", is_flag=True, help="Replace a different job already in JOBDIR (its results are deleted).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
def plan(jobdir: Path, kind: str | None, source: Path | None, image_root: Path | None, spec: str | None,
         shard_size: int | None, sample: int | None, overrides: tuple[str, ...], force: bool, quiet: bool) -> None:
    """Plan a job: read the corpus, check and deduplicate its images, write JOBDIR/job.toml
    and JOBDIR/manifest.parquet (one row per unique image, in a seeded pseudo-random order, in shards).
    JOBDIR is a folder or an object-storage URL (s3://bucket/job; docs/jobdir.md).

    \b
    Examples:
      masktok plan runs/pretrain --corpus llava-pretrain \\
          --source blip_laion_cc_sbu_558k.json --image-root images/ --spec llava_pretrain
      masktok plan runs/smoke --corpus llava-instruct --source llava_v1_5_mix665k.json \\
          --image-root data/ --spec llava_instruct --sample 200
      masktok plan runs/pope --corpus llava-eval --source pope/llava_pope_test.jsonl \\
          --image-root coco/val2014/ --spec llava_instruct
      masktok plan runs/photos --corpus folder --source ~/photos --spec demo
    """
    doc, origin = spec_document(spec)
    for key, value in (("corpus.kind", kind), ("corpus.source", source), ("corpus.image_root", image_root),
                       ("shards.size", shard_size), ("corpus.sample", sample)):
        if value is not None:
            set_value(doc, key, str(value) if isinstance(value, Path) else value)
    doc = apply_overrides(doc, list(overrides))
    job_spec = spec_from_dict(doc, origin=origin)
    with refused_writes("the plan", "no job.toml was written (plan writes it last), so no half-planned job can run"):
        summary = plan_job(jobdir, job_spec, force=force, progress=not quiet and sys.stderr.isatty())
    if quiet:
        return
    for line in summary.lines():
        click.echo(line)
    if summary.outcome == "repaired":
        click.echo(f"rewrote {jobdir / 'manifest.parquet'}: it was damaged; the same inputs gave the same manifest, "
                   "so the job's results are kept")
    elif summary.outcome == "unchanged":
        click.echo(f"{jobdir} already holds this exact job: nothing rewritten.")
    else:
        replaced = " (the previous job and its results were replaced)" if summary.outcome == "replanned" else ""
        click.echo(f"wrote {jobdir / 'job.toml'} and {jobdir / 'manifest.parquet'}{replaced}")


@click.command(cls=Command)
@click.argument("jobdir", type=JobDirPath(exists=True))
@click.option("--ray-address", metavar="ADDR",
              help="Join a running Ray cluster ('auto' or host:port). Default: start a local Ray for this run.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change speed settings for this run only, e.g. --set invert.resources.gpus=0.5 "
                   "(settings that change results are refused).")
@click.option("--retry-failed", is_flag=True, help="Also redo the shards that hold failed images.")
@click.option("--stages", is_flag=True,
              help="In a terminal: a bar per stage group (Ray Data's: rows done, actors, queued blocks, CPUs "
                   "and GPUs held) instead of the one bar, to see which pool to scale.")
@click.option("--stall-timeout", type=click.FloatRange(min=1), default=STALL_TIMEOUT_S, show_default=True,
              metavar="SECONDS",
              help="End a stream in which no image moved through any stage for this long. If a node left the "
                   "cluster, a new pass over the nodes left does the images no writer holds; else the run stops.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def run(jobdir: Path, ray_address: str | None, overrides: tuple[str, ...], retry_failed: bool, stages: bool,
        stall_timeout: float, quiet: bool) -> None:
    """Process every shard of JOBDIR that has no commit yet: decode + prepare -> detect -> segment ->
    background + filter -> invert -> Zarr + WebDataset, on Ray. Safe to kill at any
    moment: the next run redoes exactly the uncommitted shards."""
    from ..pipeline.run import run_job

    with refused_writes(f"the job {jobdir}", "every committed shard is safe: the next run does exactly the shards left"):
        summary = run_job(JobDir(jobdir), ray_address=ray_address, overrides=overrides, retry_failed=retry_failed,
                          progress=not quiet, stages=stages, echo=click.echo, stall_timeout=stall_timeout)
    click.echo(summary.line())
    if summary.retry_advice:
        click.echo(summary.retry_advice)
    if summary.images_failed:
        click.echo(f"failed images are listed in {jobdir / 'failures.parquet'} (retry: --retry-failed)")


@click.command(cls=Command)
@click.argument("jobdir", type=JobDirPath(exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts and dashboards.")
def status(jobdir: Path, as_json: bool) -> None:
    """Images and shards done, failed and pending; throughput, ETA and the slowest stage."""
    from ..pipeline.status import job_status, status_lines

    s = job_status(JobDir(jobdir))
    if as_json:
        click.echo(json.dumps(s))
        return
    for line in status_lines(s):
        click.echo(line)


@click.command(cls=Command)
@click.argument("jobdir", type=JobDirPath(exists=True))
@click.option("--repair", is_flag=True, help="Remove the commits of bad shards, so the next run redoes them.")
@click.option("--committed-only", is_flag=True,
              help="Check only what is committed: shards not yet run do not make it fail (e.g. while a run goes on).")
def verify(jobdir: Path, repair: bool, committed_only: bool) -> None:
    """Check every committed shard against its commit file (checksums, counts, finite
    values) and that no shard is pending; exit 1 naming the bad shards, or saying how many
    shards are still pending (--committed-only: pending shards are reported, not an error)."""
    from ..pipeline.status import pending_shards, verify_job

    jd = JobDir(jobdir)
    with refused_writes("the repair", "only the commits of bad shards are removed; the data is untouched"):
        bad = verify_job(jd, repair=repair)
    pending, total = pending_shards(jd)
    for shard, problems in bad.items():
        click.echo(f"shard {shard}: {'; '.join(problems)}")
    if bad:
        action = "their commits were removed: the next run redoes them" if repair else "run with --repair to redo them"
        raise click.ClickException(f"{len(bad)} bad shard(s): {', '.join(map(str, bad))}; {action}")
    checked = total - len(pending)
    click.echo(f"all {checked} committed shard(s) match their commit files" if checked
               else "no shard is committed yet: nothing to check")
    if pending:
        shown = ", ".join(map(str, pending[:10])) + (", ..." if len(pending) > 10 else "")
        message = f"{len(pending)} of {total} shard(s) pending (no commit yet: {shown}): `masktok run {jobdir}` does them"
        if not committed_only:
            raise click.ClickException(f"job not complete: {message}")
        click.echo(message)


@click.command(cls=Command)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default="demo-job")
def demo(directory: Path) -> None:
    """Run the whole pipeline in DIRECTORY (default: demo-job): generated images with the
    quirks of real corpora, the bundled demo spec and tiny randomly initialised models."""
    from ..tiny.demo import run_demo

    with refused_writes(f"the demo in {directory}", "the steps done so far are kept: run it again to go on"):
        run_demo(directory, echo=click.echo, progress=sys.stderr.isatty())
