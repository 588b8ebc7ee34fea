"""GLaMM's tokenizer loaded from a checkpoint's sentencepiece files (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from altp.models.tokenizer import (
    GLAMM_ADDED_TOKENS,
    gcg_prompt,
    load_glamm_tokenizer,
    parse_gcg_output,
    tokenize_with_image,
)


def _sentencepiece_folder(out: Path):
    """A folder shaped like GLaMM-GCG's tokenizer files: a LLaMA-style sentencepiece BPE model
    (byte fallback, dummy prefix, ids 0-2 = <unk> <s> </s>), added_tokens.json, no tokenizer.json."""
    import io

    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    text = (gcg_prompt().replace("<image>", "") + "\n") * 3 + "a red circle left of a blue square\n" * 5
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=buf, vocab_size=400, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, character_coverage=1.0, normalization_rule_name="identity", minloglevel=2)
    out.mkdir(parents=True)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    v = sp.get_piece_size()
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": 512, "legacy": True}))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}))
    (out / "added_tokens.json").write_text(json.dumps({t: v + i for i, t in enumerate(GLAMM_ADDED_TOKENS)}))
    return sp, v


def test_sentencepiece_checkpoint_tokenizer_matches_upstream_slow_ids(tmp_path):
    sp, v = _sentencepiece_folder(tmp_path / "tok")
    tok, ids = load_glamm_tokenizer(tmp_path / "tok")
    assert (ids.base_vocab, ids.seg, ids.bos, ids.eos) == (v, v + 4, 1, 2)
    prefix, suffix = tokenize_with_image(gcg_prompt(), tok)
    # Oracle: upstream's slow tokenizer = sentencepiece on each piece, spaces around added tokens stripped.
    head, tail = gcg_prompt().split("<image>")
    assert prefix == [1, *sp.encode(head.removesuffix("<im_start>").rstrip()), ids.im_start]
    assert suffix == [ids.im_end, *sp.encode(tail.removeprefix("<im_end>").lstrip())]
    answer = tok("<p> A red circle</p> [SEG] left.", add_special_tokens=False)["input_ids"] + [ids.eos]
    assert parse_gcg_output(tok.decode(answer, skip_special_tokens=False)) == ("A red circle left.", ["A red circle"])
