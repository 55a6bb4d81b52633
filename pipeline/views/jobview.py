"""Read one image's results back from a finished (or partly finished) job directory.

`masktok inspect` and `masktok report` look at what the pipeline stored; this module is
the one place that turns "an image id or a manifest index" into its record: the Zarr row,
its failure (if any), the decoded image and its masks. Every problem a user can cause (an
unknown id, an index out of range, a job that was never run, an image whose shard is not
committed yet) is a ``MasktokError`` (mostly :class:`InspectError`) with one line saying
what to do.

Masks: with ``write.rle_masks = true`` they are read from the sample's ``masks.json`` in the
WebDataset shard (same rows as Zarr; ``stages.batch.decode_masks`` decodes them). Otherwise
:func:`recompute_masks` runs the job's front stages (decode -> detect/segment or tiles ->
background -> filter) on that one image with the job's own checkpoints; the stages are
deterministic on one machine, so the rows match the stored ones, and
:func:`recompute_masks` checks this on the boxes and says so when they differ.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...schemas.errors import InspectError
from ...schemas.jobdir import JobDir
from ...schemas.storage import open_zarr
from ...stages.batch import decode_masks

#: Arrays of one Zarr row the pictures need (object_tokens only for --maps).
RECORD_ARRAYS = ("status", "width", "height", "num_objects", "boxes", "scores", "keep_rank", "inversion_loss",
                 "patch_norm_mean", "patch_norm_std")

@dataclass
class ImageRecord:
    """One manifest row and what the job stored for it (object arrays cut to num_objects)."""

    index: int
    image_id: str
    path: str
    shard: int
    status: int
    width: int
    height: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    failure: dict[str, str] | None = None

    @property
    def num_objects(self) -> int:
        return int(self.arrays.get("num_objects", 0))

    def rows(self, name: str) -> np.ndarray:
        """Per-object array ``name`` with only the valid rows (background last)."""
        return self.arrays[name][: self.num_objects]


def resolve_index(jd: JobDir, image: str | None, index: int | None) -> int:
    """Manifest index of an image given by id, by ``--index`` or by an all-digit argument.

    An argument made only of digits is an index unless the manifest holds an image with
    exactly that id (a folder corpus may name a file ``123``): the id wins.
    """
    from ...schemas.manifest import read_manifest

    ids = read_manifest(jd.manifest, columns=["image_id"]).column("image_id").to_pylist()
    if index is None and image is not None and image in ids:
        return ids.index(image)
    if index is None and image is not None and image.isdigit():
        index = int(image)
    if index is not None:
        if not 0 <= index < len(ids):
            raise InspectError(f"index {index} is out of range: the manifest has {len(ids)} images (0..{len(ids) - 1})")
        return index
    if image is None:
        raise InspectError("give an IMAGE_ID or --index N")
    close = [i for i in ids if image in i][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else " (ids are paths relative to the image root)"
    raise InspectError(f"no image {image!r} in {jd.manifest}{hint}")


def committed_rows(jd: JobDir) -> dict[int, dict[str, Any]]:
    """Commits by shard; a job with no commit at all is an error (it was never run)."""
    from ...schemas.commits import valid_commits

    commits = valid_commits(jd)
    if not commits or not jd.tokens.exists():
        raise InspectError(f"{jd.root} has no results yet (no committed shard): run `masktok run {jd.root}` first")
    return commits


def load_record(jd: JobDir, index: int, tokens: bool = False) -> ImageRecord:
    """The stored record of manifest row ``index``; a pending image is an error."""
    from ...schemas.manifest import read_manifest
    from ...schemas.record import Status

    row = read_manifest(jd.manifest, columns=["index", "image_id", "path", "shard"]).slice(index, 1).to_pylist()[0]
    commits = committed_rows(jd)
    if row["shard"] not in commits:
        raise InspectError(f"image {row['image_id']!r} (index {index}) is pending: its shard {row['shard']} "
                           f"has no commit yet (run `masktok run {jd.root}`)")
    group = open_zarr(jd.tokens, mode="r")
    names = RECORD_ARRAYS + (("object_tokens",) if tokens else ())
    arrays = {name: np.asarray(group[name][index]) for name in names}
    failure = next((f for f in commits[row["shard"]]["failures"] if f["index"] == index), None)
    return ImageRecord(index=index, image_id=row["image_id"], path=row["path"], shard=row["shard"],
                       status=int(arrays["status"]), width=int(arrays["width"]), height=int(arrays["height"]),
                       arrays=arrays, failure=failure if int(arrays["status"]) == Status.FAILED else None)


@contextmanager
def shard_tar(jd: JobDir, shard: int) -> Iterator[tarfile.TarFile]:
    """The shard's WebDataset tar, open for reading (local or on object storage). A tar that
    cannot be read (truncated, corrupt, a member that is no JSON) is one line naming it and
    the repair, whatever the caller was reading."""
    path = jd.wds_path(shard)
    try:
        with path.open("rb") as fh, tarfile.open(fileobj=fh) as tar:
            yield tar
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise InspectError(f"{path} cannot be read ({type(exc).__name__}: {exc}): it is damaged; `masktok verify "
                           f"{jd.root} --repair` uncommits its shard and the next run writes it again") from None


def stored_masks(jd: JobDir, record: ImageRecord) -> list[dict] | None:
    """The COCO RLEs of ``record`` from its WebDataset sample, or None when not stored."""
    from ...schemas.record import sample_key

    path = jd.wds_path(record.shard)
    if not path.exists():
        return None
    name = f"{sample_key(record.index)}.masks.json"
    with shard_tar(jd, record.shard) as tar:
        try:
            member = tar.getmember(name)
        except KeyError:
            return None
        return json.loads(tar.extractfile(member).read())


def read_image(spec: Any, record: ImageRecord) -> np.ndarray:
    """The image as the decode stage saw it (EXIF, alpha, 16-bit rules applied): uint8 RGB."""
    from ...stages.decode import DecodeError, decode_image

    try:
        return decode_image(record.path, spec.corpus.image_root, spec.decode.max_pixels, spec.decode.mode)
    except DecodeError as exc:
        raise InspectError(f"cannot read {record.image_id!r} again: {exc}") from None


def recompute_masks(jd: JobDir, spec: Any, record: ImageRecord) -> tuple[np.ndarray, str]:
    """Masks of ``record`` from the job's front stages, and a note on how well they match.

    Used when the job did not store masks (``write.rle_masks = false``). Loads the job's
    detector/SAM (real ones can take a while on a CPU) and runs them on this image alone.
    """
    from ...stages.checkpoints import resolve_checkpoints
    from ...stages.topology import front_stages, run_stages

    stages = front_stages(spec, spec.corpus.image_root, resolve_checkpoints(spec, jd.models), device="cpu")
    item = run_stages(stages, [{"index": record.index, "image_id": record.image_id, "path": record.path}])[0]
    if "error" in item:
        raise InspectError(f"recomputing the masks of {record.image_id!r} failed: {item['error']['reason']}")
    masks = decode_masks(item["masks"])
    boxes = np.asarray(item["boxes"], np.float32)
    same = len(boxes) == record.num_objects and np.allclose(boxes, record.rows("boxes"), atol=1.0)
    note = ("masks recomputed by the front stages (not stored by this job); boxes match the stored ones" if same else
            "masks recomputed by the front stages (not stored) DIFFER from the stored boxes: treat them with care")
    return masks, note
