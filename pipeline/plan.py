"""Planning a job: corpus -> checked, deduplicated, shuffled manifest + resolved job.toml.

The same inputs always give the same manifest: the unique image ids are sorted, a
``--sample`` is drawn from them with the spec's seed (``corpus.seed``), they are laid out in
a permutation seeded the same way, and shards are consecutive row ranges. The permutation
makes every shard a uniform sample of the corpus: in id order a shard of LLaVA-Instruct
would hold one source folder (coco, gqa, ocr_vqa, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..schemas.eval_files import carries_pictures
from ..schemas import manifest as manifest_schema
from ..schemas.errors import ManifestError, PlanError, SpecError
from ..schemas.jobdir import JobDir
from ..schemas.spec import CORPUS_KINDS, JobSpec, expand_env, fingerprint, fingerprint_diff, read_toml, spec_to_toml
from ..schemas.storage import check_bucket, remove_tree
from ..schemas.versions import MANIFEST_SCHEMA_VERSION, RECORD_SCHEMA_VERSION
from .corpus import EXAMPLES_KEPT, CorpusScan, scan_folder, scan_llava, scan_llava_eval
from ..schemas.durable import write_atomic
from .lock import run_lock

JOB_TOML_HEADER = (
    "# masktok job: the resolved spec this job runs with, written by `masktok plan`.\n"
    "# Do not edit: plan again (with --force) to change it. [meta] is not part of the spec.\n\n"
)


@dataclass
class PlanSummary:
    kind: str
    source: str
    image_root: str
    records_read: int
    text_only: int
    invalid: int
    invalid_examples: list[str]
    rejected: int
    rejected_examples: list[str]
    duplicate_references: int
    unique_images: int
    missing: int | None  # None: existence not checked
    missing_examples: list[str] = field(default_factory=list)
    sampled: int | None = None
    planned_images: int = 0
    shards: int = 0
    shard_size: int = 0
    outcome: str = "planned"  # planned | unchanged | replanned | repaired (a damaged manifest written again)

    def lines(self) -> list[str]:
        def row(label: str, value: str, examples: list[str] = ()) -> str:
            text = f"  {label:<30}{value:>10}"
            return text + (f"   e.g. {'; '.join(examples[:3])}" if examples else "")

        out = [f"masktok plan: {self.kind} corpus {self.source}", f"  image root: {self.image_root}"]
        out.append(row("records read", f"{self.records_read:,}"))
        if self.kind != "folder" and (self.kind != "llava-eval" or self.text_only):  # ScienceQA has some
            out.append(row("text-only records (skipped)", f"{self.text_only:,}"))
        if self.kind != "folder":
            out.append(row("invalid records (skipped)", f"{self.invalid:,}", self.invalid_examples))
        out.append(row("paths rejected", f"{self.rejected:,}", self.rejected_examples))
        if self.kind != "folder":
            out.append(row("duplicate image references", f"{self.duplicate_references:,}"))
        out.append(row("unique images", f"{self.unique_images:,}"))
        if self.missing is None:
            out.append(f"  {'missing files':<30}not checked (corpus.check_files = false)")
        else:
            out.append(row("missing files", f"{self.missing:,}", self.missing_examples))
        if self.sampled is not None:
            out.append(row("sampled (--sample)", f"{self.sampled:,}"))
        out.append(row("shards", f"{self.shards:,}") + f"   of up to {self.shard_size:,} images")
        out.append(row("images planned", f"{self.planned_images:,}"))
        return out


def resolve_corpus(spec: JobSpec, jobdir: Path) -> JobSpec:
    """Absolute source and image root, checked to exist; env refs in checkpoints expanded. A
    question file that carries its pictures (MMBench's TSV) has the job's own folder
    (JobDir.eval_images) as its image root."""
    c = spec.corpus
    if not c.source:
        raise PlanError("no corpus source: pass --source PATH (or set corpus.source)")
    source = Path(c.source).expanduser().absolute()
    if not source.exists():
        raise PlanError(f"corpus source not found: {source}")
    if c.kind == "llava-eval" and carries_pictures(source) and not source.is_dir():
        if JobDir(jobdir).remote:
            raise PlanError(f"{source.name} carries its pictures, which plan decodes into the job directory for the "
                            "stages to read: plan it into a local JOBDIR (or a mounted file system)")
        images = JobDir(jobdir).eval_images.expanduser().absolute()
        if c.image_root and Path(c.image_root).expanduser().absolute() != images:
            raise PlanError(f"{source.name} carries its pictures: leave out --image-root "
                            f"(plan decodes them into {images})")
        root = images
    elif c.kind == "folder":
        if not source.is_dir():
            if source.suffix.lower() in (".json", ".jsonl"):  # corpus.kind's default is folder: say what to pass
                raise PlanError(f"{source.name} is a JSON corpus, but corpus.kind is 'folder' (the default): pass "
                                f"--corpus {'|'.join(k for k in CORPUS_KINDS if k != 'folder')}")
            raise PlanError(f"a folder corpus needs a directory, and {source} is a file")
        if c.image_root and Path(c.image_root).expanduser().absolute() != source:
            raise PlanError("a folder corpus is its own image root: leave out --image-root")
        root = source
    else:
        if source.is_dir():
            raise PlanError(f"a {c.kind} corpus is a JSON file, and {source} is a directory")
        if not c.image_root:
            raise PlanError(f"a {c.kind} corpus needs --image-root: the folder its 'image' paths are relative to")
        root = Path(c.image_root).expanduser().absolute()
        if not root.is_dir():
            raise PlanError(f"image root is not a directory: {root}")
    corpus = c.model_copy(update={"source": str(source), "image_root": str(root)})
    try:
        return expand_env(spec.model_copy(update={"corpus": corpus}))
    except SpecError as exc:
        raise PlanError(str(exc)) from None


def _scan(spec: JobSpec, progress: bool) -> CorpusScan:
    source = Path(spec.corpus.source)
    if spec.corpus.kind == "folder":
        return scan_folder(source)
    with tqdm(total=source.stat().st_size, unit="B", unit_scale=True, desc="reading corpus",
              disable=not progress, leave=False) as bar:
        if spec.corpus.kind == "llava-eval":  # MMBench's pictures go to its image root (resolve_corpus)
            return scan_llava_eval(source, on_read=bar.update, images_dir=Path(spec.corpus.image_root))
        return scan_llava(source, on_read=bar.update)


class _FileChecker:
    """Existence and containment of image files, with one realpath per directory."""

    def __init__(self, root: Path):
        self.root = root
        self.real_root = os.path.realpath(root)
        self._dir_ok: dict[str, bool] = {}

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root + os.sep)

    def problem(self, image_id: str) -> str | None:
        """None if the file is a regular file inside the root, else 'missing' or why not."""
        path = os.path.join(self.root, image_id)
        parent = os.path.dirname(path)
        if parent not in self._dir_ok:
            self._dir_ok[parent] = self._inside(os.path.realpath(parent))
        if not self._dir_ok[parent]:
            return "a symlinked folder leaves the image root"
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            if not self._inside(real):
                return "symlink leaves the image root"
            if not os.path.isfile(real):
                return "missing"
        elif not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        return None


def row_order(ids: list[str], seed: int) -> list[str]:
    """The manifest's rows: ``ids`` (sorted) in numpy's seeded permutation, which depends on
    nothing but the ids and the seed (no Python hash randomisation)."""
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def _sample(ids: list[str], n: int | None, seed: int) -> list[str]:
    if n is None or n >= len(ids):
        return ids
    picked = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return [ids[i] for i in sorted(picked)]


def _digest(ids: list[str], paths: list[str], rows: list[list[int]], shard_size: int) -> str:
    h = hashlib.sha256(f"{shard_size}\n".encode())
    h.update("\0".join(ids).encode())
    h.update("\0".join(paths).encode())
    h.update(np.fromiter((x for r in rows for x in (*r, -1)), np.int64).tobytes())
    return "sha256:" + h.hexdigest()


def plan_job(jobdir: Path, spec: JobSpec, *, force: bool = False, progress: bool = False) -> PlanSummary:
    """Plan ``spec`` into ``jobdir``; refuses to replace a different job unless ``force``."""
    spec = resolve_corpus(spec, jobdir)
    c = spec.corpus
    scan = _scan(spec, progress)
    if scan.records_read == 0:
        raise PlanError(f"empty corpus: {c.source} holds no {'images' if c.kind == 'folder' else 'records'}")

    root = Path(c.image_root)
    ids = sorted(scan.references)
    missing: int | None = None
    missing_examples: list[str] = []
    if c.check_files:
        checker, kept, missing = _FileChecker(root), [], 0
        for image_id in ids:
            problem = checker.problem(image_id)
            if problem is None:
                kept.append(image_id)
            elif problem == "missing":
                missing += 1
                if len(missing_examples) < EXAMPLES_KEPT:
                    missing_examples.append(repr(image_id))
            else:
                scan.note_rejected(image_id, problem)
        ids = kept
    unique = len(ids)
    ids = row_order(_sample(ids, c.sample, c.seed), c.seed)
    if not ids:
        raise PlanError(f"no images to plan in {c.source}: every record was text-only, invalid, rejected or missing")

    paths = [os.path.join(root, i) for i in ids]
    rows = [scan.references[i] for i in ids]
    size = spec.shards.size
    table = manifest_schema.build_table(ids, paths, rows, size)
    summary = PlanSummary(
        kind=c.kind, source=c.source, image_root=c.image_root, records_read=scan.records_read,
        text_only=scan.text_only, invalid=scan.invalid, invalid_examples=scan.invalid_examples,
        rejected=scan.rejected, rejected_examples=scan.rejected_examples,
        duplicate_references=sum(len(r) - 1 for r in scan.references.values() if r),
        unique_images=unique, missing=missing, missing_examples=missing_examples,
        sampled=len(ids) if c.sample is not None else None, planned_images=len(ids),
        shards=-(-len(ids) // size), shard_size=size,
    )
    _write_job(JobDir(jobdir), spec, table, _digest(ids, paths, rows, size), summary, force)
    return summary


def _write_job(jd: JobDir, spec: JobSpec, table, digest: str, summary: PlanSummary, force: bool) -> None:
    if jd.remote:
        check_bucket(jd.root)  # object storage: no folder to make, but the bucket must be there
    else:
        jd.root.mkdir(parents=True, exist_ok=True)
    with run_lock(jd.run_lock):  # never re-plan under a running job
        _replace_job(jd, spec, table, digest, summary, force)


def _readable(manifest: Any) -> bool:
    try:
        manifest_schema.read_manifest(manifest, columns=["index"])
        return True
    except ManifestError:
        return False


def _replace_job(jd: JobDir, spec: JobSpec, table, digest: str, summary: PlanSummary, force: bool) -> None:
    fp = fingerprint(spec)
    if jd.job_toml.exists():
        old = read_toml(jd.job_toml)
        old_meta = old.get("meta", {})
        if old_meta.get("fingerprint") == fp and old_meta.get("manifest_digest") == digest and jd.manifest.exists():
            if _readable(jd.manifest):
                summary.outcome = "unchanged"
                return
            # the same job whose manifest was damaged: these inputs give the same rows (the
            # digest), so it is written again and the shards committed for it stay valid
            write_atomic(jd.manifest, manifest_schema.encode_manifest(table))
            summary.outcome = "repaired"
            return
        if not force:
            try:
                changes = fingerprint_diff(old, spec)
            except SpecError:
                changes = ["job.toml was written by another masktok version"]
            if not changes:
                changes = ["the corpus now gives a different manifest"]
            raise PlanError(
                f"{jd.root} already holds a different job ({'; '.join(changes[:3])}"
                f"{' ...' if len(changes) > 3 else ''}): use another JOBDIR, or --force to replace it"
            )
        jd.job_toml.unlink()  # first: a re-plan killed halfway leaves no job to run
        for path in jd.results():
            remove_tree(path)
        summary.outcome = "replanned"
    meta = {
        "fingerprint": fp,
        "manifest_digest": digest,
        "images": summary.planned_images,
        "shards": summary.shards,
        "record_schema_version": RECORD_SCHEMA_VERSION,
        "manifest_schema_version": MANIFEST_SCHEMA_VERSION,
        "planned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # job.toml goes last: its presence says the plan is complete.
    write_atomic(jd.manifest, manifest_schema.encode_manifest(table))
    write_atomic(jd.plan_report, json.dumps(asdict(summary), indent=2).encode())
    write_atomic(jd.job_toml, spec_to_toml(spec, meta, JOB_TOML_HEADER).encode())
