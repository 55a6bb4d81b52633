"""Prompt and training ids equal LLaVA-1.5's for a Llama (SentencePiece) LM folder under the
installed transformers (issue 38 item 3).

LLaVA-1.5 encodes text with transformers 4.37.2's slow LlamaTokenizer: SentencePiece itself.
The reference below is that algorithm written here from SentencePiece directly (no
transformers tokenizer involved), driven through LLaVA's own steps: ``conv_vicuna_v1`` /
``conv_llava_plain`` prompts, ``tokenizer_image_token``, ``preprocess_v1``'s and
``preprocess_plain``'s concatenations (llava/conversation.py, mm_utils.py, train/train.py).

The LM folder is built as Vicuna's is: a ``tokenizer.model`` whose whitespace-only pieces
("▁▁", "▁▁▁▁") score lowest, so SentencePiece merges them last, and a ``tokenizer.json``
(what transformers 5 reads) that ranks the whitespace merges first, as the file Vicuna
ships does. The texts are the cases issue 38 measured: a double space, a question that
ends in a space, four-space indentation, an answer that starts with a space.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import sentencepiece
import transformers
from sentencepiece import sentencepiece_model_pb2

from masktok.trainer.data import templates
from masktok.trainer.data.templates import IMAGE_TOKEN_INDEX, SYSTEM_V1

WORDS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
         "detailed, and polite answers to the user's questions. USER: What colour is the square? ASSISTANT: Sure, "
         "the square is red. What is written on the sign? Two spaces between words. def answer(x):\n    return x + 1"
         "\n\nDescribe the image. A red square on a white background.")
CORPUS = [WORDS, WORDS.replace(" ", "  "), "    return x\n        return y", "Sure  thing,  two  spaces."]
SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}


def _model() -> bytes:
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 8), model_writer=out, model_type="bpe", vocab_size=600, hard_vocab_limit=False,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity", byte_fallback=True,
        allow_whitespace_only_pieces=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    model = sentencepiece_model_pb2.ModelProto.FromString(out.getvalue())
    for piece in model.pieces:  # Llama's whitespace pieces: in the vocabulary, merged last
        if len(piece.piece) > 1 and set(piece.piece) == {"▁"}:
            piece.score = -1e9
    return model.SerializeToString()


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """(a Vicuna-like tokenizer folder, its SentencePiece model)."""
    proto = _model()
    bare, folder = tmp_path_factory.mktemp("bare"), tmp_path_factory.mktemp("vicuna")
    (bare / "tokenizer.model").write_bytes(proto)
    transformers.AutoTokenizer.from_pretrained(str(bare), legacy=False).save_pretrained(folder)
    fast = json.loads((folder / "tokenizer.json").read_text())
    merges = fast["model"]["merges"]
    fast["model"]["merges"] = sorted(merges, key=lambda m: set("".join(m)) != {"▁"})  # whitespace merges first
    (folder / "tokenizer.json").write_text(json.dumps(fast))
    shutil.copy(bare / "tokenizer.model", folder / "tokenizer.model")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="LlamaTokenizer", legacy=False)  # Vicuna-1.5's tokenizer_config.json
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder, proto


# ---- LLaVA's slow Llama tokenizer (transformers 4.37.2), from SentencePiece ------------------

class Llava437:
    """``tokenizer(text).input_ids`` of LlamaTokenizer(legacy=False, add_prefix_space=True)."""

    def __init__(self, proto: bytes) -> None:
        model = sentencepiece_model_pb2.ModelProto.FromString(proto)
        model.normalizer_spec.add_dummy_prefix = False  # non-legacy: the prefix is added by hand
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model.SerializeToString())

    def pieces(self, text: str) -> list[str]:
        if not text:
            return []
        text = "▁" + text.replace("▁", " ")
        out: list[str] = []
        for part in re.split("(<unk>|<s>|</s>)", text):
            if part in SPECIALS:
                out.append(part)
            elif part and part.startswith(("▁", " ")):  # encoded behind "<unk>", which is then dropped
                out += self.sp.encode("<unk>" + part, out_type=str)[len(self.sp.encode("<unk>", out_type=str)):]
            elif part:
                out += self.sp.encode(part, out_type=str)
        if len(out) > 1 and out[0] == "▁" and out[1] in SPECIALS:
            out = out[1:]
        return out

    def __call__(self, text: str) -> list[int]:
        return [1] + [SPECIALS[p] if p in SPECIALS else self.sp.piece_to_id(p) for p in self.pieces(text)]


def tokenizer_image_token(prompt: str, call: Llava437) -> list[int]:
    """LLaVA's mm_utils.tokenizer_image_token: each chunk with its BOS, only the first kept."""
    chunks = [call(chunk) for chunk in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for i, chunk in enumerate(chunks):
        ids += ([IMAGE_TOKEN_INDEX] if i else []) + chunk[1:]
    return ids


def vicuna_v1(messages: list[str | None]) -> str:
    """conv_vicuna_v1.get_prompt(): roles alternate; None (or "") ends with "ROLE:"."""
    seps, ret = [" ", "</s>"], SYSTEM_V1 + " "
    for i, message in enumerate(messages):
        role = ("USER", "ASSISTANT")[i % 2]
        ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return ret


# ---- tests -----------------------------------------------------------------------------------

def test_the_reference_is_sentencepiece_and_the_installed_tokenizer_is_not(lm) -> None:
    """The premise: LLaVA's pieces for a double space and a spaced answer, by hand, and the
    installed transformers' tokenizer of the same folder differing on them."""
    folder, proto = lm
    ref = Llava437(proto)
    assert ref.pieces("Two  spaces") == ["▁Two", "▁", "▁spaces"]
    assert ref.pieces("ASSISTANT:  Sure") == ["▁ASSISTANT", ":", "▁", "▁Sure"]
    after = ref.pieces("a</s>USER")  # non-legacy: no "▁" after a special token
    assert after[:2] == ["▁a", "</s>"] and not after[2].startswith("▁")
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert hf("Two  spaces", add_special_tokens=False).input_ids != ref("Two  spaces")[1:]


CASES = {
    "double space": ("What is written on  the sign?", "Two  spaces between words."),
    "question ends in a space": ("What colour is the square? ", "Red."),
    "four-space indentation": ("Describe the image.", "def answer(x):\n    return x + 1"),
    "answer starts with a space": ("What colour is the square?", " Sure, the square is red."),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text-only"])
def test_v1_training_ids_are_llava_preprocess_v1s(lm, case: str, has_image: bool) -> None:
    from masktok.trainer.runtime import load_tokenizer

    folder, proto = lm
    question, answer = CASES[case]
    turns = [{"from": "human", "value": question + ("\n<image>" if has_image else "")}, {"from": "gpt", "value": answer},
             {"from": "human", "value": "Why?  Say  it."}, {"from": "gpt", "value": " Because it is."}]
    first = ("<image>\n" + question.strip()) if has_image else question  # preprocess_multimodal moves <image>
    prompt = vicuna_v1([first, answer, "Why?  Say  it.", " Because it is."])
    ref = Llava437(proto)
    expected = tokenizer_image_token(prompt, ref) if has_image else ref(prompt)
    ids, labels = templates.v1(turns, load_tokenizer(folder), has_image)
    assert ids == expected
    assert len(labels) == len(ids) and labels[-1] == SPECIALS["</s>"]


@pytest.mark.parametrize("case", CASES)
def test_v1_generation_prompt_is_llavas_eval_prompt(lm, case: str) -> None:
    """model_vqa_loader.py: "<image>\\n" + the question as the file has it, then "ASSISTANT:"."""
    from masktok.trainer.runtime import load_tokenizer

    folder, proto = lm
    question = CASES[case][0]
    expected = tokenizer_image_token(vicuna_v1(["<image>\n" + question, None]), Llava437(proto))
    assert templates.v1_prompt(question, load_tokenizer(folder), has_image=True) == expected


@pytest.mark.parametrize("caption", [" the square, red  and white\n", "Two  spaces between words. ", "plain caption"])
def test_plain_keeps_the_caption_as_llava_preprocess_plain(lm, caption: str) -> None:
    """"<image>" + caption + "\\n" (conv_llava_plain's sep), the caption untouched: its leading
    space, double space and trailing newline stay; loss on everything after the image."""
    from masktok.trainer.runtime import load_tokenizer

    folder, proto = lm
    turns = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": caption}]
    expected = tokenizer_image_token("<image>" + caption + "\n", Llava437(proto))
    ids, labels = templates.plain(turns, load_tokenizer(folder))
    assert ids == expected and labels == [-100, -100] + expected[2:]


def test_a_saved_checkpoint_tokenizer_keeps_llavas_ids(lm, tmp_path: Path) -> None:
    """transformers 5's save_pretrained drops tokenizer.model and legacy; the saved folder (a
    stage-2 checkpoint's llm/) must still give LLaVA's ids."""
    from masktok.trainer.data.llama_text import save_tokenizer
    from masktok.trainer.runtime import load_tokenizer

    folder, proto = lm
    save_tokenizer(load_tokenizer(folder), tmp_path / "llm")
    text = "ASSISTANT:  Sure</s>USER:  Two  spaces"
    assert templates.encode(load_tokenizer(tmp_path / "llm"), text) == Llava437(proto)(text)[1:]
