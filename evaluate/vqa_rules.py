"""The answer rules of the VQA family: how an answer is compared with the ten human answers.

- m4c (LLaVA's ``llava/eval/m4c_evaluator.py``): the EvalAI answer processor
  (:func:`normalize_vqa_answer`, quirks included) on both sides, then the VQA soft accuracy of
  its ``TextVQAAccuracyEvaluator`` (:func:`vqa_accuracy`). TextVQA's reference (eval_textvqa.py).
- vqaEval (:func:`vqaeval_accuracy`): VQAv2's official evaluator, GT-Vision-Lab/VQA
  ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` as of a013f00 (2021, its latest): answers
  trimmed of newlines, tabs and outer spaces; only when the ten human answers disagree are they
  and the prediction put through its punctuation and digit/article processing; the human
  answer left out is each answer dict in turn (equal dicts leave together).
- VizWiz (:func:`vizwiz_accuracy`): VizWiz's evaluator (Qing Li's ``vqaEval.py`` of the VizWiz
  VQA challenge): the prediction trimmed and processed, the human answers taken raw; each
  position left out in turn; its contraction table writes most apostrophes as "’".

The official evaluators score what is uploaded, and LLaVA's converters upload the prediction
already through the EvalAI processor: :func:`official_prediction`. So "women's" against ten
"women's" scores 1.00 by m4c (both sides become "women 's") and 0.00 officially ("women 's"
against the raw "women's").
"""

from __future__ import annotations

import re
from collections.abc import Sequence


# The table as m4c has it, oddities kept: the capitalised keys ("Im", "Ive", "Id've", "I'dve")
# never match (words are lowercased first), and "somebody'd" maps to "somebodyd".
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
# m4c's regex, malformed as it is: "(?!<=\d)" is a lookahead for the text "<=" and a digit (never
# there, the next character is the "."), not the lookbehind "(?<!\d)" it was meant to be. So every
# "." not followed by a digit goes: "end." -> "end", "3." -> "3", while "3.5" and ".5" stay.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# m4c calls PERIOD_STRIP.sub("", text, re.UNICODE): the flag lands in ``count``, so at most
# int(re.UNICODE) == 32 periods are removed.
PERIOD_STRIP_COUNT = 32
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PUNCTUATIONS = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")


