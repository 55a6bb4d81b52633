"""`masktok ask`: a trained checkpoint's answers about pictures no job has planned.

The job spec's stages run in this process through the stage chain a job's Ray actors run
(``stages/chain.py``: the same builders and the same per-batch error handling), with no Ray
and no job directory; each finished image becomes the record a cache row would hold
(``stages/write.shard_rows``, then ``trainer/readers.row_record``: float16 tokens, as
stored), so its visual tokens, composed as training composed them, are those ``generate``
reads from a cache built with that spec. The models load once; the tokens of an image are
computed once, however many questions. Answers come from the one generation path
(generation.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..schemas.commits import STAGE_SECONDS
from ..schemas.errors import CacheError, DataError
from ..schemas.record import VERSION, tensors_of
from ..schemas.spec import JobSpec
from ..stages.decode import IMAGE_SUFFIXES
from .generation import GenerationModel, generate_answer, load_generation_model


def image_paths(given: tuple[Path, ...]) -> list[Path]:
    """The pictures named: files as given, a folder's image files in name order."""
    out: list[Path] = []
    for path in given:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            out.append(path)
        else:
            raise DataError(f"no such image: {path}")
    if not out:
        raise DataError(f"no image files in {', '.join(map(str, given))}")
    return out


class PictureTokens:
    """The stages of ``spec`` in this process: records of pictures, models loaded once."""

    def __init__(self, spec: JobSpec, device: str | None, tiny_home: Path) -> None:
        from ..stages.chain import build_chain
        from ..stages.checkpoints import resolve_checkpoints, token_dims

        self.spec, self.dims = spec, token_dims(spec)
        # absolute paths under the file system's root: the decode stage's containment check holds
        self.stages = build_chain(spec, "/", resolve_checkpoints(spec, tiny_home), device)
        self.seconds: dict[str, float] = {}

    def records(self, paths: list[Path]) -> list[dict[str, Any]]:
        """One record per path, in order: the cache row's record, or ``{"error": ...}``."""
        from ..stages.chain import run_chain
        from ..stages.write import shard_rows
        from ..trainer.data.readers import row_record

        items = [{"index": i, "image_id": str(p), "path": str(p.resolve())} for i, p in enumerate(paths)]
        items = sorted(run_chain(self.stages, items), key=lambda item: item["index"])
        for item in items:
            for name, seconds in item.pop(STAGE_SECONDS, {}).items():
                self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        out = []
        for item in items:
            if "error" in item:
                out.append({"error": item["error"]})
                continue
            grid = self.spec.write.patch_grid
            rows = shard_rows([{**item, "index": 0}], 0, 1, self.dims, VERSION, grid)
            out.append(row_record(item["index"], lambda n: rows[n][0], lambda n: rows[n][0],
                                  tensors_of(VERSION, grid), self.dims.K))
        return out


class Asker:
    """A checkpoint ready to answer: its model, template and token spec, checked against
    the widths of the spec's models."""

    def __init__(self, checkpoint: Path, spec: JobSpec, dims: dict[str, int], tokens: str | None, device: str) -> None:
        self.gm: GenerationModel = load_generation_model(checkpoint, device)
        trained = self.gm.dims
        if {k: trained[k] for k in ("C", "D")} != {k: dims[k] for k in ("C", "D")}:
            raise CacheError(f"the checkpoint {checkpoint} was trained on tokens of widths C={trained['C']}, "
                             f"D={trained['D']}; the spec's models give C={dims['C']}, D={dims['D']}: ask with the "
                             "spec of the job it was trained from")
        self.spec = self.gm.token_spec(tokens)
        if self.spec.iou is not None:
            from ..trainer.visual.refilter import require_refilterable

            require_refilterable(VERSION, spec.filter.model_dump(), "the spec's tokens")
        from ..trainer.visual.token_spec import require_patches

        require_patches(self.spec, spec.write.patch_grid, "the spec's tokens")
        self.stage = self.gm.stage

    def answer(self, record: dict[str, Any], question: str, max_new_tokens: int) -> str:
        return generate_answer(self.gm, record, question, self.spec, max_new_tokens)


def chat(asker: Asker, record: dict[str, Any], read: Callable[[], str | None], write: Callable[[str], None],
         max_new_tokens: int) -> int:
    """Question after question about one image until an empty line or the end of input;
    returns how many were answered."""
    answered = 0
    while (question := read()) is not None and question.strip():
        write(asker.answer(record, question.strip(), max_new_tokens))
        answered += 1
    return answered
