"""OMG-LLaVA's InternLM2 tokenizer: ids against raw sentencepiece, upstream token order, decoding.

Oracles: ``sentencepiece.SentencePieceProcessor`` on the same file (never the
loader), upstream's id arithmetic (``[SEG]`` = base vocabulary size, ...), and
decoded strings derived by hand from transformers 4.36 + ``InternLM2Tokenizer``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from altp.models.base import MissingCheckpointError
from altp.models.omg.gcg_output import parse_gcg_text
from altp.models.omg.internlm2_chat import GCG_QUESTIONS
from altp.models.omg.tokenizer import (
    OMG_TINY_TOKENIZER_DIR,
    decode_answer,
    encode_gcg_prompt,
    load_internlm2_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = OMG_TINY_TOKENIZER_DIR / "tokenizer.model"


@pytest.fixture(scope="module")
def sp() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(MODEL_FILE))


@pytest.fixture(scope="module")
def tiny():
    return load_internlm2_tokenizer(OMG_TINY_TOKENIZER_DIR)


@pytest.mark.parametrize(
    "text",
    [
        "The image shows a small red circle in the top left corner, partly hidden.",
        GCG_QUESTIONS[3],
        "two  spaces,\nnewline and ümlaut 中文 42",
        " leading space",
    ],
)
def test_plain_text_ids_are_raw_sentencepiece_with_bos(tiny, sp, text):
    tok, _ = tiny
    assert tok.encode(text) == [sp.bos_id(), *sp.encode(text)]
    assert tok.encode(text, add_special_tokens=False) == sp.encode(text)


def test_chat_and_omg_tokens_are_single_ids_in_upstream_order(tiny, sp):
    tok, ids = tiny
    v = sp.get_piece_size()  # base vocabulary, from the file itself
    # InternLM2 layout: <|im_end|>, <|im_start|> are the last two ids (92542, 92543 of 92544).
    assert (sp.piece_to_id("<|im_end|>"), sp.piece_to_id("<|im_start|>")) == (v - 2, v - 1)
    expected = {
        "<|im_end|>": v - 2,
        "<|im_start|>": v - 1,
        "[SEG]": v,
        "<p>": v + 1,
        "</p>": v + 2,
        "<region>": v + 3,
        "<mark>": v + 4,
    }
    for name, i in expected.items():
        assert tok.encode(name, add_special_tokens=False) == [i], name
    assert (ids.im_end, ids.im_start) == (v - 2, v - 1)
    added = (ids.seg, ids.p_open, ids.p_close, ids.region, ids.mark)
    assert added == (v, v + 1, v + 2, v + 3, v + 4)
    assert (ids.bos, ids.eos, ids.base_vocab) == (sp.bos_id(), sp.eos_id(), v)
    assert ids.stop_ids == (sp.eos_id(), v - 2)
    assert len(tok) == v + 5


@pytest.mark.parametrize("question", GCG_QUESTIONS)
def test_gcg_prompt_ids_are_template_pieces_in_order(tiny, sp, question):
    tok, ids = tiny
    before, after = encode_gcg_prompt(tok, question)
    # '<|im_start|>user\n<image>\n{q}<|im_end|>\n<|im_start|>assistant\n', split at <image>;
    # every text chunk between chat tokens is sentencepiece-encoded on its own.
    assert before == [sp.bos_id(), ids.im_start, *sp.encode("user\n")]
    assert after == [
        *sp.encode("\n" + question),
        ids.im_end,
        *sp.encode("\n"),
        ids.im_start,
        *sp.encode("assistant\n"),
    ]


def test_gcg_answer_round_trips_to_caption_and_phrase(tiny):
    tok, ids = tiny
    answer = tok.encode(
        "<p> a red circle </p> [SEG] on the left.<|im_end|>", add_special_tokens=False
    )
    assert answer.count(ids.seg) == 1 and answer[-1] == ids.im_end
    decoded = decode_answer(tok, answer)
    # transformers 4.36: the text runs between [SEG]/<p>/</p> are decoded on their own
    # (sentencepiece drops the dummy-prefix space only) and joined with one space;
    # InternLM2 adds a space before <|im_end|> after text.
    assert decoded == "<p>  a red circle  </p>   [SEG]   on the left.<|im_end|>"
    assert parse_gcg_text(decoded) == ("a red circle on the left.", ["a red circle"])


def test_decode_cleans_up_like_internlm2_and_decodes_byte_fallback(tiny, sp):
    tok, _ = tiny
    ids = sp.encode("a dog 's toy , café\n")
    assert any(sp.is_byte(i) for i in ids)  # "é" and "\n" are byte pieces in the tiny model
    # InternLM2's convert_tokens_to_string always applies clean_up_tokenization.
    assert decode_answer(tok, ids) == "a dog's toy, café"
    two = tok.encode("<p> blue star </p>[SEG]<p> cyan ring </p>[SEG].", add_special_tokens=False)
    assert parse_gcg_text(decode_answer(tok, two)) == (
        "blue star cyan ring .",
        ["blue star", "cyan ring"],
    )


def test_missing_tokenizer_model_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(MissingCheckpointError) as err:
        load_internlm2_tokenizer(tmp_path / "internlm2-chat-7b")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "internlm2-chat-7b" / "tokenizer.model") in msg
    assert "https://huggingface.co/internlm/internlm2-chat-7b" in msg


def _renamed_model(dst: Path) -> int:
    """The tiny model with InternLM2's original piece names at the chat ids."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(MODEL_FILE.read_bytes())
    v = len(proto.pieces)
    proto.pieces[v - 2].piece = "[UNUSED_TOKEN_145]"
    proto.pieces[v - 1].piece = "[UNUSED_TOKEN_146]"
    dst.mkdir()
    (dst / "tokenizer.model").write_bytes(proto.SerializeToString())
    return v