def _word_tokenize(text: str) -> str:
    """m4c's ``word_tokenize``: lowercase, drop every "," and "?", split off "'s"."""
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _process_punctuation(text: str, comma: re.Pattern[str] = COMMA_STRIP) -> str:
    """m4c's ``process_punctuation`` (vqaEval's with ``comma=VQAEVAL_COMMA``): a punctuation mark
    goes (no space left) where it touches a space in ``text``, or everywhere when ``text`` has a
    comma between digits; else it becomes a space. Then the period rule (PERIOD_STRIP, at most
    32 removals)."""
    digit_comma = comma.search(text) is not None
    out = text
    for mark in PUNCTUATIONS:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def _process_digit_article(text: str, contractions: dict[str, str] = CONTRACTIONS) -> str:
    """m4c's (and vqaEval's) ``process_digit_article``: number words to digits, articles
    dropped, contractions restored, words joined by single spaces."""
    words = [NUMBER_MAP.get(word, word) for word in text.lower().split()]
    return " ".join(contractions.get(word, word) for word in words if word not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """An answer as EvalAI compares it (m4c's ``EvalAIAnswerProcessor.__call__``):
    "The Two dogs." -> "2 dogs", "dont" -> "don't", "2,000" -> "2000", "x-ray" -> "x ray"."""
    text = _word_tokenize(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA soft accuracy, as m4c's ``TextVQAAccuracyEvaluator``: both sides normalised; for each
    human answer left out in turn, min(1, matches among the others / 3); the mean of those. With
    10 answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1."""
    if not gt_answers:
        raise ValueError("no ground-truth answers")
    predicted = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(a) for a in gt_answers]
    accs = []
    for left_out in range(len(humans)):
        matches = sum(1 for i, a in enumerate(humans) if i != left_out and a == predicted)
        accs.append(min(1, float(matches) / 3))
    return sum(accs) / len(accs)


# --- the official evaluators (vqaEval.py of VQAv2, VizWiz's) ------------------------------------

#: vqaEval's comma test (one comma between digits; m4c's COMMA_STRIP takes a run of commas).
VQAEVAL_COMMA = re.compile(r"(\d)(\,)(\d)")
#: What each rule is, as a score names it (``BenchScore.extra["rule"]``).
RULES = {"m4c": "m4c (LLaVA's m4c_evaluator.py: EvalAI normalisation of both sides)",
         "vqav2": "official (GT-Vision-Lab/VQA vqaEval.py a013f00, on the EvalAI-normalised upload)",
         "vizwiz": "official (VizWiz's vqaEval.py: human answers raw, on the EvalAI-normalised upload)"}
#: VizWiz's table keeps the straight apostrophe in these keys and these values; every other
#: apostrophe of VQA's table is "’" there.
_VIZWIZ_STRAIGHT_KEYS = frozenset({"couldn'tve", "hadn'tve"})
_VIZWIZ_STRAIGHT_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
VIZWIZ_CONTRACTIONS: dict[str, str] = {
    (k if k in _VIZWIZ_STRAIGHT_KEYS else k.replace("'", "’")): (v if k in _VIZWIZ_STRAIGHT_VALUES
                                                                 else v.replace("'", "’"))
    for k, v in CONTRACTIONS.items()}


def _trim(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _vqaeval_process(text: str, contractions: dict[str, str] = CONTRACTIONS) -> str:
    """vqaEval's processPunctuation then processDigitArticle."""
    text = _process_punctuation(text, VQAEVAL_COMMA)
    return _process_digit_article(text, contractions)


def official_prediction(text: str) -> str:
    """The answer as LLaVA's converters upload it (convert_vqav2/vizwiz_for_submission.py)."""
    return normalize_vqa_answer(text)


def _leave_one_out(prediction: str, humans: Sequence[str], same: Sequence[Sequence[int]]) -> float:
    """Mean over each human answer i of min(1, matches among the answers not in same[i] / 3)."""
    accs = [min(1.0, sum(1 for j, a in enumerate(humans) if j not in same[i] and a == prediction) / 3)
            for i in range(len(humans))]
    return sum(accs) / len(accs)


def vqaeval_accuracy(uploaded: str, humans: Sequence[str], others: Sequence[str] | None = None) -> float:
    """VQAv2's vqaEval accuracy of an uploaded answer (see the module docstring). ``others``:
    each human answer dict's other fields (answer_id, confidence) as one string, which with the
    processed answer decides which dicts are equal (VQAv2's answer_ids differ: each leaves alone)."""
    if not humans:
        raise ValueError("no ground-truth answers")
    gts = [_trim(a) for a in humans]
    prediction = _trim(uploaded)
    if len(set(gts)) > 1:
        gts = [_vqaeval_process(a) for a in gts]
        prediction = _vqaeval_process(prediction)
    rest = list(others) if others is not None else [str(i) for i in range(len(gts))]
    same = [[j for j in range(len(gts)) if gts[j] == gts[i] and rest[j] == rest[i]] for i in range(len(gts))]
    return _leave_one_out(prediction, gts, same)


def vizwiz_accuracy(uploaded: str, humans: Sequence[str]) -> float:
    """VizWiz's accuracy of an uploaded answer: processed, against the raw human answers."""
    if not humans:
        raise ValueError("no ground-truth answers")
    prediction = _vqaeval_process(_trim(uploaded), VIZWIZ_CONTRACTIONS)
    return _leave_one_out(prediction, list(humans), [[i] for i in range(len(humans))])
