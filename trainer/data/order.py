"""The order examples are trained in: LLaVA's (a seeded global shuffle per epoch) and,
optionally, LLaVA-1.5's ``group_by_modality_length``.

LLaVA-1.5's scripts set ``group_by_modality_length``: image examples and text-only examples
never share a batch, and examples of similar length do (less padding). Its recipe, written
here from its description: shuffle each modality, cut it into megabatches of ``world x
batch`` examples, sort each megabatch by length, shuffle the full megabatches of both
modalities together, and put the two partial ones last, merged. A rank then takes every
``world``-th example of the order (the split of trainer/parallel/distributed.py), which hands each
rank ``batch`` examples of the same megabatch per step: one modality, similar lengths.
(LLaVA balances the ranks' total lengths exactly; the strided split balances them roughly.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .records import Example

_ORDER_TAG = 0x0DE5  # names this use of the seed (and is never a trailing zero)


def epoch_rng(seed: int, epoch: int, *more: int) -> np.random.Generator:
    """The generator of one epoch's order (``more``: e.g. the consumer of a stream).

    numpy's SeedSequence ignores trailing zeros, so without the tag (seed, epoch 0) would be
    ``default_rng(seed)``: the generator that lays out the manifest's rows (pipeline/plan.py),
    and epoch 0's permutation would undo the manifest's, one source after another.
    """
    return np.random.default_rng([seed, epoch, *more, _ORDER_TAG])


def example_length(example: Example) -> int:
    """Words of the conversation, as LLaVA's ``modality_lengths`` counts them (a cheap proxy
    for tokens: no tokenizer needed)."""
    return sum(len(str(turn.get("value", "")).split()) for turn in example.conversations)


def example_lengths(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """(length, has_image) of each example."""
    return (np.array([example_length(ex) for ex in examples], dtype=np.int64),
            np.array([ex.row is not None for ex in examples], dtype=bool))


def grouped_batches(pairs: list[tuple[Example, Any]], batch: int, rng: np.random.Generator,
                    final: bool) -> tuple[list[tuple[Example, Any]], list[tuple[Example, Any]]]:
    """The streaming form of the grouping, for a window of (example, record) pairs:
    (the window's full batches, each of one modality and sorted by length, in a random
    order; what is left). With ``final`` the partial batches are emitted too, last."""
    out: list[list[tuple[Example, Any]]] = []
    rest: list[tuple[Example, Any]] = []
    for image in (True, False):
        members = sorted((p for p in pairs if (p[0].row is not None) == image),
                         key=lambda p: -example_length(p[0]))
        cut = len(members) - len(members) % batch
        out += [members[i:i + batch] for i in range(0, cut, batch)]
        rest += members[cut:]
    batches = [out[i] for i in rng.permutation(len(out))]
    if final and rest:
        batches.append(rest)
        rest = []
    return [p for b in batches for p in b], rest


def modality_length_grouped(lengths: np.ndarray, has_image: np.ndarray, batch: int, world: int,
                            rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(len(lengths))`` grouped by modality and length (see the module
    docstring). Deterministic for a given ``rng`` state."""
    mega = batch * world
    full: list[np.ndarray] = []
    partial: list[np.ndarray] = []
    for members in (np.flatnonzero(has_image), np.flatnonzero(~has_image)):
        shuffled = members[rng.permutation(len(members))]
        for start in range(0, len(shuffled), mega):
            chunk = shuffled[start:start + mega]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            (full if len(chunk) == mega else partial).append(chunk)
    order = [full[i] for i in rng.permutation(len(full))]
    if partial:
        order.append(np.concatenate(partial))
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
