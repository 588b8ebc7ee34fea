"""InternLM2-chat's tokenizer as OMG-LLaVA uses it, without ``trust_remote_code``.

Upstream loads ``internlm2-chat-7b``'s remote ``InternLM2Tokenizer``
(``tokenization_internlm2.py``) under transformers 4.36. That class is a thin
sentencepiece wrapper; :class:`InternLM2SentencePieceTokenizer` is transformers
5.x's own :class:`~transformers.tokenization_utils_sentencepiece.SentencePieceBackend`
(slow, sentencepiece-backed) with two methods overridden to match it.

Reproduced (read from the remote code and transformers 4.3x sources):

* Encoding: the text is split at added/special tokens (no whitespace stripped
  around them: InternLM2's config and ``add_tokens`` both give
  ``lstrip=rstrip=False``), and every other chunk is ``sp.encode(chunk,
  out_type=str)`` on its own, so the model's dummy-prefix and whitespace rules
  apply per chunk. ``add_bos_token=True`` (ids ``[bos] + ...``), no EOS.
  ``bos``/``eos`` ids are the sentencepiece model's.
* Chat tokens: ids and names come from ``tokenizer_config.json``'s
  ``added_tokens_decoder`` (and ``bos/eos/unk_token``) when the folder has one:
  InternLM2's pieces at 92542/92543 were named ``[UNUSED_TOKEN_145/146]`` and the
  config renames them ``<|im_end|>``/``<|im_start|>`` (third-party code; its remote
  fast converter also renames pieces from that file). Without a config,
  pieces already named ``<|im_start|>`` etc. are used (the tiny asset).
* OMG-LLaVA's tokens: ``add_tokens(["[SEG]", "<p>", "</p>", "<region>"],
  special_tokens=True)`` then ``add_tokens(["<mark>"], special_tokens=True)``, ids
  ``len(tokenizer) + 0..4`` (``internlm2_chat.add_omg_llava_special_tokens``).
* Decoding (:func:`decode_answer`, the GCG tool's ``tokenizer.decode(ids).strip()``):
  transformers 4.36 ``PreTrainedTokenizer._decode`` splits the tokens at
  "legacy" added tokens (added, not special, or special with an id past the
  sentencepiece vocabulary: here ``[SEG] <p> </p> <region> <mark>``), decodes
  each run with InternLM2's ``convert_tokens_to_string`` and joins the pieces
  with ONE SPACE (``spaces_between_special_tokens=True``). That method
  sentencepiece-decodes runs between special tokens, emits ``" " + run + token``
  at a special token that follows text (``<|im_end|>``, ``</s>``: the space goes
  before the run), applies ``clean_up_tokenization`` unconditionally
  (``" ." -> "."``, ``" 's" -> "'s"``, ...), and its prefix-space step is a no-op
  (it tests a token string against a set of ids, adds a space, then drops the
  first character). ``clean_up_tokenization_spaces`` is false in InternLM2's config.

Slow or fast: OMG-LLaVA's configs build ``AutoTokenizer.from_pretrained(path,
trust_remote_code=True)`` (``use_fast`` defaults to True), so upstream ran
``InternLM2TokenizerFast`` if its ``internlm2-chat-7b/tokenizer_config.json``
``auto_map`` lists it (later InternLM2-chat revisions do; UNVERIFIED for
OMG-LLaVA's copy). ``decode_answer(..., upstream_class=...)`` mirrors either; the
fast one is the remote converter's decoder chain (``Replace("▁", " ")``,
``ByteFallback``, ``Fuse``, ``Strip(left=1)``) over all tokens, checked against
the ``tokenizers`` library in the tests, which also show both classes give the same
ids on the tiny model. After :func:`~altp.models.omg.gcg_output.parse_gcg_text`
they differ only in spaces before punctuation next to the tags.

UNVERIFIED (no real ``tokenizer.model`` or remote tokenizer offline): which class
upstream ran (above); the real model's normalizer settings (this port uses
whatever the file says, so only the tiny asset's choices are guesses); that
``len(tokenizer) == 92544`` before OMG-LLaVA's tokens; the exact ids of the GCG
prompt and the decoded text of a real answer (pin them with a fixture made once
by the remote tokenizer under transformers 4.36).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from transformers import AddedToken
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from altp.models.base import MissingCheckpointError
from altp.models.omg.internlm2_chat import (
    GCG_QUESTIONS,
    IMAGE_PLACEHOLDER,
    add_omg_llava_special_tokens,
    gcg_prompt,
)

__all__ = [
    "INTERNLM2_CHAT_TOKENS",
    "OMG_TINY_TOKENIZER_DIR",
    "InternLM2SentencePieceTokenizer",
    "OmgTokenIds",
    "decode_answer",
    "encode_gcg_prompt",
    "load_internlm2_tokenizer",
]

OMG_TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "omg_tiny_tokenizer"
#: InternLM2-chat's special chat tokens in id order: the last six ids of the
#: 92544-piece vocabulary (92538..92543), as in its ``tokenizer_config.json``.
INTERNLM2_CHAT_TOKENS: tuple[str, ...] = (
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    "<|im_end|>",
    "<|im_start|>",
)
_REQUIRED_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# A shell comment keeps the one-line message a valid command.
_HOW_TO_GET = (
    "hf download internlm/internlm2-chat-7b tokenizer.model tokenizer_config.json "
    "--local-dir FOLDER  # the internlm2-chat-7b folder of "
    "https://huggingface.co/internlm/internlm2-chat-7b, also under OMG-LLaVA's pretrained/omg_llava/"
)


@dataclass(frozen=True)
class OmgTokenIds:
    """Checked ids of the tokens OMG-LLaVA's GCG inference needs."""

    bos: int  # <s>, first id of the prompt
    eos: int  # </s>, the generation config's eos_token_id
    im_start: int  # <|im_start|>
    im_end: int  # <|im_end|>, the template's stop word
    seg: int  # [SEG] = base_vocab
    p_open: int  # <p> = base_vocab + 1
    p_close: int  # </p> = base_vocab + 2
    region: int  # <region> = base_vocab + 3
    mark: int  # <mark> = base_vocab + 4 (no embedding row upstream)
    base_vocab: int  # len(tokenizer) before OMG-LLaVA's tokens (92544 for InternLM2)

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Generation stops at either: ``eos_token_id`` and the ``<|im_end|>`` stop word."""
        return (self.eos, self.im_end)


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization (same list in 4.36 and 5.x)
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text


class InternLM2SentencePieceTokenizer(SentencePieceBackend):
    """``SentencePieceBackend`` that encodes and decodes like remote ``InternLM2Tokenizer``.

    Build it with :func:`load_internlm2_tokenizer`, which also adds OMG-LLaVA's tokens.
    Encoding is the base class's with ``legacy=True`` (``sp.encode`` per chunk
    between added tokens) and a BOS prefix. ``decode`` follows transformers 4.36 +
    InternLM2 (module docstring), not transformers 5.x's generic join.
    """

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Mirror of InternLM2's ``convert_tokens_to_string`` (its prefix-space step is a no-op)."""
        special = set(self.all_special_tokens)
        out, run, prev_special = "", [], False
        for token in tokens:
            if token in special:
                if not prev_special:
                    out += " "
                out += self.sp_model.decode(run) + token
                run, prev_special = [], True
            else:
                run.append(token)
                prev_special = False
        out += self.sp_model.decode(run)
        return _clean_up_tokenization(out)

    def _decode(  # pyright: ignore[reportIncompatibleMethodOverride]  (4.36's signature, mirrored; called by keyword)
        self, token_ids: int | list[int], skip_special_tokens: bool = False, **kwargs: Any
    ) -> str:
        """Mirror of transformers 4.36 ``PreTrainedTokenizer._decode`` (no clean-up: InternLM2 sets it off)."""
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        special = set(self.all_special_tokens)
        legacy = {
            t
            for t, i in self._added_tokens_encoder.items()
            if t not in special or i >= self.vocab_size
        }
        parts: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in legacy:
                if run:
                    text = self.convert_tokens_to_string(run)
                    if text:
                        parts.append(text)
                    run = []
                parts.append(token)
            else:
                run.append(token)
        if run:
            parts.append(self.convert_tokens_to_string(run))
        return " ".join(parts)


