"""trainer/data/templates.py against LLaVA's own preprocessing, for a byte-level BPE tokenizer
(the project's tiny one: no dummy prefix) and Llama-style SentencePiece tokenizers
(``add_dummy_prefix``, byte fallback) trained here, in legacy and non-legacy mode.

The reference is a port of LLaVA's ``tokenizer_image_token`` (llava/mm_utils.py),
``conv_vicuna_v1.get_prompt`` (llava/conversation.py), ``preprocess_v1`` and
``preprocess_plain`` (llava/train/train.py). A SentencePiece tokenizer puts a "▁" in front
of every piece of text it is given: an answer tokenized on its own gains a token that
the same answer inside the conversation, what LLaVA feeds the model, does not have.
"""

from __future__ import annotations

import io
import re

import pytest
import sentencepiece
import transformers

from masktok.trainer.data import templates
from masktok.trainer.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX, SYSTEM_V1

CAPTION = "A red square on a white background."
CORPUS = [SYSTEM_V1, "USER: What colour is it? ASSISTANT: Red.", "USER: Why? ASSISTANT: Because it is.",
          "Describe the image.", CAPTION]
QUESTION = "What colour is it?"
ANSWERS = ["Red.", "Because it is."]


def _turns(has_image: bool) -> list[dict[str, str]]:
    first = QUESTION + "\n<image>" if has_image else QUESTION  # templates move <image> to the front
    return [{"from": "human", "value": first}, {"from": "gpt", "value": ANSWERS[0]},
            {"from": "human", "value": "Why?"}, {"from": "gpt", "value": ANSWERS[1]}]


# ---- LLaVA, ported ---------------------------------------------------------------------------

def llava_v1_prompt(has_image: bool) -> str:
    """conv_vicuna_v1.get_prompt() (SeparatorStyle.TWO) of _turns() after preprocess_multimodal."""
    first = "<image>\n" + QUESTION if has_image else QUESTION
    messages = [("USER", first), ("ASSISTANT", ANSWERS[0]), ("USER", "Why?"), ("ASSISTANT", ANSWERS[1])]
    seps = [" ", "</s>"]
    ret = SYSTEM_V1 + seps[0]
    for i, (role, message) in enumerate(messages):
        ret += role + ": " + message + seps[i % 2]
    return ret


