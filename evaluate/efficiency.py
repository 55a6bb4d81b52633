"""What an answer costs, beside what it scores (``masktok score sweep``'s efficiency columns):
the LM's prefill compute per answer and the measured questions/s of the run that wrote a file.

Prefill compute, masktok's count: ``2 x N x T`` floating-point operations per answer, with
``N`` the LM's parameters less its input embedding table (a lookup, no multiply-add; the LM
head is counted, as if every position's logits were computed) and ``T`` the tokens the LM
prefills for the answer: ``metadata.prompt_tokens`` where the answer file records it (text
and visual tokens), else the visual tokens alone (the text prompt is the same at every budget;
the figure is then marked as visual-only). Attention's ``T x T`` term and the projector are
not counted (a few % of the total at LLaVA's prompt lengths). ``N`` comes from a Llama
config (a Hugging Face ``config.json``), by default the paper's LM: Vicuna-7B or -13B v1.5.

Throughput: ``masktok answer`` writes ``OUT/<spec>.run.json`` beside ``OUT/<spec>.jsonl``
(``questions``, ``seconds``, ``questions_per_s``, ``device``, ``dtype``); its
``questions_per_s`` is the run's, "not recorded" where there is no such file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from ..schemas.lm_shapes import VICUNA_7B, VICUNA_13B
from .scoring import load_json

NOT_RECORDED = "not recorded"


def prefill_parameters(config: Mapping[str, Any]) -> int:
    """The parameters of a Llama-shaped LM that multiply every prefilled token: each decoder
    layer's attention (q and o: H x H; k and v: H x H x kv_heads / heads) and SwiGLU MLP
    (3 x H x I) and its two norms (H each), the final norm (H) and the LM head (V x H; counted
    even when tied to the input embedding, which is not counted). No biases (Llama has none)."""
    try:
        h, i, layers, v = (int(config[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                    "vocab_size"))
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"an LM config without a Llama shape ({exc}): expected hidden_size, intermediate_size, "
                        "num_hidden_layers, num_attention_heads, vocab_size") from None
    attention = 2 * h * h + 2 * h * (h * kv_heads // heads)
    return layers * (attention + 3 * h * i + 2 * h) + h + v * h


def lm_config(path: Path | None, paper_model: str) -> tuple[dict[str, Any], str]:
    """(config, its name): the ``config.json`` at ``path`` (a file, or a folder holding one),
    else the paper's LM for ``paper_model``."""
    if path is None:
        return dict({"7b": VICUNA_7B, "13b": VICUNA_13B}[paper_model]), f"Vicuna-{paper_model.upper()} v1.5"
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    config = load_json(file)
    if not isinstance(config, dict):
        raise DataError(f"{file}: not an LM config (a JSON object)")
    config = config.get("text_config", config) if "hidden_size" not in config else config
    return config, str(file)


def prefill_tflop(parameters: int, tokens: float) -> float:
    """2 x N x T, in TFLOP."""
    return 2 * parameters * tokens / 1e12


def mean_prompt_tokens(rows: list[tuple[int, dict[str, Any]]]) -> float | None:
    """Mean ``metadata.prompt_tokens`` of the answered lines; None unless every one records it."""
    counts = []
    for _, row in rows:
        meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        if "unanswered" in meta:
            continue
        value = meta.get("prompt_tokens")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        counts.append(value)
    return sum(counts) / len(counts) if counts else None


@dataclass(frozen=True)
class RunRecord:
    """What ``masktok answer`` recorded of the run that wrote an answer file."""

    questions: int
    seconds: float
    questions_per_s: float
    device: str | None = None
    dtype: str | None = None


def run_record_path(answers: Path) -> Path:
    """``OUT/<spec>.run.json`` for ``OUT/<spec>.jsonl``."""
    answers = Path(answers)
    stem = answers.name[:-len(".jsonl")] if answers.name.endswith(".jsonl") else answers.stem
    return answers.with_name(stem + ".run.json")


def read_run_record(answers: Path) -> RunRecord | None:
    """The run record beside ``answers``; None when there is none. DataError for one without a
    numeric ``questions_per_s``."""
    path = run_record_path(answers)
    if not path.is_file():
        return None
    data = load_json(path)
    rate = data.get("questions_per_s") if isinstance(data, dict) else None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise DataError(f"{path}: no numeric questions_per_s (a run record of masktok answer)")
    number = lambda key: data[key] if isinstance(data.get(key), (int, float)) else 0  # noqa: E731
    return RunRecord(int(number("questions")), float(number("seconds")), float(rate),
                     data.get("device"), data.get("dtype"))