_NAMED = {"unk_token": "unk_id", "bos_token": "bos_id", "eos_token": "eos_id"}


def _added_tokens(sp: Any, folder: Path) -> tuple[dict[int, AddedToken], dict[str, str]]:
    """Added tokens by id and the names of ``unk/bos/eos``, as upstream's loader sees them.

    From ``tokenizer_config.json`` when the folder has one (its ``added_tokens_decoder``
    renames ids of the sentencepiece model), else from the pieces' own names.
    """
    config_path = folder / "tokenizer_config.json"
    found: dict[int, AddedToken] = {}
    named = {attr: sp.id_to_piece(getattr(sp, fn)()) for attr, fn in _NAMED.items()}
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if not config.get("add_bos_token", True) or config.get("add_eos_token", False):
            raise ValueError(
                f"{config_path} sets add_bos_token={config.get('add_bos_token')} / add_eos_token="
                f"{config.get('add_eos_token')}; InternLM2-chat uses True / False"
            )
        for key, entry in config.get("added_tokens_decoder", {}).items():
            i = int(key)
            if i >= sp.get_piece_size():
                raise ValueError(
                    f"{config_path}: added token {entry['content']!r} has id {i}, past the "
                    f"model's {sp.get_piece_size()} pieces; OMG-LLaVA's tokens must not be in it"
                )
            found[i] = AddedToken(
                entry["content"],
                lstrip=bool(entry.get("lstrip", False)),
                rstrip=bool(entry.get("rstrip", False)),
                single_word=bool(entry.get("single_word", False)),
                normalized=bool(entry.get("normalized", False)),
                special=bool(entry.get("special", True)),
            )
        for attr in _NAMED:
            if isinstance(config.get(attr), str):
                named[attr] = config[attr]
    else:
        for name in INTERNLM2_CHAT_TOKENS:
            i = sp.piece_to_id(name)
            if sp.id_to_piece(i) == name and i != sp.unk_id():
                found[i] = AddedToken(
                    name, lstrip=False, rstrip=False, normalized=False, special=True
                )
    names = {t.content for t in found.values()}
    missing = [t for t in _REQUIRED_CHAT_TOKENS if t not in names]
    if missing:
        raise ValueError(
            f"{folder}: no id for {missing}; put InternLM2-chat's tokenizer_config.json next to tokenizer.model"
        )
    return found, named


