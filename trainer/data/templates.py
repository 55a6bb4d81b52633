"""LLaVA's prompt templates as token ids and labels: ``plain`` (stage 1) and ``v1`` (stage 2).

The image is one sentinel id, ``IMAGE_TOKEN_INDEX`` (-200, as in LLaVA), where ``<image>``
stood; the model splices the visual tokens in there (trainer/model/mask_llava.py). Labels are
``IGNORE_INDEX`` (-100) everywhere except the text the model must learn to produce.

plain (LLaVA ``conv_llava_plain``, ``preprocess_plain``)::

    <s> <image> {caption}\\n          loss on "{caption}\\n" only

    The record's first turn is replaced by the image, its second turn is the caption.
    "{caption}\\n" is one string, tokenized on its own after the sentinel as LLaVA's
    ``tokenizer_image_token`` does (a SentencePiece "▁" dummy prefix included, and learnt).

v1 (LLaVA ``conv_vicuna_v1``, ``preprocess_v1``; sep " ", sep2 "</s>")::

    <s> {SYSTEM} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...

    loss on " {a_i}" and its "</s>" (the tokenizer's eos id) only; the system prompt, the
    roles and the questions are masked. As LLaVA does, ``<image>`` is moved to the start
    of the first human message ("<image>\\n" + the rest), a record that starts with a gpt
    turn loses that turn, and a text-only record has no image. An image record whose text
    lacks ``<image>`` gets it prepended too.

The whole v1 conversation is tokenized as one string, as ``preprocess_v1`` does (through
``tokenizer_image_token``: each ``<image>``-free chunk is tokenized on its own, the
sentinel goes between). It is never tokenized piece by piece: a SentencePiece tokenizer
(Llama, Vicuna) adds a dummy-prefix "▁" at the start of every piece it is given, so
``tokenizer(" Red.")`` is ``▁ ▁Red .`` where the conversation has ``: ▁Red .``, and in
non-legacy mode ``USER`` right after ``</s>`` has no "▁" that a lone ``USER: ...`` gets.
The labels come from the same ids: an answer's span starts and ends where the ids of the
text before it end, and that text always stops at a space or at ``</s>``, where no token
straddles (checked). LLaVA finds the same spans with ``-2``/``-1`` offsets tuned to Llama.
The generation prompt is that text up to "ASSISTANT:", so ``masktok generate`` feeds
token for token the prefix the model saw in training.
"""

from __future__ import annotations

from typing import Any

from .llama_text import text_ids

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
SYSTEM_V1 = ("A chat between a curious user and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the user's questions.")
ROLES = ("USER", "ASSISTANT")


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text``, each ``<image>`` replaced by the sentinel (no special tokens);
    LLaVA's slow Llama encoding where the tokenizer carries it (trainer/data/llama_text.py)."""
    ids: list[int] = []
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(text_ids(tokenizer, chunk))
    return ids


def _bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def plain(turns: list[dict[str, str]], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Stage-1 ids and labels: bos, image, then the caption (the second turn) and "\\n". The
    caption is kept as LLaVA keeps it (its spaces and newlines); only a stray ``<image>`` in it
    is removed (LLaVA would put a second image sentinel there, for an image it does not have)."""
    caption = turns[1]["value"].replace(IMAGE_TOKEN, "")
    prefix = _bos(tokenizer) + [IMAGE_TOKEN_INDEX]
    target = encode(tokenizer, caption + "\n")
    return prefix + target, [IGNORE_INDEX] * len(prefix) + target


def _normalise(turns: list[dict[str, str]], has_image: bool) -> list[dict[str, str]]:
    turns = [dict(t) for t in turns]
    if turns and turns[0]["from"] != "human":
        turns = turns[1:]
    for t in turns:
        t["value"] = t["value"].replace(IMAGE_TOKEN, "").strip() if IMAGE_TOKEN in t["value"] else t["value"]
    if has_image and turns:
        turns[0]["value"] = IMAGE_TOKEN + "\n" + turns[0]["value"]
    return turns


def v1(turns: list[dict[str, str]], tokenizer: Any, has_image: bool,
       system: str = SYSTEM_V1) -> tuple[list[int], list[int]]:
    """Stage-2 ids and labels (see the module docstring)."""
    text, answers = system + " ", []
    for t in _normalise(turns, has_image):
        if t["from"] == "human":
            text += f"{ROLES[0]}: {t['value']} {ROLES[1]}:"
        else:
            start = len(text)
            text += f" {t['value']}{tokenizer.eos_token}"
            answers.append((start, len(text)))
    bos = _bos(tokenizer)
    ids = bos + encode(tokenizer, text)
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in answers:
        first, last = (_prefix_len(tokenizer, text[:k], ids, len(bos)) for k in (start, end))
        labels[first:last] = ids[first:last]
    return ids, labels


def _prefix_len(tokenizer: Any, prefix: str, ids: list[int], offset: int) -> int:
    """Where, in ``ids``, the ids of ``prefix`` end (``prefix`` starts the text of ``ids[offset:]``)."""
    head = encode(tokenizer, prefix)
    if ids[offset:offset + len(head)] != head:
        raise ValueError(f"a token straddles the end of {prefix[-40:]!r}: no exact label mask")
    return offset + len(head)


def v1_prompt(question: str, tokenizer: Any, has_image: bool, system: str = SYSTEM_V1) -> list[int]:
    """Ids of a one-turn v1 prompt that ends with "ASSISTANT:", for generation."""
    ids, _ = v1([{"from": "human", "value": question}], tokenizer, has_image, system)
    return ids


def plain_prompt(tokenizer: Any) -> list[int]:
    """Ids of a stage-1 prompt: bos and the image; the model continues with a caption."""
    return _bos(tokenizer) + [IMAGE_TOKEN_INDEX]


def build(stage: int, turns: list[dict[str, str]], tokenizer: Any, has_image: bool) -> tuple[list[int], list[int]]:
    """The template of a training stage: 1 -> plain, 2 -> v1."""
    return plain(turns, tokenizer) if stage == 1 else v1(turns, tokenizer, has_image)