def _call(tokenizer, text: str) -> list[int]:
    """``tokenizer(text).input_ids``. Llama's tokenizer adds <s> itself; the tiny byte-level
    one does not, so it is added here, as the templates always do."""
    ids = tokenizer(text).input_ids
    return ids if ids[:1] == [tokenizer.bos_token_id] else [tokenizer.bos_token_id] + ids


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    prompt_chunks = [_call(tokenizer, chunk) for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids, offset = [], 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [IMAGE_TOKEN_INDEX] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def _ignore(target: list[int], start: int, stop: int | None = None) -> None:
    stop = len(target) if stop is None else stop
    target[start:stop] = [IGNORE_INDEX] * len(target[start:stop])


def llava_preprocess_v1(prompt: str, tokenizer, has_image: bool, legacy: bool) -> tuple[list[int], list[int]]:
    """preprocess_v1 for one conversation (tokenizers >= 0.14). LLaVA masks a whole
    conversation whose lengths do not add up; here that fails, so the reference can't
    agree with a wrong template by both being all -100. Its non-legacy ``-1`` is the
    arithmetic of Llama's vocabulary ("▁" + "USER" alone, "USER" after "</s>"), not of
    every vocabulary, so only a legacy or prefix-free tokenizer is checked against it."""
    tok = (lambda s: tokenizer_image_token(s, tokenizer)) if has_image else (lambda s: _call(tokenizer, s))
    input_ids = tok(prompt)
    target = list(input_ids)
    sep = " " + "ASSISTANT" + ": "
    cur_len = 1
    _ignore(target, 0, cur_len)
    for i, rou in enumerate(prompt.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tok(rou))
        instruction_len = len(tok(parts[0])) - 2
        if i != 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        _ignore(target, cur_len, cur_len + instruction_len)
        cur_len += round_len
    _ignore(target, cur_len)
    assert cur_len == len(input_ids), f"LLaVA's tokenization mismatch: {cur_len} vs. {len(input_ids)}"
    return input_ids, target


def answer_labels(prompt: str, tokenizer) -> list[int]:
    """Labels that learn exactly the tokens lying within each " {answer}</s>" of the prompt
    (character offsets; the answers come after the image), independent of any vocabulary."""
    if not tokenizer.is_fast:
        pytest.skip("character offsets need a fast tokenizer")
    ids = tokenizer_image_token(prompt, tokenizer)
    tail = prompt.rpartition("<image>")[2]
    enc = tokenizer(tail, return_offsets_mapping=True)
    offsets = enc.offset_mapping[1:] if enc.input_ids[:1] == [tokenizer.bos_token_id] else enc.offset_mapping
    spans = [(tail.index(f" {a}</s>"), tail.index(f" {a}</s>") + len(f" {a}</s>")) for a in ANSWERS]
    first = len(ids) - len(offsets)
    learnt = {first + j for j, (a, b) in enumerate(offsets) if a < b and any(s <= a and b <= e for s, e in spans)}
    return [t if i in learnt else IGNORE_INDEX for i, t in enumerate(ids)]


def llava_preprocess_plain(caption: str, tokenizer) -> tuple[list[int], list[int]]:
    input_ids = tokenizer_image_token("<image>" + caption + "\n", tokenizer)
    target = list(input_ids)
    _ignore(target, 0, len(tokenizer_image_token("<image>", tokenizer)))
    return input_ids, target


# ---- tokenizers ------------------------------------------------------------------------------

MODEL_TYPES = {"bpe": 420, "unigram": 335}  # Llama's is BPE; sizes: a few words become one piece
# LlamaTokenizerFast is LlamaTokenizer in transformers 5; PreTrainedTokenizerFast builds from the
# .model a tokenizer that encodes as SentencePieceProcessor does (transformers 5)
CLASSES = list(dict.fromkeys(getattr(transformers, n) for n in
                             ("LlamaTokenizer", "LlamaTokenizerFast", "PreTrainedTokenizerFast")))
SP_PARAMS = [(cls, mt, legacy) for cls in CLASSES for mt in MODEL_TYPES for legacy in (True, False)]


def _train(model_type: str) -> bytes:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=model, model_type=model_type,
        vocab_size=MODEL_TYPES[model_type], hard_vocab_limit=False, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", byte_fallback=True,  # as Llama's
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, str]]:
    out = {}
    for model_type in MODEL_TYPES:
        folder = tmp_path_factory.mktemp(model_type)
        (folder / "tokenizer.model").write_bytes(proto := _train(model_type))
        out[model_type] = proto, str(folder)
    return out


def _load(cls, folder: str, legacy: bool):
    """The tokenizer ``cls`` builds from the folder's tokenizer.model, or None where this
    transformers can't (transformers 4's PreTrainedTokenizerFast wants a tokenizer.json)."""
    try:
        return cls.from_pretrained(folder, legacy=legacy, add_bos_token=True, local_files_only=True)
    except Exception:  # noqa: BLE001
        return None


def _make(param, sp_models):
    """(tokenizer, legacy). The byte-level tokenizer counts as legacy: it adds no prefix
    anywhere, so a round tokenized alone has the ids it has in the conversation."""
    if param is None:
        from masktok.tiny.llm import build_tokenizer

        return build_tokenizer(CORPUS), True
    cls, model_type, legacy = param
    if (tokenizer := _load(cls, sp_models[model_type][1], legacy)) is None:
        pytest.skip(f"this transformers builds no {cls.__name__} from a bare .model")
    return tokenizer, legacy


def _name(param) -> str:
    if param is None:
        return "byte-level-bpe"
    cls, model_type, legacy = param
    return f"{cls.__name__}-{model_type}-{'legacy' if legacy else 'nonlegacy'}"


ALL, LEGACY = [None] + SP_PARAMS, [None] + [p for p in SP_PARAMS if p[2]]


@pytest.fixture(scope="module", params=ALL, ids=_name)
def tok(request, sp_models):
    return _make(request.param, sp_models)


@pytest.fixture(scope="module", params=LEGACY, ids=_name)
def legacy_tok(request, sp_models):
    return _make(request.param, sp_models)


