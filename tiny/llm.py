"""A tiny Llama and its tokenizer, built offline into a folder (tests, demos, benchmarks).

The folder is a normal Hugging Face model folder, loaded by the trainer exactly as a real
LLM (``AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)``), so the loading
code is exercised. The tokenizer is a byte-level BPE trained on the given texts plus the
v1 template's fixed words (decoding is exact for any text), wrapped in
``PreTrainedTokenizerFast`` with ``<s>``, ``</s>``, ``<unk>`` and ``<pad>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..trainer.data.templates import ROLES, SYSTEM_V1

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def build_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> "object":
    """A byte-level BPE PreTrainedTokenizerFast trained on ``texts`` (+ the template words)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL[k] for k in
                                  ("unk_token", "bos_token", "eos_token", "pad_token")],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = list(texts) + [SYSTEM_V1, f"{ROLES[0]}: ", f" {ROLES[1]}:", "\n"]
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def build_tiny_llm(out_dir: Path, texts: Iterable[str], hidden: int = 64, layers: int = 2, heads: int = 4,
                   vocab_size: int = 400, max_positions: int = 1024, seed: int = 0,
                   intermediate: int | None = None, embedding_rows: int | None = None) -> Path:
    """Save a seeded tiny LlamaForCausalLM + tokenizer to ``out_dir``; returns ``out_dir``.
    ``embedding_rows`` pads the embedding and LM head beyond the tokenizer's vocabulary
    (e.g. 32000, Llama's, for memory figures); ``intermediate`` defaults to 2 x hidden."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size)
    config = LlamaConfig(vocab_size=max(len(tokenizer), embedding_rows or 0), hidden_size=hidden,
                         intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
