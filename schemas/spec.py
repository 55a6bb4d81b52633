"""The job spec: what a job computes and how it is run, typed and validated.

A spec is TOML. Every table and key is declared below; an unknown key or a value of the
wrong type is a `SpecError` naming the dotted key (``detect.top_k``). Defaults are the
paper's settings (Deformable-DETR top 100 boxes, SAM ViT-H, CLIP ViT-L/14-336).

Checkpoint paths may name environment variables as ``${VAR}``; they are expanded when a
job is planned, so ``job.toml`` holds the paths the job really used. The value ``"tiny"``
selects the project's tiny randomly initialised preset of that model (tests, demo).

Which fields change results: everything except the ``job`` table (name, description), the
``resources`` sub-table of each stage (actors, CPUs, GPUs, batch size) and ``invert.kernel``
(which implementation computes LeGrad's relevance: the same sums in another order, a
difference at the rounding level, as a different batch grouping or GPU gives), which only
decide how fast a job runs. Those are left out of the fingerprint, so a job planned before
``invert.kernel`` existed keeps its fingerprint and may resume with any kernel.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError
from .versions import MANIFEST_SCHEMA_VERSION, RECORD_SCHEMA_VERSION, SPEC_VERSION

# llava-eval: a LLaVA-1.5 evaluation question file (JSON Lines), pipeline/corpus.py scan_llava_eval.
CorpusKind = Literal["llava-pretrain", "llava-instruct", "llava-eval", "folder"]
CORPUS_KINDS: tuple[str, ...] = get_args(CorpusKind)
TINY = "tiny"
_NOT_IN_FINGERPRINT = {"job", "resources", "meta"}
#: ``actors = "auto"``: the pool is sized from the cluster at the start of a run (pipeline/pools.py).
AUTO = "auto"
#: Speed settings inside a section: (section, key) left out of the fingerprint at any value.
_SPEED_ONLY = {("invert", "kernel")}


class _Section(BaseModel):
    # strict: TOML is typed, so "5" is not an integer; floats still accept integers.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _partial_tables_keep_defaults(cls, data: Any) -> Any:
        """A table given in part (``[detect.resources] actors = 4``) keeps this section's
        defaults for the keys it leaves out, not the sub-table class's generic ones."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            if isinstance(field.default, BaseModel) and isinstance(data.get(name), dict):
                merged[name] = {**field.default.model_dump(), **data[name]}
        return merged


class Resources(_Section):
    """How one stage is scheduled on Ray. Never changes results."""

    # "auto": sized from the Ray cluster at the start of each run (pipeline/pools.py); an
    # integer: exactly that many actors, a fixed pool
    actors: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        AUTO, description="concurrent actors of this stage: an integer, or auto (sized from the cluster)")
    cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor (fractions allowed)")
    gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractions pack stages on one GPU)")
    batch_size: int = Field(4, ge=1, description="images per batch handed to the stage")
    memory_gb: float | None = Field(None, gt=0, description="host memory per actor declared to Ray (GB), "
                                    "so a node gets no more actors than its memory holds; none: not declared")

    @field_validator("actors", mode="before")
    @classmethod
    def _integer_or_auto(cls, value: Any) -> Any:
        """One readable error for both forms (the union's own errors name its branches)."""
        if value == AUTO or (type(value) is int and value >= 1):
            return value
        raise ValueError(f'expected an integer >= 1 or "{AUTO}"')

    @property
    def auto(self) -> bool:
        """Sized from the cluster at each run (pipeline/pools.py)."""
        return self.actors == AUTO

    @property
    def first_actors(self) -> int:
        """The actors the pool starts with before the cluster is known: its integer, 1 for auto."""
        return 1 if self.auto else self.actors


class JobInfo(_Section):
    name: str = "masktok-job"
    description: str = ""


class CorpusSpec(_Section):
    kind: CorpusKind = "folder"
    source: str = ""
    image_root: str = ""
    check_files: bool = True
    sample: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, description="seeds --sample and the manifest row order")


class ShardSpec(_Section):
    size: int = Field(1000, ge=1)


#: How pixels are decoded (stages/decode.py): "llava" = LLaVA-1.5's Image.open(p).convert("RGB");
#: "careful" = EXIF orientation applied, alpha composited on white, 16-bit grey scaled by 1/257.
DecodeMode = Literal["llava", "careful"]