# ---- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_sentencepiece_gives_a_lone_answer_an_extra_prefix_token_and_a_fixture_reproduces_it(sp_models, model_type) -> None:
    """The premise of this file. SentencePiece prefixes every text it encodes with "▁", so " Red."
    alone is "▁" + the pieces that " Red." has inside "ASSISTANT: Red." (the old per-segment
    templates made exactly that). At least one transformers tokenizer under test encodes as
    SentencePiece does, so the v1 tests below do meet that extra token."""
    proto, folder = sp_models[model_type]
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    context = sp.encode("ASSISTANT: Red.", out_type=str)
    lone = sp.encode(" Red.", out_type=str)
    assert lone[0] == "▁" and lone[1:] == context[context.index(":") + 1:]
    samples = [" Red.", "Red.", f"{SYSTEM_V1} USER: ", "\nWhat colour is it? ASSISTANT: Red."]
    loaded = [t for t in (_load(cls, folder, legacy=True) for cls in CLASSES) if t is not None]
    faithful = [t for t in loaded if all(t(s, add_special_tokens=False).input_ids == sp.encode(s) for s in samples)]
    assert faithful, "no tokenizer under test adds SentencePiece's dummy prefix to every piece"


@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text-only"])
def test_v1_ids_are_the_whole_prompt_tokenized_once_as_llava_does(tok, has_image) -> None:
    tokenizer, _ = tok
    ids, labels = templates.v1(_turns(has_image), tokenizer, has_image)
    assert ids == tokenizer_image_token(llava_v1_prompt(has_image), tokenizer)
    assert len(labels) == len(ids) and ids.count(IMAGE_TOKEN_INDEX) == int(has_image)


@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text-only"])
def test_v1_labels_learn_exactly_the_answer_and_eos_tokens_of_the_prompt(tok, has_image) -> None:
    tokenizer, _ = tok
    ids, labels = templates.v1(_turns(has_image), tokenizer, has_image)
    assert labels == answer_labels(llava_v1_prompt(has_image), tokenizer)
    spans: list[list[int]] = []  # runs of learnt positions
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX:
            if spans and spans[-1][-1] == i - 1:
                spans[-1].append(i)
            else:
                spans.append([i])
    assert [tokenizer.decode([ids[i] for i in span]).strip() for span in spans] == [a + "</s>" for a in ANSWERS]
    assert all(labels[i] == ids[i] for span in spans for i in span) and spans[-1][-1] == len(ids) - 1


@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text-only"])
def test_v1_ids_and_labels_equal_llava_preprocess_v1(legacy_tok, has_image) -> None:
    tokenizer, legacy = legacy_tok
    ids, labels = templates.v1(_turns(has_image), tokenizer, has_image)
    assert (ids, labels) == llava_preprocess_v1(llava_v1_prompt(has_image), tokenizer, has_image, legacy)


def test_v1_generation_prompt_is_the_masked_prefix_of_the_training_ids(tok) -> None:
    tokenizer, _ = tok
    prompt = templates.v1_prompt(QUESTION, tokenizer, has_image=True)
    ids, labels = templates.v1(_turns(True), tokenizer, has_image=True)
    assert ids[:len(prompt)] == prompt and tokenizer.decode(prompt[-1:]).endswith(":")
    assert set(labels[:len(prompt)]) == {IGNORE_INDEX} and labels[len(prompt)] == ids[len(prompt)]


def test_plain_ids_and_labels_are_llava_preprocess_plain(tok) -> None:
    tokenizer, _ = tok
    turns = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": CAPTION}]
    ids, labels = templates.plain(turns, tokenizer)
    assert (ids, labels) == llava_preprocess_plain(CAPTION, tokenizer)
    assert labels[:2] == [IGNORE_INDEX] * 2 and tokenizer.decode(ids[2:]).strip() == CAPTION


class _MergesColonSpace:
    """A tokenizer with one token for ": ", so "ASSISTANT:" | " Red." is no token boundary."""

    bos_token_id, eos_token = 1, "</s>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        pieces = re.findall(r"</s>|: |.", text, flags=re.S)
        return {"input_ids": [{"</s>": 2, ": ": 3}.get(p, 10 + ord(p[0])) for p in pieces]}


def test_v1_refuses_an_answer_boundary_inside_a_token() -> None:
    with pytest.raises(ValueError, match="straddles"):
        templates.v1(_turns(False), _MergesColonSpace(), has_image=False)
