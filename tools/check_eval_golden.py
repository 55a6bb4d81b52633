"""Re-check masktok's scorers against LLaVA-1.5-13B's published numbers, on LLaVA's own files.

The files are third-party data and are not part of masktok: bring them to disk first.

- LLaVA's evaluation files as of commit 32cebc3 (``playground/data/eval/``: question files and
  LLaVA-1.5-13B's answers; the next commit removes them): ``--llava-eval DIR``.
- POPE's COCO labels (AoiDragon/POPE at commit e3e3926, ``output/coco/coco_pope_*.json``; its
  random split has 2,910 lines): ``--pope DIR``.
- MME's eval tool (BradyFU/Awesome-Multimodal-Large-Language-Models, branch Evaluation,
  ``tools/eval_tool.zip``, unpacked): ``--mme DIR`` (the folder holding ``Your_Results/``).

Then, from the repository root:

    .venv/bin/python tools/check_eval_golden.py --llava-eval playground/data/eval \\
        --pope POPE/output/coco --mme eval_tool

Each benchmark prints masktok's score, the reference rule's figure on the same files and
LLaVA's published one; the exit status is 1 when a score is more than 0.05 off the reference.
MMBench's TSV is not public in any repository: its labels are rebuilt from LLaVA's upload
(``mmbench/answers_upload/mmbench_dev_20230712/llava-v1.5-13b.xlsx``: index, question, options,
answer, split; the other columns left empty). ScienceQA's answers are those inside LLaVA's
``scienceqa/answers/llava-v1.5-13b_output.jsonl`` (the ``pred`` of each item).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from masktok.evaluate.benchmarks import score_benchmark

#: (reference rule on LLaVA-1.5-13B's files, published) per benchmark.
GOLDEN = {"pope": (85.95, 85.9), "mme": (1531.32, 1531.3), "mme cognition": (295.36, 295.4),
          "mmbench": (67.69, 67.7), "sqa": (71.64, 71.6)}
TOLERANCE = 0.05


def scienceqa_answers(output: Path, out: Path) -> Path:
    """LLaVA's eval_science_qa.py output ({"correct": [...], "incorrect": [...]}) back to the
    answer file it was made from (question_id, prompt, text)."""
    data = json.loads(output.read_text(encoding="utf-8"))
    items = sorted(data["correct"] + data["incorrect"], key=lambda i: int(i["question_id"]))
    with out.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps({"question_id": item["question_id"], "prompt": item["question"],
                                 "text": item["pred"], "answer_id": "", "model_id": "llava-v1.5-13b",
                                 "metadata": {}}) + "\n")
    return out


def mmbench_labels(upload: Path, out: Path) -> Path:
    """A labels TSV from LLaVA's OpenCompass upload: its columns, the others empty."""
    import pandas as pd

    sheet = pd.read_excel(upload, engine="openpyxl")
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
               "l2-category", "comment", "split"]
    pd.DataFrame({c: sheet[c] if c in sheet.columns else "" for c in columns}).to_csv(out, sep="\t", index=False)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llava-eval", type=Path, required=True, help="LLaVA's playground/data/eval at 32cebc3")
    parser.add_argument("--pope", type=Path, required=True, help="POPE's output/coco at e3e3926")
    parser.add_argument("--mme", type=Path, required=True, help="MME's unpacked eval_tool/")
    args = parser.parse_args()
    e = args.llava_eval
    tmp = Path(tempfile.mkdtemp(prefix="masktok-golden-"))
    pope = score_benchmark("pope", e / "pope/answers/llava-v1.5-13b.jsonl",
                           sorted(args.pope.glob("coco_pope_*.json")), e / "pope/llava_pope_test.jsonl")
    mme = score_benchmark("mme", e / "MME/answers/llava-v1.5-13b.jsonl", [args.mme / "Your_Results"], None)
    mmbench = score_benchmark(
        "mmbench", e / "mmbench/answers/mmbench_dev_20230712/llava-v1.5-13b.jsonl",
        [mmbench_labels(e / "mmbench/answers_upload/mmbench_dev_20230712/llava-v1.5-13b.xlsx", tmp / "mmbench.tsv")],
        None)
    sqa = score_benchmark("sqa", scienceqa_answers(e / "scienceqa/answers/llava-v1.5-13b_output.jsonl",
                                                   tmp / "sqa.jsonl"), [], e / "scienceqa/llava_test_CQM-A.json")
    scores = {"pope": pope.score, "mme": mme.score, "mme cognition": mme.extra["cognition"],
              "mmbench": mmbench.score, "sqa": sqa.score}
    failed = False
    print(f"{'benchmark':<15}{'masktok':>10}{'reference':>11}{'published':>11}")
    for name, value in scores.items():
        reference, published = GOLDEN[name]
        ok = value is not None and abs(value - reference) <= TOLERANCE
        failed |= not ok
        print(f"{name:<15}{value:>10.2f}{reference:>11.2f}{published:>11.1f}  {'ok' if ok else 'OFF'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
