"""Readers, the record join, the templates' label masks, the splice into the LM's inputs
and the resumable sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masktok.tiny.cache import CAPTIONS, write_corpus, write_tiny_cache
from masktok.schemas.errors import CacheError
from masktok.trainer.data import templates
from masktok.trainer.visual.compose import compose
from masktok.trainer.data.datasets import ConversationDataset, ItemBuilder, StreamingConversations
from masktok.trainer.parallel.distributed import ResumableSampler
from masktok.trainer.data.readers import WdsImages, ZarrImages, split_for_worker
from masktok.trainer.data.records import join_records, load_records
from masktok.trainer.visual.token_spec import parse_spec
from record_checks import assert_same_record

N = 10


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory):
    return write_tiny_cache(tmp_path_factory.mktemp("cache") / "job", n=N, shard_size=4, failed=(5,))


@pytest.fixture(scope="module")
def tokenizer():
    from masktok.tiny.llm import build_tokenizer

    return build_tokenizer(list(CAPTIONS) + ["What colour is it? Red. Why? Because it is. Describe the image."])


def test_zarr_and_webdataset_readers_agree(job) -> None:
    z = ZarrImages(job)
    w = sorted(WdsImages(job), key=lambda r: r["index"])
    assert len(z) == len(w) == N and z.status.tolist() == [1] * 5 + [2] + [1] * 4
    for i, b in enumerate(w):
        a = z[i]
        assert_same_record(a, b)
        if a["status"] == 1:
            assert len(a["object_tokens"]) == a["num_objects"]
            ca, cb = compose(a, parse_spec("cls,patch:9,obj:4"), "per-image"), compose(b, parse_spec("cls,patch:9,obj:4"), "per-image")
            assert all(torch.equal(x, y) for x, y in ((ca.glob, cb.glob), (ca.patch, cb.patch), (ca.objects, cb.objects)))
    assert "object_tokens" not in z[5]  # failed: scalars only


def test_stream_split_over_ranks_and_workers_is_disjoint_and_complete(job) -> None:
    shards = WdsImages(job).shards
    parts = [split_for_worker(shards, r, 2) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == shards and not set(parts[0]) & set(parts[1])
    with pytest.raises(CacheError):
        ZarrImages(job.parent / "nothing")


def test_join_counts(job, tmp_path) -> None:
    extra = [{"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
             {"id": "m", "image": "img/missing.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                                         {"from": "gpt", "value": "x"}]},
             {"id": "bad", "image": "img/000.jpg"}, "not a record"]
    records = load_records(write_corpus(tmp_path / "c.json", N, extra))
    z = ZarrImages(job)
    ex, counts = join_records(records, z.image_ids, z.status)
    assert (counts.records, counts.with_image, counts.text_only, counts.used) == (14, 11, 1, 10)
    assert (counts.skipped_failed, counts.skipped_missing, counts.skipped_invalid) == (1, 1, 2)
    assert counts.examples["failed"] == ["img/005.jpg"] and ex[-1].row is None
    ex1, counts1 = join_records(records, z.image_ids, z.status, keep_text_only=False)
    assert counts1.used == 9 and counts1.skipped_text_only == 1


def test_v1_mask_on_a_hand_written_conversation(tokenizer) -> None:
    turns = [{"from": "human", "value": "What colour is it?\n<image>"}, {"from": "gpt", "value": "Red."},
             {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because it is."}]
    ids, labels = templates.v1(turns, tokenizer, has_image=True)
    assert len(ids) == len(labels) and ids.count(templates.IMAGE_TOKEN_INDEX) == 1
    sys = templates.SYSTEM_V1
    text = tokenizer.decode([i if i >= 0 else tokenizer.unk_token_id for i in ids])
    assert text == f"<s>{sys} USER: <unk>\nWhat colour is it? ASSISTANT: Red.</s>USER: Why? ASSISTANT: Because it is.</s>"
    learnt = [i for i, l in enumerate(labels) if l != templates.IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in learnt)
    runs = np.split(np.array(learnt), np.flatnonzero(np.diff(learnt) > 1) + 1)
    assert [tokenizer.decode(ids[r[0]:r[-1] + 1]) for r in runs] == [" Red.</s>", " Because it is.</s>"]
    assert runs[1][-1] == len(ids) - 1  # the last token learnt is the final </s>
    # the masked prefix of turn one is exactly the generation prompt
    prompt = templates.v1_prompt("What colour is it?", tokenizer, has_image=True)
    assert ids[: len(prompt)] == prompt and runs[0][0] == len(prompt)
    # text-only: no sentinel; a leading gpt turn is dropped
    ids2, _ = templates.v1([{"from": "gpt", "value": "x"}] + turns[2:], tokenizer, has_image=False)
    assert templates.IMAGE_TOKEN_INDEX not in ids2 and tokenizer.decode(ids2).endswith("USER: Why? ASSISTANT: Because it is.</s>")


def test_plain_mask(tokenizer) -> None:
    ids, labels = templates.plain([{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": CAPTIONS[0]}],
                                  tokenizer)
    assert ids[:2] == [tokenizer.bos_token_id, templates.IMAGE_TOKEN_INDEX] and labels[:2] == [-100, -100]
    assert labels[2:] == ids[2:] and tokenizer.decode(ids[2:]) == CAPTIONS[0] + "\n"


def test_splice_puts_visual_tokens_at_the_sentinel(job, tokenizer) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from masktok.trainer.data.datasets import collate
    from masktok.trainer.runtime import build_model

    z = ZarrImages(job)
    ex, _ = join_records(load_records(write_corpus(job.parent / "c.json", N)), z.image_ids, z.status)
    build = ItemBuilder(2, tokenizer, parse_spec("cls,patch:4,obj:3"), "per-image")
    items = [build(ex[0], z[ex[0].row]), build(ex[1], None)]
    batch = collate(items, tokenizer.pad_token_id)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2))
    model = build_model(llm, z.dims)
    assert model.projector.patch_proj[0].in_features == 24 and model.projector.token_proj[0].in_features == 16
    embeds, mask, labels = model.embed(batch["input_ids"], batch["lengths"], batch["visual"], batch["labels"])
    nv = len(items[0]["visual"])
    assert nv == 1 + 4 + min(3, len(compose(z[0], parse_spec("obj"))))
    n0 = len(items[0]["input_ids"]) - 1 + nv
    p = items[0]["input_ids"].tolist().index(templates.IMAGE_TOKEN_INDEX)
    assert int(mask[0].sum()) == n0 and int(mask[1].sum()) == len(items[1]["input_ids"])
    assert (labels[0, p:p + nv] == -100).all() and labels[0, n0 - 1] == items[0]["labels"][-1]
    visual = model.projector([items[0]["visual"]])[0]
    assert torch.allclose(embeds[0, p:p + nv], visual)
    assert torch.allclose(embeds[0, p + nv], llm.get_input_embeddings()(items[0]["input_ids"][p + 1]))
    assert torch.isfinite(model(batch))


def test_map_and_streaming_datasets_give_identical_items(job, tokenizer) -> None:
    z = ZarrImages(job)
    extra = [{"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    ex, _ = join_records(load_records(write_corpus(job.parent / "c2.json", N, extra)), z.image_ids, z.status)
    build = ItemBuilder(2, tokenizer, parse_spec("cls,patch:9,obj:5"), "per-image")
    mapped = [ConversationDataset(ex, z, build)[i] for i in range(len(ex))]
    streamed = list(StreamingConversations(ex, WdsImages(job), build))
    assert len(mapped) == len(streamed) == 10

    def key(item):  # the stream has its own order: match the items by what they hold
        visual = item["visual"]
        return item["input_ids"].tolist(), visual.patch.numpy().tobytes() if visual is not None else b""

    for a, b in zip(sorted(mapped, key=key), sorted(streamed, key=key)):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert (a["visual"] is None) == (b["visual"] is None)
        if a["visual"] is not None:
            assert torch.equal(a["visual"].patch, b["visual"].patch) and torch.equal(a["visual"].objects, b["visual"].objects)


def test_resumable_sampler() -> None:
    s = ResumableSampler(10, seed=3)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start=4)
    assert list(s) == full[4:] and len(s) == 6 and sorted(full) == list(range(10))
    ranks = [ResumableSampler(9, rank=r, world=2, seed=0) for r in range(2)]
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == 5 and set(parts[0]) | set(parts[1]) == set(range(9))
    blocks = [0, 0, 0, 1, 1, 1, 2, 2, -1, -1]
    order = list(ResumableSampler(10, seed=1, blocks=blocks))
    seq = [blocks[i] for i in order]
    assert sorted(order) == list(range(10)) and all(seq[i] == seq[i + 1] or seq[i] not in seq[i + 1:]
                                                    for i in range(9))  # each block read in one run


def test_the_streaming_reader_reads_committed_shards_only(tmp_path):
    import shutil

    from masktok.trainer.data.readers import WdsImages

    job = write_tiny_cache(tmp_path / "job", n=12, shard_size=4)
    assert sorted(r["index"] for r in WdsImages(job)) == list(range(12))
    (job / "commits" / "shard-000001.json").unlink()  # e.g. removed by `masktok verify --repair`
    assert sorted(r["index"] for r in WdsImages(job)) == [0, 1, 2, 3, 8, 9, 10, 11]
    shutil.rmtree(job / "commits")
    with pytest.raises(Exception, match="no committed WebDataset shards"):
        WdsImages(job)
