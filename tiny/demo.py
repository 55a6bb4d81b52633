"""`masktok demo`: the whole of masktok on generated images and tiny models, end to end.

It writes the demo corpus (generated scenes plus the file quirks of real corpora), plans a
job over it with the bundled demo spec (tiny presets, materialised in their real checkpoint
formats and loaded through the real loaders), runs it on a local Ray, verifies every
committed shard, draws one image and the HTML report, trains a tiny Llama from the cache
and asks it about one image, and prints where the results are. Run it again: it resumes,
and finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..jobs import bundled_spec
from ..schemas.jobdir import JobDir
from ..schemas.spec import apply_overrides, read_toml, spec_from_dict
from ..models import quiet_model_libraries
from ..pipeline.plan import plan_job
from ..pipeline.run import run_job
from ..pipeline.status import job_status, verify_job
from ..pipeline.views.inspect import inspect_image
from ..pipeline.views.report import build_report


def run_demo(root: Path, echo: Callable[[str], None] = print, progress: bool = True) -> JobDir:
    """Run the demo in ``root`` (corpus in root/corpus, job in root/job); idempotent."""
    from .corpus import write_demo_corpus

    quiet_model_libraries()
    source = write_demo_corpus(root / "corpus")
    echo(f"demo corpus: {source} (generated scenes and real-world file quirks)")
    doc = apply_overrides(read_toml(bundled_spec("demo")), [
        f'corpus.source="{source}"', f'corpus.image_root="{source.parent / "images"}"'])
    job = JobDir(root / "job")
    summary = plan_job(job.root, spec_from_dict(doc, origin="bundled spec 'demo'"))
    for line in summary.lines():
        echo(line)
    echo(f"job planned: {job.job_toml}")
    echo("running the job on a local Ray (tiny models, built under job/models and loaded through the real loaders)")
    echo(run_job(job, progress=progress, echo=echo).line())
    bad = verify_job(job)
    echo("verify: every committed shard matches its commit file" if not bad else f"verify: bad shards {sorted(bad)}")
    status = job_status(job)
    echo(f"results: {status['images_done']} images done, {status['images_failed']} failed "
         f"(see {job.failures}), {status['shards_committed']}/{status['shards_total']} shards committed")
    echo(f"  tokens (Zarr v3):  {job.tokens}")
    echo(f"  WebDataset shards: {job.wds}")
    echo(f"  try: masktok status {job.root}    masktok verify {job.root}")
    png, _, _ = inspect_image(job.root, image="scenes/000.png")
    (root / "inspect.png").write_bytes(png)
    (root / "report.html").write_text(build_report(job.root))
    echo(f"  pictures: {root / 'inspect.png'} (masktok inspect), {root / 'report.html'} (masktok report)")
    _train_tiny(root, job, source, echo)
    return job


def _train_tiny(root: Path, job: JobDir, source: Path, echo: Callable[[str], None]) -> None:
    """Stage-2 training of a tiny Llama from the cache, then one answer from it."""
    import json

    from ..inference.generate import generate
    from ..trainer.runtime import TrainConfig
    from ..trainer.train import train
    from .llm import build_tiny_llm

    llm, out = root / "llm", root / "train"
    if not (llm / "config.json").exists():
        texts = [turn["value"] for record in json.loads(source.read_text()) for turn in record["conversations"]]
        build_tiny_llm(llm, texts)
    if not (out / "latest").exists():
        summary = train(TrainConfig(stage=2, cache=job.root, data=source, llm=llm, out=out, tokens="cls,patch:36,obj:21",
                                    max_steps=60, batch_size=4, lr=3e-3, device="cpu", log_every=10))
        echo(f"trained a tiny Llama from the cache (stage 2, {summary.get('step')} steps, "
             f"last loss {summary.get('loss', float('nan')):.3f}): {out}")
    answer = generate(out, job.root, "scenes/000.png", "What is in the picture?", tokens="cls,patch:9,obj:5")
    echo(f"  masktok generate ... --image-id scenes/000.png --tokens cls,patch:9,obj:5 -> {answer!r}")
