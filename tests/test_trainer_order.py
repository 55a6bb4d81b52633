"""The order examples are trained in: a seeded shuffle per epoch that resumes mid-epoch,
LLaVA-1.5's group_by_modality_length for both readers, text-only examples spread over a
stream, and batches that mix the corpus' sources as a global shuffle does."""

from __future__ import annotations

import numpy as np
import pytest

from masktok.tiny.cache import CAPTIONS, write_corpus, write_tiny_cache
from masktok.trainer.data.datasets import ItemBuilder, StreamingConversations
from masktok.trainer.parallel.distributed import ResumableSampler
from masktok.trainer.data.order import example_lengths
from masktok.trainer.data.readers import WdsImages, ZarrImages
from masktok.trainer.data.records import Example, join_records, load_records
from masktok.trainer.visual.token_spec import parse_spec

N = 24


def _examples(n_image: int, n_text: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    words = lambda k: " ".join(["w"] * int(k))  # noqa: E731
    image = [Example([{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": words(rng.integers(1, 60))}],
                     row=i, image_id=f"img/{i}") for i in range(n_image)]
    text = [Example([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": words(rng.integers(1, 60))}],
                    row=None, image_id=None) for _ in range(n_text)]
    return image + text


@pytest.mark.parametrize("grouped", [False, True])
def test_each_epoch_has_its_seeded_order_and_a_resumed_epoch_continues_it(grouped: bool) -> None:
    examples = _examples(30, 11)
    group = (*example_lengths(examples), 4) if grouped else None
    sampler = ResumableSampler(len(examples), rank=1, world=2, seed=5, grouped=group)
    sampler.set_epoch(3)
    epoch3 = list(sampler)
    sampler.set_epoch(3, start=7)  # a run resumed after 7 examples of this rank's epoch
    assert list(sampler) == epoch3[7:]
    sampler.set_epoch(4)
    assert list(sampler) != epoch3
    again = ResumableSampler(len(examples), rank=1, world=2, seed=5, grouped=group)
    again.set_epoch(3)
    assert list(again) == epoch3
    both = [list(ResumableSampler(len(examples), rank=r, world=2, seed=5, grouped=group)) for r in range(2)]
    assert set(both[0]) | set(both[1]) == set(range(len(examples)))


def test_grouped_batches_hold_one_modality_and_similar_lengths() -> None:
    examples = _examples(70, 33)
    lengths, has_image = example_lengths(examples)
    world, batch = 2, 4
    ranks = [list(ResumableSampler(len(examples), rank=r, world=world, seed=1, grouped=(lengths, has_image, batch)))
             for r in range(world)]
    steps = len(ranks[0]) // batch
    full_megabatches = 70 // (world * batch) + 33 // (world * batch)
    for step in range(steps):
        for rank in ranks:
            chosen = rank[step * batch:(step + 1) * batch]
            if step < full_megabatches:  # the last, partial megabatch may mix (as LLaVA's)
                assert len(set(has_image[chosen])) == 1, (step, chosen)
                assert list(lengths[chosen]) == sorted(lengths[chosen], reverse=True)
    mixed_steps = sum(len({has_image[i] for i in ranks[0][s * batch:(s + 1) * batch]}) > 1 for s in range(steps))
    assert mixed_steps <= 1


def test_batches_mix_the_corpus_sources_as_a_global_shuffle_does() -> None:
    """5 sources x 200 images, batches of 4. Rows follow a seeded permutation of the sorted
    ids (how `masktok plan` lays out the manifest), and the sampler shuffles globally. In a
    global shuffle a batch is single-source with probability 5 * C(200,4) / C(1000,4) = 0.008;
    the bound 0.03 leaves room for chance (this order is fixed by its seeds: no flakiness).
    Both seeds are 0 on purpose: were the sampler's epoch permutation the manifest's
    permutation, it would undo it and every batch would be single-source."""
    sources = np.repeat(np.arange(5), 200)  # sorted ids: source by source
    row_of = np.random.default_rng(0).permutation(1000)  # manifest row of each sorted id
    source_of_row = np.empty(1000, dtype=int)
    source_of_row[row_of] = sources
    sampler = ResumableSampler(1000, seed=0)
    order = np.array(list(sampler))
    batches = source_of_row[order].reshape(-1, 4)
    single = np.mean([len(set(b)) == 1 for b in batches])
    assert single <= 0.03, single


@pytest.fixture(scope="module")
def stream_setup(tmp_path_factory: pytest.TempPathFactory):
    from masktok.tiny.llm import build_tokenizer

    job = write_tiny_cache(tmp_path_factory.mktemp("order") / "job", n=N, shard_size=4, failed=())
    text = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi " * (i + 1)}]}
            for i in range(8)]
    z = ZarrImages(job)
    examples, _ = join_records(load_records(write_corpus(job.parent / "c.json", N, text)), z.image_ids, z.status)
    tokenizer = build_tokenizer(list(CAPTIONS) + ["Say hi.", "hi"])
    return job, examples, ItemBuilder(2, tokenizer, parse_spec("cls,patch:4,obj:3"))


def _kinds(items: list[dict]) -> list[bool]:
    return [it["visual"] is not None for it in items]


def test_the_stream_spreads_text_only_examples_and_replays_an_epoch_exactly(stream_setup) -> None:
    job, examples, build = stream_setup
    stream = StreamingConversations(examples, WdsImages(job, seed=3, shuffle_buffer=8), build)
    stream.set_epoch(2)
    first = list(stream)
    kinds = _kinds(first)
    assert len(first) == N + 8 and kinds.count(False) == 8
    assert not all(kinds[:N]), "text-only examples come before the last image, not all at the end"
    assert [it["input_ids"].tolist() for it in list(stream)] == [it["input_ids"].tolist() for it in first]
    stream.set_epoch(3)
    assert [it["input_ids"].tolist() for it in stream] != [it["input_ids"].tolist() for it in first]


def test_the_stream_shuffles_shards_per_epoch_and_splits_them_over_ranks(stream_setup) -> None:
    job = stream_setup[0]
    orders = []
    for epoch in (0, 1):
        parts = []
        for rank in range(2):
            reader = WdsImages(job, rank=rank, world=2, seed=0, shuffle_buffer=0)
            reader.set_epoch(epoch)
            parts.append([r["index"] for r in reader])
        assert sorted(parts[0] + parts[1]) == list(range(N)) and not set(parts[0]) & set(parts[1])
        orders.append(parts)
    assert orders[0] != orders[1]


def test_the_stream_groups_batches_by_modality(stream_setup) -> None:
    job, examples, build = stream_setup
    stream = StreamingConversations(examples, WdsImages(job, seed=0), build, group_batch=4)
    items = list(stream)
    assert len(items) == N + 8
    kinds = _kinds(items)
    batches = [kinds[i:i + 4] for i in range(0, len(kinds), 4)]
    assert all(len(set(b)) == 1 for b in batches), batches  # 24 image + 8 text: whole batches
    lengths = [len(it["input_ids"]) for it in items if it["visual"] is None]
    assert lengths[:4] == sorted(lengths[:4], reverse=True)


def test_stage_2_groups_by_modality_length_by_default_and_stage_1_does_not(stream_setup) -> None:
    """LLaVA-1.5's finetune.sh sets group_by_modality_length, pretrain.sh does not; a flag overrides."""
    from masktok.trainer.parallel.distributed import DistEnv
    from masktok.trainer.runtime import TrainConfig, make_loader

    job, examples, build = stream_setup
    env = DistEnv(rank=0, world=1, local_rank=0, device="cpu")
    for stage, asked, grouped in ((2, None, True), (1, None, False), (2, False, False), (1, True, True)):
        cfg = TrainConfig(stage=stage, cache=job, data=job, llm=job, out=job, group_by_modality_length=asked)
        _, sampler = make_loader(cfg, env, examples, ZarrImages(job), build, pad_id=0)
        assert cfg.grouped is grouped and (sampler.grouped is not None) is grouped, (stage, asked)


def test_fraction_keeps_the_same_records_whatever_the_order() -> None:
    """The paper's 90% of LLaVA-Pretrain: round(0.9 N) records, in file order, chosen by a hash of
    (seed, id, image), so a shuffled file, another run or machine gives the same subset."""
    from masktok.schemas.errors import DataError
    from masktok.trainer.data.records import record_subset

    records = [{"id": f"{i:06d}", "image": f"{i:05d}/{i:09d}.jpg", "conversations": []} for i in range(1000)]
    kept = record_subset(records, 0.9)
    assert len(kept) == 900 and kept == [r for r in records if r in kept]  # file order
    shuffled = list(records)
    np.random.default_rng(3).shuffle(shuffled)
    assert sorted(r["id"] for r in record_subset(shuffled, 0.9)) == [r["id"] for r in kept]
    assert kept != records[:900]  # a spread sample, not the file's head
    assert {r["id"] for r in record_subset(records, 0.5)} <= {r["id"] for r in kept}  # nested
    assert {r["id"] for r in record_subset(records, 0.9, seed=1)} != {r["id"] for r in kept}
    assert record_subset(records, 1.0) == records
    with pytest.raises(DataError, match="fraction"):
        record_subset(records, 0.0)


def test_a_resume_refuses_another_fraction(tmp_path, monkeypatch) -> None:
    """The subset is part of the run: resuming it on other data is refused in one line."""
    from masktok.schemas.errors import TrainError
    from masktok.trainer import train as train_module
    from masktok.trainer.runtime import TrainConfig

    state = {"stage": 1, "tokens": "cls,patch:36,obj:101:all", "scaling": "per-image-std", "fraction": 0.9,
             "fraction_seed": 0}
    monkeypatch.setattr(train_module.ckpt, "latest", lambda out: tmp_path / "checkpoint-00000010")
    monkeypatch.setattr(train_module.ckpt, "read_state", lambda found: state)
    cfg = lambda **kw: TrainConfig(stage=1, cache=tmp_path, data=tmp_path, llm=tmp_path, out=tmp_path,  # noqa: E731
                                   resume=True, **kw)
    assert train_module._resolve_run(cfg(fraction=0.9))[1] is state
    with pytest.raises(TrainError, match="fraction 0.9"):
        train_module._resolve_run(cfg())
    with pytest.raises(TrainError, match="seed 0"):
        train_module._resolve_run(cfg(fraction=0.9, fraction_seed=1))
    state.pop("fraction"), state.pop("fraction_seed")  # a run from before --fraction: all records
    assert train_module._resolve_run(cfg())[1] is state
