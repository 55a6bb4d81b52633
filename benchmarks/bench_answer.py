"""Benchmark: ``masktok answer`` at scale (issue 32 item 8), a tiny LM on the CPU.

- questions/s of one run over 96 questions at two specs (batch 8, 16 new tokens at most,
  greedy): in one process, and on 1 and 2 Ray workers (a local Ray of 2 CPUs). ``wall``:
  the whole call (checkpoint loading, and Ray's start for the workers); ``model``: the
  answers over the model's seconds as ``<spec>.run.json`` records them (summed over
  replicas, so per replica). Each process has one torch thread, so two workers use two cores.
- prompt padding: the share of padded prompt positions (text and visual tokens) of the
  plan's length-grouped batches against batches in file order, for 96 questions of 5 to
  60 words; and decoding waste as the run measured it (steps run by each batch's rows
  beyond those its answers needed, over all steps run).
- decoding waste with answers of varied length (:func:`decode_waste`): steps run by the
  rows of a batch already finished, over all steps run.
- peak memory of one 1,024-token greedy generation (batch 4, a Llama of hidden 64 with
  LLaVA's 32,000-token vocabulary, no eos, so every step is run) with every step's logits
  kept (``output_scores=True``, the code before) and with the running margin: peak RSS
  growth of a fresh process during the call.

GPU: not measured here (no GPU on this machine).

    .venv/bin/python benchmarks/bench_answer.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SPECS = ["cls,patch:9,obj:5", "cls,patch:1,obj:2"]
N = 96


def _setup(tmp: Path) -> tuple[Path, Path, Path]:
    from masktok.tiny.cache import CAPTIONS, write_corpus, write_tiny_cache
    from masktok.tiny.llm import build_tiny_llm
    from masktok.trainer.runtime import TrainConfig
    from masktok.trainer.train import train

    job = write_tiny_cache(tmp / "job", n=32, shard_size=16, failed=())
    data = write_corpus(tmp / "data.json", 32)
    llm = build_tiny_llm(tmp / "llm", list(CAPTIONS) + ["Describe the image.", "Is there a dog in the image?"])
    run = tmp / "run"
    train(TrainConfig(stage=2, cache=job, data=data, llm=llm, out=run, max_steps=4, batch_size=8,
                      tokens="cls,patch:9,obj:5"))
    rng = random.Random(0)
    questions = tmp / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": f"img/{i % 32:03d}.jpg",
                                             "text": " ".join(["Is there a dog"] + ["here"] * rng.randint(1, 56)) + "?"})
                                 + "\n" for i in range(N)))
    return run, job, questions


def throughput(tmp: Path, run: Path, job: Path, questions: Path) -> dict[str, object]:
    import ray

    from masktok.evaluate.answer import answer

    figures: dict[str, object] = {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        for label, workers in (("in_process", None), ("workers_1", 1), ("workers_2", 2)):
            out = tmp / f"answers-{label}"
            t0 = time.perf_counter()
            summary = answer(run, job, questions, SPECS, out, batch_size=8, max_new_tokens=16, device="cpu",
                             workers=workers)
            wall = time.perf_counter() - t0
            records = [json.loads((out / f"{s}.run.json").read_text()) for s in SPECS]
            answered = sum(summary.answered.values())
            figures[label] = {"wall_questions_per_s": round(answered / wall, 1),
                              "model_questions_per_s": round(answered / sum(r["seconds"] for r in records), 1),
                              "answers": answered}
            steps, needed = sum(summary.steps.values()), sum(summary.answer_steps.values())
            figures[label]["decode_waste"] = round(1 - needed / steps, 3) if steps else 0.0
    finally:
        ray.shutdown()
    return figures


def padding(run: Path, questions: Path) -> dict[str, float]:
    from masktok.evaluate.answer_plan import plan_batches
    from masktok.evaluate.questions import read_question_file
    from masktok.inference.generation import Prompter

    prompter = Prompter.of(run)
    qs = read_question_file(questions).questions
    visual = 1 + 9 + 5  # cls,patch:9,obj:5 (the tiny cache has 5 objects or more)
    length = {q.line: prompter.length(q.text) - 1 + visual for q in qs}

    def share(batches: list[list[int]]) -> float:
        padded = sum(max(length[x] for x in b) * len(b) for b in batches)
        return round(1 - sum(length[x] for b in batches for x in b) / padded, 3)

    grouped = plan_batches(qs, lambda q: length[q.line], 8)
    in_order = [[q.line for q in qs[i:i + 8]] for i in range(0, len(qs), 8)]
    return {"grouped": share(grouped), "file_order": share(in_order)}


def decode_waste(run: Path, job: Path, questions: Path) -> dict[str, object]:
    """The share of decoding steps that a batch runs for rows already finished (a batch ends
    when its last answer does), in the plan's batches of 8, with answers of varied length:
    the tiny LM never emits its eos, so a token it often emits mid-answer stands in for it."""
    from collections import Counter

    from masktok.evaluate.answer_plan import plan_batches
    from masktok.evaluate.questions import read_question_file
    from masktok.inference.cache import open_cache
    from masktok.inference.generation import Prompter, load_generation_model, prompt_ids
    from masktok.trainer.visual.compose import compose

    gm = load_generation_model(run, "cpu", "float32")
    spec = gm.token_spec(SPECS[0])
    images = open_cache(job, gm.dims, [spec])
    qs = {q.line: q for q in read_question_file(questions).questions}
    prompter = Prompter.of(run)
    batches = plan_batches(list(qs.values()), lambda q: prompter.length(q.text), 8)

    def generate(eos: int | None) -> list[tuple[int, list[list[int]]]]:
        out = []
        for batch in batches:
            visual = [compose(images[images.row_of(qs[x].image)], spec, gm.state["scaling"], gm.stats) for x in batch]
            prompts = [prompt_ids(gm.stage, gm.tokenizer, qs[x].text) for x in batch]
            got = gm.model.generate_batch(prompts, visual, 16, eos, gm.tokenizer.pad_token_id)
            out.append((got.steps, got.tokens))
        return out

    counts = Counter(t for _, tokens in generate(None) for seq in tokens for t in seq[1:])
    eos = counts.most_common(1)[0][0]
    runs = generate(eos)
    run_steps = sum(steps * len(tokens) for steps, tokens in runs)
    needed = sum(min(len(seq) + 1, steps) for steps, tokens in runs for seq in tokens)
    lengths = [min(len(seq) + 1, steps) for steps, tokens in runs for seq in tokens]
    return {"stand_in_eos": int(eos), "mean_answer_steps": round(sum(lengths) / len(lengths), 2),
            "max_answer_steps": max(lengths), "waste": round(1 - needed / run_steps, 3)}


def _peak_child(kind: str) -> None:
    """In a fresh process: build the model, generate 1,024 tokens, print the RSS growth (MB)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from masktok.trainer.model.mask_llava import MaskLlava, Projector

    torch.manual_seed(0)
    torch.set_num_threads(1)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=4,
                                       max_position_embeddings=2048)).eval()
    model = MaskLlava(llm, Projector(8, 8, 64)).eval()
    prompts = [[1, 5 + b, 7, 9] for b in range(4)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        if kind == "margin":
            model.generate_batch(prompts, [None] * 4, 1024, None, 0)
        else:  # the code before: every step's logits kept to find the margins
            embeds, mask, _ = model.embed(torch.tensor(prompts), torch.tensor([4] * 4), [None] * 4)
            config = GenerationConfig(max_new_tokens=1024, do_sample=False, num_beams=1, eos_token_id=None,
                                      pad_token_id=0, output_scores=True, return_dict_in_generate=True)
            out = llm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
            torch.stack([s.float().topk(2, dim=-1).values for s in out.scores])
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def peak_memory() -> dict[str, float]:
    mb = {}
    for kind in ("scores", "margin"):
        out = subprocess.run([sys.executable, __file__, "--peak", kind], capture_output=True, text=True, check=True)
        mb[kind] = round(float(out.stdout.strip().splitlines()[-1]), 1)
    return {"every_steps_logits_mb": mb["scores"], "running_margin_mb": mb["margin"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--peak", choices=["scores", "margin"], default=None)
    args = parser.parse_args()
    if args.peak:
        return _peak_child(args.peak)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run, job, questions = _setup(Path(tmp))
        figures = {"questions_per_s": throughput(Path(tmp), run, job, questions),
                   "prompt_padding": padding(run, questions),
                   "decode_waste_varied_lengths": decode_waste(run, job, questions),
                   "peak_memory_1024_tokens": peak_memory(),
                   "gpu": "not measured"}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
