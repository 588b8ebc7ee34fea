"""GLaMM's tokenizer, prompt and prompt tokenisation.

GLaMM (groundingLMM ``train.py``) adds seven tokens after LLaMA's 32000-piece
base vocabulary, in this order: ``<im_start> <im_end>`` first, then
``<bbox> <point> [SEG] <p> </p>``. Ids are always looked up with
``convert_tokens_to_ids`` and checked, never assumed (an upstream script gets
them wrong by indexing a tokenised string).

A real checkpoint's ``tokenizer.model`` is loaded as upstream's slow
``LlamaTokenizer`` whatever its ``config.json`` says (:func:`load_glamm_tokenizer`).
The tiny tokenizer under ``assets/tiny_tokenizer/`` (written by
``scripts/build_tiny_tokenizer.py``) carries the same special tokens over a
small word-level vocabulary, so the tiny model exercises the same code paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from altp.models.slow_llama_tokenizer import load_slow_llama_tokenizer

__all__ = [
    "GLAMM_ADDED_TOKENS",
    "GCG_INSTRUCTION",
    "IMAGE_PLACEHOLDER",
    "LLAVA_V1_SYSTEM",
    "TINY_TOKENIZER_DIR",
    "GLaMMTokenIds",
    "gcg_prompt",
    "encode_like_upstream",
    "load_glamm_tokenizer",
    "parse_gcg_output",
    "tokenize_with_image",
]

#: GLaMM's added tokens in the order upstream adds them (ids base_vocab + i).
GLAMM_ADDED_TOKENS: tuple[str, ...] = ("<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>")
#: Where the image features go; never a vocabulary token (upstream uses id -200).
IMAGE_PLACEHOLDER = "<image>"
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# The five spaces are real: upstream writes the instruction as a backslash-continued
# string literal whose next line is indented by four spaces.
GCG_INSTRUCTION = (
    "Could you please give me a detailed description of the image? Please respond with "
    "interleaved     segmentation masks for the corresponding parts of the answer."
)
TINY_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny_tokenizer"


def gcg_prompt(instruction: str = GCG_INSTRUCTION) -> str:
    """The llava_v1 prompt of GLaMM's GCG inference (``eval/gcg/infer.py``).

    ``system + " USER: " + message + " ASSISTANT:"`` where the message is
    ``"The <im_start><image><im_end> provides an overview of the picture.\\n" + instruction``.
    """
    message = f"The <im_start>{IMAGE_PLACEHOLDER}<im_end> provides an overview of the picture.\n{instruction}"
    return f"{LLAVA_V1_SYSTEM} USER: {message} ASSISTANT:"


@dataclass(frozen=True)
class GLaMMTokenIds:
    """Checked ids of the tokens GLaMM's inference needs."""

    bos: int
    eos: int
    seg: int
    p_start: int
    p_end: int
    im_start: int
    im_end: int
    base_vocab: int  # ids >= base_vocab are GLaMM's added tokens


def _check_added_tokens(tok: PreTrainedTokenizerBase, source: str) -> GLaMMTokenIds:
    # one token in, one id out (transformers types the list form too)
    ids = {t: cast(int, tok.convert_tokens_to_ids(t)) for t in GLAMM_ADDED_TOKENS}
    unk = tok.unk_token_id
    missing = [t for t, i in ids.items() if i is None or i == unk]
    if missing:
        raise ValueError(
            f"tokenizer at {source} lacks GLaMM's added tokens {missing}; "
            "use the tokenizer files shipped with MBZUAI/GLaMM-GCG"
        )
    base = ids[GLAMM_ADDED_TOKENS[0]]
    expected = {t: base + i for i, t in enumerate(GLAMM_ADDED_TOKENS)}
    if ids != expected:
        raise ValueError(
            f"tokenizer at {source}: GLaMM's added tokens are not consecutive in upstream order "
            f"(got {ids}, expected {expected}); the checkpoint's embedding rows would not match"
        )
    for t, i in ids.items():
        enc = tok(t, add_special_tokens=False)["input_ids"]
        if enc != [i]:
            raise ValueError(f"tokenizer at {source} splits {t!r} into {enc}; it must encode to [{i}]")
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {source} has no bos/eos token; GLaMM's prompt needs both")
    return GLaMMTokenIds(
        bos=int(tok.bos_token_id),  # pyright: ignore[reportArgumentType]  (transformers types token ids as int | list | str)
        eos=int(tok.eos_token_id),  # pyright: ignore[reportArgumentType]  (transformers types token ids as int | list | str)
        seg=ids["[SEG]"],
        p_start=ids["<p>"],
        p_end=ids["</p>"],
        im_start=ids["<im_start>"],
        im_end=ids["<im_end>"],
        base_vocab=base,
    )


