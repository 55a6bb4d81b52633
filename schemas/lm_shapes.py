"""The shapes of the paper's LMs, as their ``config.json`` gives them: what the trainer's memory
accounting (trainer/parallel/memory.py) and the sweep's prefill count (evaluate/efficiency.py)
count from. Plain data, no torch: reading it costs a scoring command nothing."""

from __future__ import annotations

from typing import Any

# Vicuna-7B v1.5 = LLaMA-2-7B's shapes (config.json of lmsys/vicuna-7b-v1.5)
VICUNA_7B: dict[str, Any] = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                 tie_word_embeddings=False)
VICUNA_13B: dict[str, Any] = dict(VICUNA_7B, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                  num_attention_heads=40, num_key_value_heads=40)
