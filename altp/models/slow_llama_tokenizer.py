"""LLaMA's slow sentencepiece tokenizer as GLaMM ran it (transformers 4.28), read from ``tokenizer.model``.

GLaMM loads its tokenizer with ``AutoTokenizer.from_pretrained(path, use_fast=False)``
under transformers 4.28, i.e. the slow ``LlamaTokenizer``. transformers 5's
``AutoTokenizer`` picks a class from the folder's metadata instead: next to the
``config.json`` GLaMM's ``save_pretrained`` writes (``"model_type": "llava"``) it
builds a tokenizers backend whose normalizer only replaces spaces, so
sentencepiece's dummy prefix is lost (``▁A`` -> ``A``). This module therefore
never asks transformers which class to use: :func:`load_slow_llama_tokenizer`
reads the four slow-tokenizer files itself and builds
:class:`SlowLlamaTokenizer`, a :class:`SentencePieceBackend` whose encoding is
``sp.encode`` of the raw ``tokenizer.model``.

What 4.28's slow ``LlamaTokenizer`` does, and so what this class does (read from
4.28's ``tokenization_llama.py`` and ``tokenization_utils.py``; checked against
4.28.1 itself on the tests' fixtures: GCG prompt ids, probe texts, random decodes).
GLaMM pins transformers 4.28.0.dev (commit ``cae78c46``), which predates the
``legacy`` switch of 4.31; that dev commit's decode details are UNVERIFIED here.

* Encoding: the text is split at added tokens; a token from ``added_tokens.json``
  strips the whitespace on both sides of it (4.28 re-adds them as plain strings,
  and plain strings take the "strip left and right by default" branch); every
  remaining piece is ``sp.encode(piece)`` on its own, so each piece, including the
  one right after ``<im_end>``, gets sentencepiece's dummy prefix (``▁provides``).
  4.28 has no ``legacy`` switch: a ``"legacy": false`` in the config is ignored.
  ``<s> </s> <unk>`` split the text too; they strip both sides only when
  ``special_tokens_map.json`` names them as plain strings (4.28 keeps those as
  strings; everything else becomes ``AddedToken(lstrip=False, rstrip=False)``).
* Ids: the sentencepiece model's pieces, then ``added_tokens.json`` in id order;
  those ids must follow the model's last piece without a gap (4.28 refuses a gap).
* Special-token names: ``tokenizer_config.json``, overridden by
  ``special_tokens_map.json`` (4.28's order); each must be a piece of the model.
* Decoding (``_decode``): the tokens are cut at added tokens, each run between them
  goes through ``convert_tokens_to_string`` (sentencepiece-decodes runs between
  ``<s> </s> <unk>``, writing ``" " + run + token`` at a special token that follows
  text), and the parts are joined with ONE SPACE (``spaces_between_special_tokens``);
  ``clean_up_tokenization`` runs only if the config sets it (4.28's LLaMA default
  is off).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AddedToken
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

__all__ = ["SlowLlamaTokenizer", "load_slow_llama_tokenizer"]

_DEFAULT_NAMES = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": None}


class SlowLlamaTokenizer(SentencePieceBackend):
    """``SentencePieceBackend`` that encodes and decodes like transformers 4.28's slow ``LlamaTokenizer``.

    Build it with :func:`load_slow_llama_tokenizer`. Encoding is the base class's
    with ``legacy=True`` (``sp.encode`` per piece between added tokens); decoding
    follows 4.28 (module docstring), not transformers 5's generic join.
    """

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """4.28 ``LlamaTokenizer.convert_tokens_to_string``: sentencepiece-decode runs between special tokens."""
        special = set(self.all_special_tokens)
        out, run, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in special:
                if not prev_special and i != 0:
                    out += " "
                out += self.sp_model.decode(run) + token
                run, prev_special = [], True
            else:
                run.append(token)
                prev_special = False
        return out + self.sp_model.decode(run)

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        spaces_between_special_tokens: bool = True,
        **kwargs: Any,
    ) -> str:
        """4.28 ``PreTrainedTokenizer._decode``: runs between added tokens, parts joined by a space."""
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        n_pieces = self.sp_model.get_piece_size()
        added = {t for t, i in self._added_tokens_encoder.items() if i >= n_pieces}  # 4.28's added_tokens_encoder
        parts: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in added:
                if run:
                    parts.append(self.convert_tokens_to_string(run))
                    run = []
                parts.append(token)
            else:
                run.append(token)
        if run:
            parts.append(self.convert_tokens_to_string(run))
        text = (" " if spaces_between_special_tokens else "").join(parts)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean else text


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _special_token(value: Any, *, strip_if_plain: bool) -> AddedToken | None:
    """A special-token entry as 4.28 read it: a string or an ``AddedToken`` dict.

    4.28 wraps the strings of ``tokenizer_config.json`` (and the defaults) as
    ``AddedToken(lstrip=False, rstrip=False)`` but keeps those of
    ``special_tokens_map.json`` as plain strings, which strip both sides when they
    split a text (``strip_if_plain``).
    """
    if value is None:
        return None
    if isinstance(value, dict):
        return AddedToken(value["content"], lstrip=bool(value.get("lstrip", False)),
                          rstrip=bool(value.get("rstrip", False)), normalized=False, special=True)
    return AddedToken(str(value), lstrip=strip_if_plain, rstrip=strip_if_plain, normalized=False, special=True)


def load_slow_llama_tokenizer(folder: str | Path) -> SlowLlamaTokenizer:
    """Build 4.28's slow ``LlamaTokenizer`` from ``folder/tokenizer.model`` (+ its JSON files).

    Reads ``tokenizer_config.json``, ``special_tokens_map.json`` and
    ``added_tokens.json`` when present; ``config.json`` and ``tokenizer.json`` are
    never read, so the result does not depend on them.

    Raises:
        FileNotFoundError: no ``tokenizer.model``.
        ValueError: a special-token name that is not a piece of the model, added-token
            ids with a gap, or BOS/EOS settings other than LLaMA's.
    """
    folder = Path(folder)
    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} does not exist; a LLaMA tokenizer folder holds tokenizer.model")
    config = _read_json(folder / "tokenizer_config.json")
    special_map = _read_json(folder / "special_tokens_map.json")
    if not config.get("add_bos_token", True) or config.get("add_eos_token", False):
        raise ValueError(
            f"{folder / 'tokenizer_config.json'} sets add_bos_token={config.get('add_bos_token')} / add_eos_token="
            f"{config.get('add_eos_token')}; LLaMA (and GLaMM's prompt) uses true / false"
        )
    names = {
        k: _special_token(special_map[k], strip_if_plain=True) if k in special_map
        else _special_token(config.get(k, default), strip_if_plain=False)
        for k, default in _DEFAULT_NAMES.items()
    }
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n_pieces = sp.get_piece_size()
    for key, token in names.items():
        if token is not None and sp.id_to_piece(sp.piece_to_id(token.content)) != token.content:
            raise ValueError(f"{folder}: {key} {token.content!r} is not a piece of {model_file.name}")
    tok = SlowLlamaTokenizer(
        vocab_file=str(model_file),
        legacy=True,  # 4.28 had only this behaviour: sp.encode(piece) with the dummy prefix
        **names,
        # their flags (strip or not), which the base class would otherwise reset
        added_tokens_decoder={sp.piece_to_id(t.content): t for t in names.values() if t is not None},
        special_tokens_pattern="bos",  # add_bos_token=True, add_eos_token=False
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        model_max_length=int(config.get("model_max_length", 1 << 30)),
    )
    added = sorted(_read_json(folder / "added_tokens.json").items(), key=lambda kv: kv[1])
    for offset, (token, index) in enumerate(added):
        if index != n_pieces + offset:
            raise ValueError(
                f"{folder / 'added_tokens.json'}: {token!r} has id {index}, expected {n_pieces + offset} "
                f"(added tokens follow the model's {n_pieces} pieces without a gap)"
            )
    # Plain strings in 4.28 strip the whitespace on both sides of themselves.
    tok.add_tokens([AddedToken(t, lstrip=True, rstrip=True, normalized=False, special=False) for t, _ in added])
    return tok
