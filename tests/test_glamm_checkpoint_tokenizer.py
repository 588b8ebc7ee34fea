"""GLaMM's tokenizer loaded from a checkpoint's sentencepiece files (no model needed).

The folder is shaped like the one GLaMM's ``save_pretrained`` writes: ``tokenizer.model``
(a LLaMA-style sentencepiece BPE model trained here, deterministically), the three JSON
files, no ``tokenizer.json``, and usually GLaMM's ``config.json`` (``"model_type": "llava"``),
which once sent transformers 5's ``AutoTokenizer`` to a backend without the dummy prefix.

Oracles: ``sentencepiece.SentencePieceProcessor`` on the same file plus the added
tokens' ids from ``added_tokens.json``, combined by upstream's rule (transformers
4.28's slow ``LlamaTokenizer.tokenize``): split the text at added tokens, strip the
whitespace on both sides of each, ``sp.encode`` every remaining piece on its own, so
a piece after an added token also gets the dummy prefix (``<im_end> ▁provides``).
That rule, and the decoded strings below, were checked against transformers 4.28.1
itself on these fixtures (same ids for the GCG prompt, 13 probe texts and 3000
random id sequences per fixture variant).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from altp.models.slow_llama_tokenizer import SlowLlamaTokenizer, load_slow_llama_tokenizer
from altp.models.tokenizer import (
    GLAMM_ADDED_TOKENS,
    TINY_TOKENIZER_DIR,
    encode_like_upstream,
    gcg_prompt,
    load_glamm_tokenizer,
    parse_gcg_output,
    tokenize_with_image,
)

spm = pytest.importorskip("sentencepiece")

# The config.json GLaMM's LlavaConfig writes (only the fields that steer AutoTokenizer).
GLAMM_CONFIG = {"architectures": ["GLaMMForCausalLM"], "model_type": "llava", "vocab_size": 32007}
_ADDED = re.compile("(" + "|".join(re.escape(t) for t in GLAMM_ADDED_TOKENS) + ")")


def _added_token(content: str) -> dict:
    """An AddedToken as later transformers versions serialise it in tokenizer_config.json."""
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    """LLaMA's settings: BPE, byte fallback, dummy prefix, whitespace kept, ids 0-2 = <unk> <s> </s>."""
    text = (gcg_prompt().replace("<image>", "") + "\n") * 3 + "a red circle left of a blue square\n" * 5
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=buf, vocab_size=400, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, character_coverage=1.0, normalization_rule_name="identity", minloglevel=2, num_threads=1)
    return buf.getvalue()


def _folder(out: Path, model: bytes, *, config_json: bool = True, variant: str = "plain"):
    """GLaMM-GCG's tokenizer files in ``out``; returns (sentencepiece processor, base vocab)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    v = sp.get_piece_size()
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False, "model_max_length": 512}
    special_map: dict = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    if variant == "serialised":  # a later transformers' save: AddedToken dicts, "legacy": false
        config.update({k: _added_token(config[k]) for k in ("bos_token", "eos_token", "unk_token")}, legacy=False)
        special_map.update({k: _added_token(special_map[k]) for k in ("bos_token", "eos_token", "unk_token")})
    if variant == "stale_tokenizer_json":  # upstream's use_fast=False never reads it
        (out / "tokenizer.json").write_bytes((TINY_TOKENIZER_DIR / "tokenizer.json").read_bytes())
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "special_tokens_map.json").write_text(json.dumps(special_map))
    (out / "added_tokens.json").write_text(json.dumps({t: v + i for i, t in enumerate(GLAMM_ADDED_TOKENS)}))
    if config_json:
        (out / "config.json").write_text(json.dumps(GLAMM_CONFIG))
    return sp, v


def _upstream_ids(sp, text: str, base: int) -> list[int]:
    """4.28's slow LlamaTokenizer without BOS, built from sentencepiece and added_tokens.json only."""
    parts = _ADDED.split(text)  # [text, token, text, ..., text]
    ids: list[int] = []
    for i, part in enumerate(parts):
        if i % 2:
            ids.append(base + GLAMM_ADDED_TOKENS.index(part))
            continue
        part = part.lstrip() if i > 0 else part
        part = part.rstrip() if i < len(parts) - 1 else part
        ids += sp.encode(part) if part else []
    return ids


@pytest.mark.parametrize(("config_json", "variant"), [
    (True, "plain"),  # GLaMM's own save_pretrained folder: the case that used to lose the prefix space
    (False, "plain"),
    (True, "serialised"),
    (True, "stale_tokenizer_json"),
])
def test_gcg_prompt_ids_are_upstreams_whatever_the_folder_metadata(tmp_path, model_bytes, config_json, variant):
    sp, v = _folder(tmp_path / "tok", model_bytes, config_json=config_json, variant=variant)
    tok, ids = load_glamm_tokenizer(tmp_path / "tok")
    assert isinstance(tok, SlowLlamaTokenizer)
    assert (ids.base_vocab, ids.im_start, ids.im_end, ids.seg, ids.bos, ids.eos) == (v, v, v + 1, v + 4, 1, 2)
    prefix, suffix = tokenize_with_image(gcg_prompt(), tok)
    # upstream tokenizer_image_token: split at <image>, tokenise each chunk, BOS only before the first
    head, tail = gcg_prompt().split("<image>")
    assert prefix == [sp.bos_id(), *_upstream_ids(sp, head, v)]
    assert suffix == _upstream_ids(sp, tail, v)
    # the two positions the config.json trap broke: word-start pieces at the start and after <im_end>
    assert sp.id_to_piece(prefix[1]) == "▁A"
    assert (prefix[-1], suffix[0]) == (ids.im_start, ids.im_end)
    assert sp.id_to_piece(suffix[1]).startswith("▁p")  # "<im_end> provides" -> <im_end> ▁p...
    assert sp.id_to_piece(prefix[-2]) != "▁"  # "The <im_start>": the space before it is stripped, not a piece