def load_internlm2_tokenizer(
    folder: str | Path,
) -> tuple[InternLM2SentencePieceTokenizer, OmgTokenIds]:
    """Load ``folder/tokenizer.model`` as InternLM2-chat's tokenizer and add OMG-LLaVA's tokens.

    Args:
        folder: ``internlm2-chat-7b/`` (``tokenizer.model`` + ``tokenizer_config.json``)
            or :data:`OMG_TINY_TOKENIZER_DIR`.

    Returns:
        (tokenizer, checked ids). ``[SEG] <p> </p> <region> <mark>`` get ids
        ``base_vocab + 0..4``.

    Raises:
        MissingCheckpointError: ``tokenizer.model`` is absent (one line).
        ValueError: the chat tokens are missing or not single ids, or the ids differ
            from upstream's order.
    """
    folder = Path(folder)
    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        raise MissingCheckpointError(
            missing=str(model_file), how_to_get=_HOW_TO_GET.replace("FOLDER", str(folder))
        )
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    if min(sp.unk_id(), sp.bos_id(), sp.eos_id()) < 0:
        raise ValueError(
            f"{model_file} lacks <unk>/<s>/</s>; it is not an InternLM2 tokenizer.model"
        )
    added, named = _added_tokens(sp, folder)
    tok = InternLM2SentencePieceTokenizer(
        vocab_file=str(model_file),
        legacy=True,  # sp.encode(chunk) as is: upstream's _tokenize
        **named,
        pad_token=named["eos_token"],  # InternLM2: pad = </s>
        added_tokens_decoder=added,
        extra_special_tokens=[
            t for i, t in sorted(added.items()) if t.special and t.content not in named.values()
        ],
        special_tokens_pattern="bos",  # add_bos_token=True, add_eos_token=False
        clean_up_tokenization_spaces=False,
    )
    # Upstream's bos/eos_token_id properties return the sentencepiece model's ids.
    got = (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id)
    if got != (sp.unk_id(), sp.bos_id(), sp.eos_id()):
        raise ValueError(
            f"{folder}: unk/bos/eos names {list(named.values())} map to ids {got}, but "
            f"{model_file.name} has {(sp.unk_id(), sp.bos_id(), sp.eos_id())}"
        )
    base_vocab = len(tok)
    ids = add_omg_llava_special_tokens(tok)
    for name in (*_REQUIRED_CHAT_TOKENS, *ids):
        enc = tok.encode(name, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"{model_file}: {name!r} encodes to {enc}, expected one id")
    return tok, OmgTokenIds(
        bos=sp.bos_id(),
        eos=sp.eos_id(),
        # one token in, one id out (transformers types the list form too)
        im_start=cast(int, tok.convert_tokens_to_ids("<|im_start|>")),
        im_end=cast(int, tok.convert_tokens_to_ids("<|im_end|>")),
        seg=ids["[SEG]"],
        p_open=ids["<p>"],
        p_close=ids["</p>"],
        region=ids["<region>"],
        mark=ids["<mark>"],
        base_vocab=base_vocab,
    )


