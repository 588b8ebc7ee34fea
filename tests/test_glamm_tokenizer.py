"""GLaMM tokenizer, prompt and output parsing (no model needed)."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from altp.models.tokenizer import (
    GLAMM_ADDED_TOKENS,
    TINY_TOKENIZER_DIR,
    _check_added_tokens,
    encode_like_upstream,
    gcg_prompt,
    load_glamm_tokenizer,
    parse_gcg_output,
    tokenize_with_image,
)

ROOT = Path(__file__).resolve().parents[1]

# Typed from groundingLMM eval/gcg/infer.py (the llava_v1 template), not from the code under test.
EXPECTED_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: The <im_start><image><im_end> provides an "
    "overview of the picture.\nCould you please give me a detailed description of the image? Please respond "
    "with interleaved     segmentation masks for the corresponding parts of the answer. ASSISTANT:"
)


@pytest.fixture(scope="module")
def tiny():
    return load_glamm_tokenizer(TINY_TOKENIZER_DIR)


def test_prompt_is_upstreams_exactly():
    assert gcg_prompt() == EXPECTED_PROMPT
    assert "interleaved" + " " * 5 + "segmentation" in gcg_prompt()


def test_tiny_tokenizer_ids_follow_base_vocab_in_upstream_order(tiny):
    tok, ids = tiny
    assert GLAMM_ADDED_TOKENS == ("<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>")
    got = [tok.convert_tokens_to_ids(t) for t in GLAMM_ADDED_TOKENS]
    assert got == list(range(ids.base_vocab, ids.base_vocab + 7))
    assert len(tok) == ids.base_vocab + 7
    assert (ids.im_start, ids.im_end, ids.seg, ids.p_start, ids.p_end) == (got[0], got[1], got[4], got[5], got[6])
    assert (ids.bos, ids.eos) == (1, 2)  # LLaMA's <s>, </s>
    for t, i in zip(GLAMM_ADDED_TOKENS, got, strict=True):
        assert tok(f"a {t} b", add_special_tokens=False)["input_ids"].count(i) == 1


def test_tiny_tokenizer_loads_with_autotokenizer_offline():
    tok = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), local_files_only=True)
    assert tok.convert_tokens_to_ids("[SEG]") == load_glamm_tokenizer(TINY_TOKENIZER_DIR)[1].seg


def test_prompt_tokenisation_splits_at_image_like_upstream(tiny):
    tok, ids = tiny
    prefix, suffix = tokenize_with_image(gcg_prompt(), tok)
    assert prefix[0] == ids.bos and prefix[-1] == ids.im_start
    assert suffix[0] == ids.im_end and ids.bos not in suffix
    assert tok.unk_token_id not in prefix + suffix
    # upstream's slow tokenizer strips the spaces around added tokens: "The <im_start>" -> "The<im_start>"
    want = EXPECTED_PROMPT.replace(" <im_start><image><im_end> ", "<im_start><im_end>")
    assert tok.decode(prefix + suffix) == "<s>" + want


def test_spaces_around_added_tokens_are_stripped_like_upstream(tiny):
    tok, ids = tiny
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert encode_like_upstream("a red <p> circle </p>  [SEG] left", tok) == (
        enc("a red") + [ids.p_start] + enc("circle") + [ids.p_end, ids.seg] + enc("left"))
    assert encode_like_upstream("<p>", tok) == [ids.p_start]


def test_prompt_needs_exactly_one_image(tiny):
    with pytest.raises(ValueError, match="exactly one <image>"):
        tokenize_with_image("no image here", tiny[0])


def _fast_tokenizer(added: list[str]) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_tokens(added, special_tokens=True)
    return fast


def test_missing_added_tokens_are_refused():
    with pytest.raises(ValueError, match=r"lacks GLaMM's added tokens \['\[SEG\]'"):
        _check_added_tokens(_fast_tokenizer([t for t in GLAMM_ADDED_TOKENS if t != "[SEG]"]), "x")


def test_wrong_added_token_order_is_refused():
    order = list(GLAMM_ADDED_TOKENS)
    order[4], order[5] = order[5], order[4]  # [SEG] and <p> swapped
    with pytest.raises(ValueError, match="not consecutive in upstream order"):
        _check_added_tokens(_fast_tokenizer(order), "x")
    assert _check_added_tokens(_fast_tokenizer(list(GLAMM_ADDED_TOKENS)), "x").seg == 4 + 4


def test_build_script_is_deterministic(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts/build_tiny_tokenizer.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, cwd=ROOT)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(tmp_path / name, TINY_TOKENIZER_DIR / name, shallow=False), name


@pytest.mark.parametrize(
    ("text", "caption", "phrases"),
    [
        # the ordinary shape of a GLaMM answer (decoded with skip_special_tokens=False)
        ("<p> A red circle</p> [SEG] is left of <p>a blue square</p> [SEG].</s>",
         "A red circle is left of a blue square .", ["A red circle", "a blue square"]),
        # newlines vanish (not replaced by spaces); double spaces are replaced once, then collapsed
        ("The\nimage  shows <p>two\n dogs</p>  [SEG]</s>", "Theimage shows two dogs", ["two dogs"]),
        # only the text after the last "ASSISTANT: " counts
        ("junk <p>x</p> ASSISTANT: the <p>cat</p> [SEG]", "the cat", ["cat"]),
        # any <...> tag is dropped from the caption; single quotes at the ends are stripped
        ("'<bbox>a <p>tree</p> [SEG]'", "a tree", ["tree"]),
        # unclosed phrase: no phrase, tags still dropped
        ("a <p>lonely [SEG]", "a lonely", []),
        ("", "", []),
    ],
)
def test_parse_gcg_output_cases(text, caption, phrases):
    assert parse_gcg_output(text) == (caption, phrases)


def test_tiny_tokenizer_covers_the_synthetic_captions(tiny, tmp_path):
    synthetic = pytest.importorskip("altp.data.synthetic")
    synthetic.write_synthetic_split(tmp_path, split="val", n_images=12, seed=0)
    captions = json.loads((tmp_path / "annotations" / "val_gcg_coco_caption_gt.json").read_text())
    tok = tiny[0]
    for ann in captions["annotations"]:
        target = synthetic.gcg_target_text(ann["caption"], ann["labels"])
        ids = tok(target, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, target
        assert tok.decode(ids) == target
