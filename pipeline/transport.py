"""How an in-flight item travels through Ray Data between actor pools.

An item is a dict of the batch contract (``masktok.stages``) with ragged arrays and RLE
masks of any size. Its small values travel pickled, in one binary column (``item``); its
large arrays (the decoded image and the prepared model inputs, :data:`ARRAY_COLUMNS`) travel
as Ray Data tensor columns of their own: written into the object store once, read back by
the next actor as zero-copy, read-only views, where a pickled dict would copy every array
into and out of a bytes blob at every hop (benchmarks/bench_transport.py).

Each array column holds one array per row; a row without that array holds a zero-size
placeholder of the same dtype and rank (Ray Data needs one type per column), and the
pickled part names the arrays really present.
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

import numpy as np

Item = dict[str, Any]


class ArrayColumn(NamedTuple):
    dtype: type
    rank: int
    last_reader: str  # the stage that last reads it: after that stage it is not carried


#: Arrays that travel as tensor columns (batch contract, ``masktok.stages`` and
#: ``stages/prepare.py``). Any other value of an item is pickled.
ARRAY_COLUMNS: dict[str, ArrayColumn] = {
    "image": ArrayColumn(np.uint8, 3, "prepare"),
    "detector_pixels": ArrayColumn(np.uint8, 3, "detect"),
    "sam_pixels": ArrayColumn(np.uint8, 3, "segment"),
    "clip_pixels": ArrayColumn(np.uint8, 3, "invert"),
    "clip_masks": ArrayColumn(np.float32, 3, "invert"),
}
_PRESENT = "__arrays__"  # key of the pickled part: the array columns this item really has


def _column(arrays: list[np.ndarray]) -> np.ndarray:
    """One object array holding ``arrays`` as they are (no broadcasting of equal shapes)."""
    out = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        out[i] = array
    return out


def to_columns(items: list[Item], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A Ray Data numpy batch of ``items``: ``columns`` (keys of :data:`ARRAY_COLUMNS`) as
    tensor columns, everything else pickled in ``item``. Array keys not in ``columns`` are
    dropped (no later stage reads them)."""
    pickled, arrays = [], {name: [] for name in columns}
    for item in items:
        rest = {k: v for k, v in item.items() if k not in ARRAY_COLUMNS}
        rest[_PRESENT] = tuple(name for name in columns if name in item)
        pickled.append(pickle.dumps(rest, protocol=5))
        for name in columns:
            dtype, rank, _ = ARRAY_COLUMNS[name]
            arrays[name].append(np.asarray(item[name], dtype=dtype) if name in item else np.zeros((0,) * rank, dtype))
    return {"item": np.array(pickled, dtype=object), **{name: _column(a) for name, a in arrays.items()}}


def from_columns(batch: dict[str, Any]) -> list[Item]:
    """The items of a numpy batch written by :func:`to_columns` (arrays as read-only views)."""
    items = []
    for row, blob in enumerate(batch["item"]):
        item = pickle.loads(blob)
        for name in item.pop(_PRESENT):
            item[name] = batch[name][row]
        items.append(item)
    return items


def item_of(row: dict[str, Any]) -> Item:
    """One item from a row of the dataset (``Dataset.iter_rows``)."""
    return from_columns({name: [value] for name, value in row.items()})[0]
