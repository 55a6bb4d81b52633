"""``masktok inspect`` and ``masktok report``: the click commands over pipeline/views/
(inspect_image draws one image of a job, build_report writes the HTML page)."""

from __future__ import annotations

from pathlib import Path

import click

from ..pipeline.views.inspect import inspect_image
from ..pipeline.views.report import build_report
from ..schemas.durable import write_atomic
from ..schemas.errors import Command
from ..schemas.refusals import refused_writes
from ..schemas.jobdir import JobDirPath


@click.command("inspect", cls=Command)
@click.argument("jobdir", type=JobDirPath(exists=True))
@click.argument("image", required=False, metavar="[IMAGE_ID]")
@click.option("--index", type=int, help="Manifest index instead of IMAGE_ID (an all-digit IMAGE_ID is one too).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG file to write.")
@click.option("--maps", is_flag=True, help="Add each object's explainability map, recomputed from its stored token.")
@click.option("--top", type=click.IntRange(min=1), help="Show only the first N kept objects (and no suppressed ones).")
def inspect(jobdir: Path, image: str | None, index: int | None, output: Path, maps: bool, top: int | None) -> None:
    """Draw one image of JOBDIR: masks (a colour per kept object, background hatched),
    boxes with keep_rank · score labels, suppressed boxes dashed; --maps adds the
    explainability map of every shown object beside its mask.

    IMAGE_ID (optional: or --index N) is the image's path relative to the image root, as the
    manifest names it, or its manifest index (all digits).
    """
    if image is not None and index is not None:
        raise click.ClickException("give IMAGE_ID or --index, not both")
    png, _, line = inspect_image(jobdir, image, index, maps=maps, top=top)
    with refused_writes("the picture", "the job is only read; no half-written picture stays"):
        write_atomic(output, png)
    click.echo(line)
    click.echo(f"wrote {output}")


@click.command("report", cls=Command)
@click.argument("jobdir", type=JobDirPath(exists=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default: JOBDIR/report.html).")
@click.option("--images", type=click.IntRange(min=0), default=3, show_default=True,
              help="How many images to draw in the report.")
def report(jobdir: Path, output: Path | None, images: int) -> None:
    """Write a self-contained HTML report on JOBDIR: summary, throughput, failures,
    distributions of objects, inversion loss, mask area and patch norms, and a few
    inspected images. Open it in any browser; it needs no server and no network."""
    text = build_report(jobdir, images=images)
    output = output or jobdir / "report.html"
    with refused_writes("the report", "the job is only read; no half-written report stays"):
        write_atomic(output, text.encode("utf-8"))
    click.echo(f"wrote {output}")
