"""`masktok demo`: the whole of masktok that exists today, on generated images and tiny models.

It writes the demo corpus, plans a job over it with the bundled demo spec, materialises
the tiny model presets in their real checkpoint formats and loads each through the real
loader. It says plainly which parts of the pipeline are not built yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..jobs import bundled_spec
from ..schemas.spec import apply_overrides, read_toml, spec_from_dict
from ..stages.clip import TINY_CLIP_NAME, load_clip
from ..stages.detect import load_detector
from ..stages.segment import load_sam
from .demo_corpus import write_demo_corpus
from .jobdir import JobDir
from .plan import plan_job
from .tiny_models import materialize_tiny_checkpoints

NOT_BUILT_YET = (
    "not built yet: the stages (decode, detect, segment, filter, invert), `masktok run`, the "
    "trainer and the reports; the demo stops after planning and loading the models"
)


def quiet_model_libraries() -> None:
    """Progress bars and notices of the model libraries are noise in a command's output."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights" notice


def _parameters(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()):,} parameters"


def run_demo(root: Path, echo: Callable[[str], None] = print) -> JobDir:
    """Run the demo in ``root`` (corpus in root/corpus, job in root/job); idempotent."""
    source = write_demo_corpus(root / "corpus")
    echo(f"demo corpus: {source} (generated scenes and real-world file quirks)")
    doc = apply_overrides(read_toml(bundled_spec("demo")), [
        f'corpus.source="{source}"', f'corpus.image_root="{source.parent / "images"}"'])
    job = JobDir(root / "job")
    summary = plan_job(job.root, spec_from_dict(doc, origin="bundled spec 'demo'"))
    for line in summary.lines():
        echo(line)
    echo(f"job planned: {job.job_toml}, {job.manifest}")

    quiet_model_libraries()
    checkpoints = materialize_tiny_checkpoints(job.models)
    detector, _ = load_detector(checkpoints["detector"])
    sam = load_sam(checkpoints["sam"], "tiny")
    clip = load_clip(TINY_CLIP_NAME, checkpoints["clip"])
    echo(f"tiny models saved under {job.models} and loaded through the real loaders:")
    echo(f"  Deformable-DETR  {checkpoints['detector']}  ({_parameters(detector)})")
    echo(f"  SAM              {checkpoints['sam']}  ({_parameters(sam)})")
    echo(f"  CLIP             {checkpoints['clip']}  ({_parameters(clip)})")
    echo(NOT_BUILT_YET)
    return job