def test_all_seven_added_tokens_split_and_strip_like_upstream(tmp_path, model_bytes):
    sp, v = _folder(tmp_path / "tok", model_bytes)
    tok, _ = load_glamm_tokenizer(tmp_path / "tok")
    for i, t in enumerate(GLAMM_ADDED_TOKENS):
        assert tok(t, add_special_tokens=False)["input_ids"] == [v + i], t
    text = "The <im_start> x <im_end>a <bbox>b<point> c [SEG]  left <p> A red circle </p>."
    enc = sp.encode
    expected = [*enc("The"), v, *enc("x"), v + 1, *enc("a"), v + 2, *enc("b"), v + 3, *enc("c"), v + 4,
                *enc("left"), v + 5, *enc("A red circle"), v + 6, *enc(".")]
    assert expected == _upstream_ids(sp, text, v)
    assert tok(text, add_special_tokens=False)["input_ids"] == expected
    assert tok(text)["input_ids"] == [sp.bos_id(), *expected]
    assert encode_like_upstream(text, tok) == expected


def test_decode_joins_parts_like_upstream_slow_llama(tmp_path, model_bytes):
    """Expected strings derived by hand from 4.28's ``_decode`` + ``LlamaTokenizer.convert_tokens_to_string``:
    parts between added tokens joined by one space; a special token after text gets " " + text + token."""
    sp, v = _folder(tmp_path / "tok", model_bytes)
    tok, ids = load_glamm_tokenizer(tmp_path / "tok")
    enc = sp.encode
    answer = [ids.p_start, *enc("A red circle"), ids.p_end, ids.seg, *enc("left."), ids.eos]
    text = tok.decode(answer, skip_special_tokens=False)
    assert text == "<p> A red circle </p> [SEG]  left.</s>"
    assert parse_gcg_output(text) == ("A red circle left.", ["A red circle"])
    assert tok.decode([1, *enc("A chat"), v, v + 1, *enc("provides"), 2]) == "<s>A chat <im_start> <im_end>  provides</s>"
    assert tok.decode([*enc("red"), 2, 2]) == " red</s></s>"
    assert tok.decode([ids.seg, *enc("."), ids.p_start]) == "[SEG] " + sp.decode(enc(".")) + " <p>"
    assert tok.decode([ids.seg, *enc("."), ids.p_start], clean_up_tokenization_spaces=True).startswith("[SEG].")


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_bad_folders_fail_in_one_line(tmp_path, model_bytes):
    _folder(tmp_path / "gap", model_bytes)
    _edit_json(tmp_path / "gap" / "added_tokens.json", **{"</p>": 500})
    with pytest.raises(ValueError, match=r"'</p>' has id 500, expected 406") as err:
        load_slow_llama_tokenizer(tmp_path / "gap")
    assert "\n" not in str(err.value)
    _folder(tmp_path / "eos", model_bytes)
    _edit_json(tmp_path / "eos" / "tokenizer_config.json", add_eos_token=True)
    with pytest.raises(ValueError, match="add_eos_token=True"):
        load_slow_llama_tokenizer(tmp_path / "eos")
    _folder(tmp_path / "name", model_bytes)
    _edit_json(tmp_path / "name" / "special_tokens_map.json", bos_token="<bos>")
    with pytest.raises(ValueError, match="bos_token '<bos>' is not a piece of tokenizer.model"):
        load_slow_llama_tokenizer(tmp_path / "name")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(GLAMM_CONFIG))
    with pytest.raises(FileNotFoundError, match="neither tokenizer.model nor tokenizer.json"):
        load_glamm_tokenizer(tmp_path / "empty")


def test_official_folder_with_bf16_rope_builds_with_upstream_prompt_ids(tmp_path, model_bytes):
    """Everything in one folder as GLaMM's save_pretrained leaves it: config.json (model_type llava),
    .bin shards with bf16 rotary_emb.inv_freq, the slow-tokenizer files; tokenizer_dir defaults to it."""
    import torch

    from altp.models.glamm_build import build_glamm, build_glamm_tiny
    from altp.models.glamm_convert import write_official_checkpoint

    tiny = build_glamm_tiny(seed=3, num_layers=2)
    ckpt, clip = tmp_path / "GLaMM-GCG", tmp_path / "clip"
    inv = tiny.llm.model.rotary_emb.inv_freq.to(torch.bfloat16)
    write_official_checkpoint(tiny, ckpt, clip, extra={
        f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv.clone() for i in range(2)})
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "llava"
    sp, v = _folder(ckpt, model_bytes, config_json=False)  # keep the converter's config.json
    model = build_glamm(checkpoint_dir=str(ckpt), clip_dir=str(clip), dtype="float32", device="cpu",
                        max_new_tokens=4, sam=tiny.config.sam)
    head, tail = gcg_prompt().split("<image>")
    assert model.prefix_ids == [sp.bos_id(), *_upstream_ids(sp, head, v)]
    assert model.suffix_ids == _upstream_ids(sp, tail, v)
    assert model.llm.model.rotary_emb.inv_freq.dtype == torch.float32
