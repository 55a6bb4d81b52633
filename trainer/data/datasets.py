"""Training examples: a joined record -> (input ids, labels, composed visual tokens).

``ConversationDataset`` is map-style over the joined examples and reads images from Zarr
(the default: random access, exact resume). ``StreamingConversations`` streams the
WebDataset shards and yields every example of each image as the image comes by, with the
text-only examples mixed in (each split over ranks and DataLoader workers). Both apply the
same template and composition, so they give identical items for the same example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..visual.compose import VisualTokens, compose
from ..visual.scaling import CacheStats
from ..visual.token_spec import TokenSpec
from . import templates
from .order import epoch_rng, grouped_batches
from .readers import WdsImages, ZarrImages, consumer, split_for_worker
from .records import Example


@dataclass(frozen=True)
class ItemBuilder:
    """Everything needed to turn an example and its image record into a training item."""

    stage: int
    tokenizer: Any
    spec: TokenSpec
    scaling: str = "none"
    stats: CacheStats | None = None
    max_length: int = 2048

    def __call__(self, example: Example, record: dict[str, Any] | None) -> dict[str, Any]:
        visual = compose(record, self.spec, self.scaling, self.stats) if record is not None else None
        ids, labels = templates.build(self.stage, example.conversations, self.tokenizer, visual is not None)
        if visual is None:  # a text-only record: a stray sentinel would have nowhere to go
            keep = [i for i, t in enumerate(ids) if t != templates.IMAGE_TOKEN_INDEX]
            ids, labels = [ids[i] for i in keep], [labels[i] for i in keep]
        budget = self.max_length - (len(visual) - 1 if visual is not None else 0)
        ids, labels = ids[:budget], labels[:budget]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "visual": visual}


class ConversationDataset(Dataset):
    """Map-style: item i is examples[i], its image read from the Zarr cache."""

    def __init__(self, examples: list[Example], images: ZarrImages, build: ItemBuilder) -> None:
        self.examples, self.images, self.build = examples, images, build

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        return self.build(ex, self.images[ex.row] if ex.row is not None else None)

    def blocks(self) -> list[int]:
        """The Zarr chunk of each example, for chunk-local shuffling; each text-only example
        is a block of its own (-1, -2, ...), so they scatter over the epoch."""
        return [-1 - i if ex.row is None else ex.row // self.images.chunk_rows for i, ex in enumerate(self.examples)]


class StreamingConversations(IterableDataset):
    """Streaming: each image's examples as the image comes by (``WdsImages``: shards shuffled
    per epoch, a shuffle buffer), with this consumer's share of the text-only examples mixed
    in at random places (seeded per epoch and consumer), so they spread over the epoch as in
    a global shuffle instead of piling up at its end.

    ``group_batch`` (the per-rank batch size): LLaVA-1.5's ``group_by_modality_length`` for a
    stream: examples wait in a window of ``GROUP_WINDOW`` batches, which is cut into batches
    of one modality, sorted by length, emitted in a random order (trainer/data/order.py).
    """

    GROUP_WINDOW = 16

    def __init__(self, examples: list[Example], images: WdsImages, build: ItemBuilder,
                 group_batch: int | None = None) -> None:
        self.images, self.build, self.group_batch = images, build, group_batch
        self.by_row: dict[int, list[Example]] = {}
        self.text_only: list[Example] = []
        for ex in examples:
            if ex.row is None:
                self.text_only.append(ex)
            else:
                self.by_row.setdefault(ex.row, []).append(ex)
        self.image_examples = len(examples) - len(self.text_only)

    def set_epoch(self, epoch: int) -> None:
        self.images.set_epoch(epoch)

    def _pairs(self, rng: np.random.Generator) -> Iterator[tuple[Example, dict[str, Any] | None]]:
        """(example, its image record or None) in stream order, text-only ones mixed in: before
        each image example, a text-only one comes with probability (text left) / (text left +
        image examples left, as expected for this consumer)."""
        text = split_for_worker(self.text_only, self.images.rank, self.images.world)
        text = [text[i] for i in rng.permutation(len(text))]
        _, consumers = consumer(self.images.rank, self.images.world)
        images_left = -(-self.image_examples // consumers)
        t = 0
        for record in self.images:
            for ex in self.by_row.get(record["index"], ()):
                while t < len(text) and rng.random() * (len(text) - t + max(images_left, 1)) < len(text) - t:
                    yield text[t], None
                    t += 1
                yield ex, record
                images_left -= 1
        for ex in text[t:]:
            yield ex, None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        me, _ = consumer(self.images.rank, self.images.world)
        rng = epoch_rng(self.images.seed, self.images.epoch, me)
        pairs = self._pairs(rng)
        if not self.group_batch:
            for ex, record in pairs:
                yield self.build(ex, record)
            return
        window: list[tuple[Example, Any]] = []
        for pair in pairs:
            window.append(pair)
            if len(window) >= self.group_batch * self.GROUP_WINDOW:
                ready, window = grouped_batches(window, self.group_batch, rng, final=False)
                yield from (self.build(ex, record) for ex, record in ready)
        ready, _ = grouped_batches(window, self.group_batch, rng, final=True)
        yield from (self.build(ex, record) for ex, record in ready)


def collate(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad ids (with ``pad_id``) and labels (with -100); visual tokens stay a list."""
    n = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), templates.IGNORE_INDEX, dtype=torch.long)
    lengths = torch.tensor([len(it["input_ids"]) for it in items])
    for b, it in enumerate(items):
        ids[b, : len(it["input_ids"])] = it["input_ids"]
        labels[b, : len(it["labels"])] = it["labels"]
    visual: list[VisualTokens | None] = [it["visual"] for it in items]
    return {"input_ids": ids, "labels": labels, "lengths": lengths, "visual": visual}