def load_glamm_tokenizer(path: str | Path) -> tuple[PreTrainedTokenizerBase, GLaMMTokenIds]:
    """Load a GLaMM tokenizer offline and check its added-token ids.

    The class never depends on the folder's ``config.json`` (GLaMM's says
    ``"model_type": "llava"``, which sends transformers 5's ``AutoTokenizer`` to a
    backend without sentencepiece's prefix space):

    * ``tokenizer.model`` present: upstream's slow ``LlamaTokenizer``
      (:mod:`altp.models.slow_llama_tokenizer`), as GLaMM's ``use_fast=False``;
      a ``tokenizer.json`` beside it is ignored, as upstream ignores it.
    * else ``tokenizer.json``: that fast tokenizer as written (the tiny assets).

    Returns:
        (tokenizer, checked ids).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    if (path / "tokenizer.model").is_file():
        tok: PreTrainedTokenizerBase = load_slow_llama_tokenizer(path)
    elif (path / "tokenizer.json").is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    else:
        raise FileNotFoundError(
            f"{path} has neither tokenizer.model nor tokenizer.json; use the tokenizer files of MBZUAI/GLaMM-GCG"
        )
    return tok, _check_added_tokens(tok, str(path))


_ADDED_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in GLAMM_ADDED_TOKENS) + ")")


def encode_like_upstream(text: str, tok: PreTrainedTokenizerBase) -> list[int]:
    """Token ids as upstream's slow LlamaTokenizer (transformers 4.28 era) produced them, no BOS.

    Upstream re-adds GLaMM's tokens as plain strings, so its slow tokenizer splits
    the text at them and *strips the whitespace on both sides* of each (the
    "we strip left and right by default" branch of ``PreTrainedTokenizer.tokenize``),
    then sentencepiece-encodes every remaining piece on its own, each with the
    dummy prefix (``"<im_end> provides"`` -> ``<im_end> ▁provides``). Fast
    tokenizers keep those spaces (an extra ``"▁"`` token), which would shift the
    prompt by a token or two, so we split and strip here and encode the pieces
    separately; for :class:`~altp.models.slow_llama_tokenizer.SlowLlamaTokenizer`
    this equals ``tok(text, add_special_tokens=False)``.
    """
    parts = _ADDED_SPLIT.split(text)  # [text, token, text, token, ..., text]
    ids: list[int] = []
    for i, part in enumerate(parts):
        if i % 2:
            ids.append(int(tok.convert_tokens_to_ids(part)))  # pyright: ignore[reportArgumentType]  (transformers types token ids as int | list | str)
            continue
        if i > 0:
            part = part.lstrip()
        if i < len(parts) - 1:
            part = part.rstrip()
        if part:
            ids.extend(tok(part, add_special_tokens=False)["input_ids"])
    return ids


def tokenize_with_image(prompt: str, tok: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids before and after the single ``<image>`` placeholder.

    Mirrors upstream ``tokenizer_image_token``: each chunk is tokenised on its
    own (:func:`encode_like_upstream`) and BOS is kept only before the first.

    Returns:
        (prefix ids starting with BOS and ending with ``<im_start>``,
        suffix ids starting with ``<im_end>``).
    """
    chunks = prompt.split(IMAGE_PLACEHOLDER)
    if len(chunks) != 2:
        raise ValueError(f"prompt must contain exactly one {IMAGE_PLACEHOLDER}, found {len(chunks) - 1}")
    if tok.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token; GLaMM's prompt starts with it")
    return [int(tok.bos_token_id), *encode_like_upstream(chunks[0], tok)], encode_like_upstream(chunks[1], tok)  # pyright: ignore[reportArgumentType]  (transformers types token ids as int | list | str)


def as_tensor(ids: list[int], device: torch.device) -> torch.Tensor:
    """(1, L) long tensor on ``device``."""
    return torch.tensor([ids], dtype=torch.long, device=device)


_TAG = re.compile(r"<.*?>")
_PHRASE = re.compile(r"<p>(.*?)</p>")


def parse_gcg_output(text: str) -> tuple[str, list[str]]:
    """Caption and phrases from GLaMM's decoded answer (upstream ``eval/gcg/infer.py``).

    Same steps in the same order as upstream: drop newlines, replace double
    spaces once, keep the text after the last ``"ASSISTANT: "``, phrases are the
    stripped ``<p>(.*?)</p>`` matches, the caption drops every ``<...>`` tag and
    ``[SEG]``, collapses whitespace and strips single quotes at the ends.

    Args:
        text: the generated tokens decoded with ``skip_special_tokens=False``
            (upstream decodes prompt + answer and splits on ``"ASSISTANT: "``;
            decoding only the answer gives the same result whenever the answer
            starts with a space-prefixed token, as LLaMA's always do).
    """
    text = text.replace("\n", "").replace("  ", " ")
    text = text.split("ASSISTANT: ")[-1]
    phrases = [p.strip() for p in _PHRASE.findall(text)]
    caption = _TAG.sub("", text).replace("[SEG]", "")
    caption = " ".join(caption.split()).strip("'").strip()
    return caption, phrases