def test_tokenizer_config_names_the_chat_ids_like_the_real_folder(tmp_path):
    v = _renamed_model(tmp_path / "m")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        load_internlm2_tokenizer(tmp_path / "m")
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    names = {0: "<unk>", 1: "<s>", 2: "</s>", v - 2: "<|im_end|>", v - 1: "<|im_start|>"}
    config = {  # the shape of internlm2-chat-7b's tokenizer_config.json
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": name, "special": True, **entry} for i, name in names.items()
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
    }
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps(config))
    tok, ids = load_internlm2_tokenizer(tmp_path / "m")
    assert (ids.im_end, ids.im_start, ids.seg) == (v - 2, v - 1, v)
    assert tok.encode("<|im_start|>user", add_special_tokens=False)[0] == v - 1
    assert decode_answer(tok, [v - 1, v - 2]) == "<|im_start|><|im_end|>"
    assert tok.encode("hi</s>") == [1, *tok.encode("hi", add_special_tokens=False), 2]


def test_build_script_reproduces_the_shipped_asset(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_omg_tiny_tokenizer as build
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    out = build.build(tmp_path)
    assert out.read_bytes() == MODEL_FILE.read_bytes()
    assert MODEL_FILE.stat().st_size < 100_000


def _fast_converter_twin(sp: spm.SentencePieceProcessor):
    """What remote ``InternLM2Converter`` builds from the tiny model (tokenizers library)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    vocab, _, merges = SentencePieceExtractor(str(MODEL_FILE)).extract()
    tk = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1),
        ]
    )
    chat = ["<unk>", "<s>", "</s>", "<|im_end|>", "<|im_start|>"]
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in chat])
    omg = ["[SEG]", "<p>", "</p>", "<region>", "<mark>"]
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in omg])
    assert [tk.token_to_id(t) for t in omg] == list(
        range(sp.get_piece_size(), sp.get_piece_size() + 5)
    )
    return tk


@pytest.mark.parametrize(
    "text",
    [
        "<p> a red circle </p> [SEG] on the left.<|im_end|>",
        "A <p>red circle</p>[SEG], and <p> a blue star </p> [SEG] .\ncafé</s>",
    ],
)
def test_fast_class_decode_matches_the_tokenizers_library(tiny, sp, text):
    tok, _ = tiny
    twin = _fast_converter_twin(sp)
    ids = tok.encode(text, add_special_tokens=False)
    assert twin.encode(text, add_special_tokens=False).ids == ids  # same ids either class
    expected = twin.decode(ids, skip_special_tokens=False).strip()
    assert decode_answer(tok, ids, upstream_class="InternLM2TokenizerFast") == expected
    slow_caption, slow_phrases = parse_gcg_text(decode_answer(tok, ids))
    fast_caption, fast_phrases = parse_gcg_text(expected)
    assert slow_phrases == fast_phrases
    # The classes differ only in spaces before punctuation next to the tags.
    assert re.sub(r" (?=[.,])", "", slow_caption) == re.sub(r" (?=[.,])", "", fast_caption)


@pytest.mark.parametrize(
    "config",
    [  # internlm2-chat-7b's own config.json, and GLaMM's llava one (AutoTokenizer's trap there)
        {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
         "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config"}},
        {"architectures": ["GLaMMForCausalLM"], "model_type": "llava"},
    ],
)
def test_config_json_next_to_the_tokenizer_changes_nothing(tmp_path, sp, config):
    """The loader builds its class from tokenizer.model itself, never from config.json."""
    folder = tmp_path / "internlm2-chat-7b"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(MODEL_FILE.read_bytes())
    (folder / "config.json").write_text(json.dumps(config))
    tok, ids = load_internlm2_tokenizer(folder)
    text = "The image shows a red circle."
    assert tok.encode(text) == [sp.bos_id(), *sp.encode(text)]
    before, after = encode_gcg_prompt(tok, GCG_QUESTIONS[0])
    assert before == [sp.bos_id(), ids.im_start, *sp.encode("user\n")]
    assert after[: len(sp.encode("\n" + GCG_QUESTIONS[0]))] == sp.encode("\n" + GCG_QUESTIONS[0])