def encode_gcg_prompt(
    tokenizer: InternLM2SentencePieceTokenizer, question: str = GCG_QUESTIONS[0]
) -> tuple[list[int], list[int]]:
    """Prompt ids before and after ``<image>``, as the GCG tool's ``forward_model``.

    The first chunk is ``tokenizer.encode(chunk)`` (with BOS), the second
    ``encode(chunk, add_special_tokens=False)``; the visual sequence goes between.
    """
    chunks = gcg_prompt(question).split(IMAGE_PLACEHOLDER)
    if len(chunks) != 2:
        raise ValueError(f"the question must not contain {IMAGE_PLACEHOLDER}: {question!r}")
    return (
        tokenizer.encode(chunks[0]),
        tokenizer.encode(chunks[1], add_special_tokens=False),
    )


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _decode_like_fast(tokenizer: InternLM2SentencePieceTokenizer, ids: list[int]) -> str:
    """``InternLM2TokenizerFast.decode``: its converter's decoder chain over every token.

    ``Replace("▁", " ")``, ``ByteFallback`` (a run of ``<0xHH>`` pieces becomes its
    UTF-8 text, U+FFFD per byte if invalid), ``Fuse``, ``Strip(" ", left=1)``;
    added tokens go through the chain as their text, with no spaces around them.
    """
    out: list[str] = []
    pending = bytearray()
    for token in tokenizer.convert_ids_to_tokens(ids):
        byte = _BYTE_PIECE.fullmatch(token)
        if byte:
            pending.append(int(byte.group(1), 16))
            continue
        if pending:
            out.append(_utf8_or_replacement(bytes(pending)))
            pending.clear()
        out.append(token.replace("▁", " "))
    if pending:
        out.append(_utf8_or_replacement(bytes(pending)))
    text = "".join(out)
    return text[1:] if text.startswith(" ") else text


def _utf8_or_replacement(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(data)  # tokenizers' ByteFallback: one U+FFFD per byte


def decode_answer(
    tokenizer: InternLM2SentencePieceTokenizer,
    ids: list[int],
    *,
    upstream_class: str = "InternLM2Tokenizer",
) -> str:
    """The GCG tool's ``tokenizer.decode(generated_ids).strip()`` (special tokens kept).

    ``ids`` are the generated ids only (upstream generates from embeddings, so its
    sequences hold no prompt). Feed the result to
    :func:`altp.models.omg.gcg_output.parse_gcg_text`.

    ``upstream_class`` picks which remote class to mirror: ``"InternLM2Tokenizer"``
    (slow, transformers 4.36 ``_decode``, module docstring) or
    ``"InternLM2TokenizerFast"``, which upstream's ``AutoTokenizer.from_pretrained(...,
    trust_remote_code=True)`` builds when the folder's ``auto_map`` lists it
    (UNVERIFIED for OMG-LLaVA's copy). After :func:`parse_gcg_text` the two differ
    only in spaces next to ``[SEG]``/``<p>``/``</p>`` and the slow class's
    ``" ." -> "."`` clean-up.
    """
    clean = [int(i) for i in ids]
    if upstream_class == "InternLM2Tokenizer":
        # decode() of one id sequence is a str (transformers types the batched form too)
        return tokenizer.decode(clean, skip_special_tokens=False).strip()  # pyright: ignore[reportAttributeAccessIssue]
    if upstream_class == "InternLM2TokenizerFast":
        return _decode_like_fast(tokenizer, clean).strip()
    raise ValueError(
        f"upstream_class must be 'InternLM2Tokenizer' or 'InternLM2TokenizerFast', got {upstream_class!r}"
    )