class DecodeSpec(_Section):
    max_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb guard")
    # the default is what every job planned before the field existed did (see fingerprint())
    mode: DecodeMode = Field("careful", description="llava: LLaVA-1.5's convert('RGB'); careful: upright, alpha on white")
    resources: Resources = Resources(cpus=1.0, batch_size=16)


#: Of a model stage's forward (stages/precision.py). The default, tf32, is fp32 on a CPU; on a GPU
#: it is within fp32's noise floor for every stage where bf16 is not (docs/scale.md "Precision").
Precision = Literal["fp32", "tf32", "bf16"]
#: invert also takes bf16-operator: the LeGrad operator stored in bf16, fp32 steps
InvertPrecision = Literal["fp32", "tf32", "bf16", "bf16-operator"]


class DetectSpec(_Section):
    checkpoint: str = "${MASKTOK_DETR_CHECKPOINT}"
    top_k: int = Field(100, ge=1)
    # which top_k (stages/detect.py): "query", masktok's choice, each query once by its best class;
    # "query-class", Deformable-DETR's own post-processing, the top k query x class pairs (a query may
    # give several boxes). The paper says "the top 100 boxes" and neither which.
    selection: Literal["query", "query-class"] = "query"
    precision: Precision = "tf32"
    resources: Resources = Resources(gpus=1.0, batch_size=8)


class MasksSpec(_Section):
    source: Literal["sam", "boxes", "tiles"] = "sam"


class SegmentSpec(_Section):
    checkpoint: str = "${MASKTOK_SAM_CHECKPOINT}"
    model_type: Literal["vit_h", "vit_l", "vit_b", "tiny"] = "vit_h"
    precision: Precision = "tf32"
    resources: Resources = Resources(gpus=1.0, batch_size=4)


class FilterSpec(_Section):
    iou_threshold: float = Field(0.8, gt=0, le=1)
    max_objects: int | None = Field(None, ge=1)
    # CPU actors between the mask models and invert: background, filter, masks into the CLIP frame
    resources: Resources = Resources(cpus=1.0, batch_size=4)


class InvertSpec(_Section):
    model: str = "ViT-L-14-336-quickgelu"  # OpenAI weights use QuickGELU
    checkpoint: str = "${MASKTOK_CLIP_CHECKPOINT}"
    iterations: int = Field(10, ge=1)
    lr: float = Field(0.5, gt=0)
    alpha: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    layer_index: int = -1
    precision: InvertPrecision = "tf32"
    # how the image meets CLIP's square (stages/model_inputs.py): LLaVA-1.5's "pad" (expand2square),
    # or "crop", the centre crop of LLaVA-1.5's release scripts for ScienceQA and MM-Vet (docs/eval.md)
    framing: Literal["pad", "crop"] = "pad"
    # LeGrad's clamped relevance (stages/legrad.py relevance_function): "auto" = the fused Triton
    # kernel on CUDA, the torch path elsewhere; "triton" where it cannot run is refused. Speed only.
    kernel: Literal["auto", "torch", "triton"] = "auto"
    resources: Resources = Resources(gpus=1.0, batch_size=4)


class WriterResources(Resources):
    """The shard writers' resources (pipeline/writers.py): CPU actors; ``batch_size`` is
    not used (a writer takes what the last stage hands it)."""

    gpus: float = Field(0.0, ge=0, le=0, description="shard writers use no GPU")


class WriteSpec(_Section):
    """``patch_grid``: the finest patch grid the cache keeps. 6: the 6x6 grid only (36 tokens,
    the paper's training input); 12: also the 12x12 grid (``patch_tokens_144``, +288 bytes x C
    per image raw), from which a token spec pools exactly to 144 and 16 (schemas/record.py)."""

    webdataset: bool = True
    rle_masks: bool = False
    patch_grid: Literal[6, 12] = 6
    resources: WriterResources = WriterResources(cpus=1.0)


