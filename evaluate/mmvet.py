"""MM-Vet: the file its grader takes, from a LLaVA answer file.

MM-Vet is graded by GPT-4 (its official grader, the MM-Vet evaluator or its online server),
not locally: masktok writes the results file that grader reads and scores nothing itself.
The file is what LLaVA-1.5's ``scripts/convert_mmvet_for_eval.py`` writes: one JSON object
``{"v1_<question_id>": answer text}`` in answer-file order, ``json.dump(..., indent=2)``.
Checked against the question file: MM-Vet's grader reads ``results[id]`` for each of its
questions and stops (KeyError) at the first one the file lacks, so a question without an answer
is written with an empty answer after the others (graded as the empty answer it is) and
reported; an answer of no question is left out and reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..schemas.errors import DataError
from ..schemas.eval_files import file_format
from .benchmarks import Input, QuestionFormat, Submission
from .questions import jsonl_questions, read_question_file
from .scoring import id_key, read_answer_file, require_pairs


def mmvet_results(answers_path: Path) -> dict[str, str]:
    """``{"v1_<question_id>": text}`` of an answer file, in file order. DataError for a file
    that is no answer file or answers a question twice (where LLaVA keeps the last)."""
    results: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for answer in read_answer_file(answers_path):
        key = f"v1_{id_key(answer.question_id)}"
        if key in results:
            raise DataError(f"{answers_path}:{answer.number}: second answer to question "
                            f"{answer.question_id!r} (first on line {first_line[key]})")
        results[key], first_line[key] = answer.text, answer.number
    return results


def write_mmvet_submission(answers_path: Path, out_path: Path,
                           questions_path: Path | None = None) -> tuple[dict[str, str], list[str], list[str]]:
    """Write MM-Vet's results file for GPT-4 grading (see the module docstring); return it, the
    keys of the questions of ``questions_path`` it had no answer for (written "") and those of
    the answers to no question (left out). For an answer file that answers every question
    once, byte for byte what convert_mmvet_for_eval.py writes. DataError when no answer is of
    these questions."""
    results = mmvet_results(answers_path)
    missing: list[str] = []
    unpaired: list[str] = []
    if questions_path is not None:
        asked = [f"v1_{id_key(q.question_id)}" for q in read_question_file(questions_path).questions]
        known = set(asked)
        unpaired = [key for key in results if key not in known]
        require_pairs(len(results) - len(unpaired), answers_path, str(questions_path))
        missing = [key for key in asked if key not in results]
        results = {**{k: v for k, v in results.items() if k in known}, **{k: "" for k in missing}}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    return results, missing, unpaired


#: MM-Vet's image names (``v1_0.png`` ... ``v1_217.png``): how its question file is known,
#: whatever it is called.
_MM_VET_IMAGE = re.compile(r"v1_\d+\.\w+")


def _is_mm_vet(path: Path) -> bool:
    """MM-Vet's file (``llava-mm-vet.jsonl``, JSON Lines read by model_vqa.py with 1024 new
    tokens), known by its content: every question's image is one of MM-Vet's ``v1_<n>`` images.
    The file's name plays no part (a renamed copy still gets 1024); ``masktok answer
    --benchmark mmvet`` names it outright."""
    if file_format(path) != "jsonl":
        return False
    seen = False
    with Path(path).open(encoding="utf-8-sig", errors="replace") as fh:
        for line in filter(str.strip, fh):  # stops at the first other image: a VQAv2 file costs one line
            try:
                image = json.loads(line).get("image")
            except (json.JSONDecodeError, AttributeError):
                return False
            if not isinstance(image, str) or not _MM_VET_IMAGE.fullmatch(image):
                return False
            seen = True
    return seen


def _upload(answers: Path, questions: Path, out: Path) -> tuple[int, int, int]:
    results, missing, unpaired = write_mmvet_submission(answers, out, questions)
    return len(results), len(missing), len(unpaired)


ENTRIES = (
    QuestionFormat("mm-vet", 1024, _is_mm_vet, lambda path, lang: jsonl_questions(path)),
    Submission("mmvet", 'MM-Vet ({"v1_<id>": answer}) for its official GPT-4 grader, as LLaVA\'s '
                        "convert_mmvet_for_eval.py.", "The JSON for MM-Vet's GPT-4 grader.",
               _upload, Input("required", "MM-Vet's question file (llava-mm-vet.jsonl): every question needs "
                                          "an answer, or MM-Vet's grader stops."),
               missing="written empty (MM-Vet's grader stops at a missing one)"),
)
