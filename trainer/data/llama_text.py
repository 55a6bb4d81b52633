"""LLaVA-1.5's text ids for a Llama (SentencePiece) LM folder, whatever transformers is installed.

LLaVA-1.5 tokenises with the *slow* ``LlamaTokenizer`` of transformers 4.37.2 (its pin,
loaded with ``use_fast=False``): the text goes to SentencePiece, whose BPE merges by piece
score. transformers 5 has no slow Llama tokenizer; its ``LlamaTokenizer`` is a ``tokenizers``
BPE that ranks merges as the folder's ``tokenizer.json`` lists them, and Vicuna's file ranks
the whitespace merges first: a double space becomes ``▁▁`` + ``word`` where LLaVA has ``▁`` +
``▁word``, four-space code indentation and an answer that starts with a space change the
same way (issue 38: 182 of 45,698 evaluation prompts under transformers 5.25). So, for a
folder with a ``tokenizer.model`` whose tokenizer class is Llama's, masktok does not use the
installed tokenizer to encode text; it encodes as that slow tokenizer did, with SentencePiece:

1. ``legacy`` and ``add_prefix_space`` come from ``tokenizer_config.json`` (absent: legacy
   true, prefix true, the defaults of transformers 4.37; Vicuna-1.5 says ``legacy: false``).
2. Not legacy: every "▁" of the text becomes a space and one "▁" is put in front; the model
   is used with ``add_dummy_prefix`` off. Legacy: the model is used as it is (its own prefix).
3. The text is cut at the special and added tokens (``</s>`` inside a v1 conversation), the
   longest first, honouring their ``lstrip``/``rstrip``; each special is its id.
4. Each other piece is SentencePiece's encoding. Not legacy, a piece that starts with a
   space is encoded after the unknown token's text and those ids dropped (so the space is
   not lost); a piece that does not (text right after ``</s>``) gets no "▁".
5. Not legacy, a lone leading "▁" before a special token is dropped.

No BOS is added here: the templates add it once (trainer/data/templates.py), as LLaVA's
``tokenizer_image_token`` keeps only the first chunk's. Other tokenizers (byte-level BPE,
no ``tokenizer.model``) are used as installed. Decoding stays the installed tokenizer's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SPIECE = "▁"
ATTRIBUTE = "llava_text"  # where load_tokenizer puts a SlowLlamaText on the HF tokenizer
MODEL_FILE, CONFIG_FILE = "tokenizer.model", "tokenizer_config.json"


class SlowLlamaText:
    """Text -> ids as transformers 4.37's slow LlamaTokenizer (no BOS; module docstring)."""

    def __init__(self, proto: bytes, legacy: bool, add_prefix_space: bool, specials: dict[str, int],
                 strip: dict[str, tuple[bool, bool]], unk_token: str) -> None:
        self.proto, self.legacy, self.add_prefix_space = proto, legacy, add_prefix_space
        self.specials, self.strip, self.unk_token = specials, strip, unk_token
        self._sp: Any = None

    @classmethod
    def from_folder(cls, folder: Path, hf_tokenizer: Any) -> "SlowLlamaText | None":
        """The slow tokenizer of ``folder``, or None where LLaVA's would not be a Llama one."""
        folder = Path(folder)
        if not (folder / MODEL_FILE).is_file():
            return None
        config = json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
        if not str(config.get("tokenizer_class") or type(hf_tokenizer).__name__).startswith("Llama"):
            return None
        added = dict(getattr(hf_tokenizer, "added_tokens_decoder", {}) or {})
        specials = {str(t): int(i) for i, t in added.items()}
        for token in hf_tokenizer.all_special_tokens:
            specials.setdefault(token, int(hf_tokenizer.convert_tokens_to_ids(token)))
        strip = {str(t): (bool(getattr(t, "lstrip", False)), bool(getattr(t, "rstrip", False))) for t in added.values()}
        legacy = config.get("legacy")
        prefix = config.get("add_prefix_space")
        return cls((folder / MODEL_FILE).read_bytes(), True if legacy is None else bool(legacy),
                   True if prefix is None else bool(prefix), specials, strip, str(hf_tokenizer.unk_token))

    @property
    def sp(self) -> Any:
        if self._sp is None:
            import sentencepiece
            from sentencepiece import sentencepiece_model_pb2

            model = sentencepiece_model_pb2.ModelProto.FromString(self.proto)
            if not self.legacy:
                model.normalizer_spec.add_dummy_prefix = False
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=model.SerializeToString())
        return self._sp

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: the processor is rebuilt there
        return {**self.__dict__, "_sp": None}

    def ids(self, text: str) -> list[int]:
        """``tokenizer(text).input_ids`` of LLaVA's slow tokenizer, without the BOS."""
        if not text:
            return []
        if not self.legacy:
            text = text.replace(SPIECE, " ")
            if self.add_prefix_space:
                text = SPIECE + text
        tokens: list[tuple[int, bool]] = []  # (id, is a special token)
        for part, special in self._split(text):
            if special:
                tokens.append((self.specials[part], True))
            elif part:
                tokens.extend((i, False) for i in self._encode(part))
        if not self.legacy and len(tokens) > 1 and tokens[0] == (self.sp.piece_to_id(SPIECE), False) and tokens[1][1]:
            tokens = tokens[1:]
        return [i for i, _ in tokens]

    def _split(self, text: str) -> list[tuple[str, bool]]:
        """The text cut at special tokens: (piece, is_special), spaces stripped where asked."""
        if not self.specials:
            return [(text, False)]
        pattern = "(" + "|".join(re.escape(t) for t in sorted(self.specials, key=len, reverse=True)) + ")"
        parts = [(p, i % 2 == 1) for i, p in enumerate(re.split(pattern, text))]
        for i, (part, special) in enumerate(parts):
            lstrip, rstrip = self.strip.get(part, (False, False)) if special else (False, False)
            if rstrip and i + 1 < len(parts):
                parts[i + 1] = (parts[i + 1][0].lstrip(), False)
            if lstrip and i > 0:
                parts[i - 1] = (parts[i - 1][0].rstrip(), False)
        return parts

    def _encode(self, piece: str) -> list[int]:
        if self.legacy or not piece.startswith((SPIECE, " ")):
            return list(self.sp.encode(piece))
        skip = len(self.sp.encode(self.unk_token))
        ids = list(self.sp.encode(self.unk_token + piece))
        return ids[skip:] if len(ids) >= skip else ids

    def save(self, folder: Path) -> None:
        """Keep what this tokenisation needs in a saved tokenizer folder: transformers 5's
        ``save_pretrained`` writes neither ``tokenizer.model`` nor ``legacy``."""
        folder = Path(folder)
        (folder / MODEL_FILE).write_bytes(self.proto)
        path = folder / CONFIG_FILE
        config = json.loads(path.read_text()) if path.is_file() else {}
        config.update(legacy=self.legacy, add_prefix_space=self.add_prefix_space)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def attach(tokenizer: Any, folder: Path) -> Any:
    """``tokenizer`` with LLaVA's slow text encoding of ``folder`` attached (when it applies)."""
    setattr(tokenizer, ATTRIBUTE, SlowLlamaText.from_folder(folder, tokenizer))
    return tokenizer


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``text`` (no special tokens added): LLaVA's slow tokenisation where attached."""
    slow = getattr(tokenizer, ATTRIBUTE, None)
    if slow is not None:
        return slow.ids(text)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` plus what the slow tokenisation needs (``SlowLlamaText.save``)."""
    tokenizer.save_pretrained(folder)
    slow = getattr(tokenizer, ATTRIBUTE, None)
    if slow is not None:
        slow.save(folder)