class JobSpec(_Section):
    """The whole spec. Tables mirror the stages of the pipeline."""

    version: int = SPEC_VERSION
    job: JobInfo = JobInfo()
    corpus: CorpusSpec = CorpusSpec()
    shards: ShardSpec = ShardSpec()
    decode: DecodeSpec = DecodeSpec()
    detect: DetectSpec = DetectSpec()
    masks: MasksSpec = MasksSpec()
    segment: SegmentSpec = SegmentSpec()
    filter: FilterSpec = FilterSpec()
    invert: InvertSpec = InvertSpec()
    write: WriteSpec = WriteSpec()


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, f"{prefix}{name}.")
    return keys


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        near = difflib.get_close_matches(key, _known_keys(JobSpec), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return f"unknown key '{key}'{hint}"
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")  # a validator's own message, as written
    return f"'{key}': {msg[:1].lower() + msg[1:]}, got {type(value).__name__} {value!r}"


def spec_from_dict(data: dict[str, Any], origin: str = "job spec") -> JobSpec:
    """Validate a parsed TOML document; one clear line per problem, first problem first."""
    data = {k: v for k, v in data.items() if k != "meta"}
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(f"{origin}: {problems[0]}{more}") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:  # a Path or a UPath
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None


def load_spec(path: Path) -> JobSpec:
    return spec_from_dict(read_toml(path), origin=str(path))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``key.sub=value`` -> (["key", "sub"], value); the value is read as a TOML value
    (``5``, ``0.7``, ``true``, ``"x"``) and taken as a plain string if it is not one."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected key=value, e.g. detect.top_k=50")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", key):
        raise SpecError(f"--set {item!r}: {key!r} is not a dotted spec key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def set_value(data: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in a spec document in place, creating tables on the way."""
    *tables, last = key.split(".")
    node = data
    for part in tables:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"cannot set {key!r}: '{part}' is a value, not a table")
    node[last] = value


def apply_overrides(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Return a copy of a spec document with ``--set key=value`` items applied."""
    out = copy.deepcopy(data)
    for item in items:
        path, value = parse_override(item)
        set_value(out, ".".join(path), value)
    return out


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(spec: JobSpec, environ: dict[str, str] | None = None) -> JobSpec:
    """Replace ``${VAR}`` in the checkpoint paths; an unset variable is a SpecError."""
    env = os.environ if environ is None else environ
    updates: dict[str, Any] = {}
    for section in ("detect", "segment", "invert"):
        value = getattr(spec, section).checkpoint

        def sub(m: re.Match[str], key: str = f"{section}.checkpoint") -> str:
            if m.group(1) not in env:
                raise SpecError(
                    f"'{key}' refers to ${{{m.group(1)}}}, which is not set: set it, "
                    f"or pass --set {key}=PATH (or use --spec demo for the tiny models)"
                )
            return env[m.group(1)]

        updates[section] = getattr(spec, section).model_copy(
            update={"checkpoint": _ENV_REF.sub(sub, value)}
        )
    return spec.model_copy(update=updates)


def _results_view(value: Any, top: bool = True) -> Any:
    if isinstance(value, dict):
        view = {k: _results_view(v, False) for k, v in value.items() if k not in _NOT_IN_FINGERPRINT}
        if top:
            for section, key in _SPEED_ONLY:
                view.get(section, {}).pop(key, None)
        return view
    return value


#: Fields added after jobs were planned without them, with the value those jobs ran with: the
#: hash leaves such a field out at that value, so an older job's fingerprint (and its resume)
#: stays valid, while any other value changes the hash.
_ADDED_LATER = {("decode", "mode"): "careful", ("invert", "framing"): "pad", ("detect", "selection"): "query",
                ("write", "patch_grid"): 6}


def fingerprint(spec: JobSpec) -> str:
    """A stable hash of every field that changes results (and of the output schemas)."""
    view = _results_view(spec.model_dump(mode="json"))
    for (section, key), old in _ADDED_LATER.items():
        if view.get(section, {}).get(key) == old:
            del view[section][key]
    view["schemas"] = {"record": RECORD_SCHEMA_VERSION, "manifest": MANIFEST_SCHEMA_VERSION}
    canonical = json.dumps(view, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def fingerprint_diff(old: dict[str, Any], new: JobSpec) -> list[str]:
    """Dotted keys whose result-changing values differ between a stored spec and a new one."""
    a = _flatten(_results_view(spec_from_dict(old).model_dump(mode="json")))
    b = _flatten(_results_view(new.model_dump(mode="json")))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def spec_to_toml(spec: JobSpec, meta: dict[str, Any] | None = None, header: str = "") -> str:
    """The resolved spec as TOML (``None`` values left out: absent means unset)."""
    doc = spec.model_dump(mode="json", exclude_none=True)
    if meta:
        doc = {"meta": meta, **doc}
    return header + tomli_w.dumps(doc)
