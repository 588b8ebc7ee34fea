"""Write the tiny InternLM2-style sentencepiece model for ``model=omg_llava_tiny`` (deterministic).

Output: ``altp/models/assets/omg_tiny_tokenizer/tokenizer.model``. A BPE model with
byte fallback, trained in memory on a generated English corpus (the synthetic
shapes captions' words and OMG-LLaVA's six GCG questions), laid out like
InternLM2-chat-7B's ``tokenizer.model``: ``<unk> <s> </s>`` at ids 0-2 and the six
chat tokens as the last six ids, ``<|im_end|>`` second to last and
``<|im_start|>`` last (InternLM2: 92542, 92543 of 92544). Unlike the real model,
whose pieces at those ids are named ``[UNUSED_TOKEN_...]`` and renamed by
``tokenizer_config.json``, these pieces carry the chat names themselves, so the
folder needs no config. Normalisation is InternLM2's as far as its remote fast
converter shows: no whitespace collapsing, a dummy prefix, identity rules
(UNVERIFIED against the real file, see ``altp/models/omg/tokenizer.py``).

Two runs write the same bytes (one thread, fixed corpus, no input path in the
proto). Usage::

    .venv/bin/python scripts/build_omg_tiny_tokenizer.py [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from altp.models.omg.internlm2_chat import GCG_QUESTIONS  # noqa: E402
from altp.models.omg.tokenizer import INTERNLM2_CHAT_TOKENS, OMG_TINY_TOKENIZER_DIR  # noqa: E402

VOCAB_SIZE = 640  # 256 byte pieces + 3 meta + 6 chat tokens + characters + merges
# The synthetic shapes vocabulary (altp/data/synthetic.py), copied as data so that
# edits there do not silently change this asset.
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "cyan")
SHAPES = ("circle", "square", "triangle", "ellipse", "star", "diamond", "rectangle")
SIZES = ("small", "", "large")
BACKGROUNDS = ("gradient", "striped", "checkered", "mottled")
INTROS = ("The image shows", "This picture contains", "We can see", "In this scene there is")
POSITIONS = (
    "in the top left corner", "at the top", "in the top right corner",
    "on the left", "in the center", "on the right",
    "in the bottom left corner", "at the bottom", "in the bottom right corner",
)  # fmt: skip
CHAT_WORDS = ("user", "assistant", "system")


def _label(size: str, colour: str, shape: str) -> str:
    words = [w for w in (size, colour, shape) if w]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def corpus() -> list[str]:
    """Deterministic training lines: every label, captions cycling through the word lists."""
    lines: list[str] = list(GCG_QUESTIONS) + list(CHAT_WORDS)
    labels = [_label(s, c, sh) for s, c, sh in itertools.product(SIZES, COLOURS, SHAPES)]
    for i, label in enumerate(labels):
        other = labels[(7 * i + 3) % len(labels)]
        intro = INTROS[i % len(INTROS)]
        pos, pos2 = POSITIONS[i % len(POSITIONS)], POSITIONS[(i * 5 + 2) % len(POSITIONS)]
        hidden = ", partly hidden" if i % 3 == 0 else ""
        bg = BACKGROUNDS[i % len(BACKGROUNDS)]
        lines.append(f"{intro} {label} {pos}{hidden} and {other} {pos2}, on a {bg} background.")
    return lines


def _chat_tokens_last(serialized: bytes) -> bytes:
    """Move the user-defined chat pieces to the end of the vocabulary, InternLM2's order.

    BPE encoding ranks merges by piece score, not id, so reordering ids leaves the
    segmentation unchanged; the build checks that below.
    """
    proto = sentencepiece_model_pb2.ModelProto.FromString(serialized)
    pieces = list(proto.pieces)
    by_name = {p.piece: p for p in pieces}
    chat = [by_name[t] for t in INTERNLM2_CHAT_TOKENS]
    rest = [p for p in pieces if p.piece not in INTERNLM2_CHAT_TOKENS]
    kept = [sentencepiece_model_pb2.ModelProto.SentencePiece() for _ in pieces]
    for dst, src in zip(kept, rest + chat, strict=True):
        dst.CopyFrom(src)
    del proto.pieces[:]
    proto.pieces.extend(kept)
    return proto.SerializeToString()


def build(out: Path) -> Path:
    lines = corpus()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=list(INTERNLM2_CHAT_TOKENS),
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    before = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    data = _chat_tokens_last(buf.getvalue())
    after = spm.SentencePieceProcessor(model_proto=data)
    # Self-check: the id move changes ids only, never the pieces a text splits into.
    for text in [*lines, "<|im_start|>user\n<image>\nHi<|im_end|>\n", "ÄÖ 中文 42"]:
        if before.encode(text, out_type=str) != after.encode(text, out_type=str):
            raise RuntimeError(f"moving the chat tokens changed the segmentation of {text!r}")
    n = after.get_piece_size()
    ids = [after.piece_to_id(t) for t in INTERNLM2_CHAT_TOKENS]
    if ids != list(range(n - len(INTERNLM2_CHAT_TOKENS), n)):
        raise RuntimeError(f"chat tokens at {ids}, expected the last {len(ids)} of {n}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tokenizer.model"
    path.write_bytes(data)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OMG_TINY_TOKENIZER_DIR)
    args = ap.parse_args()
    path = build(args.out)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    print(f"wrote {path} ({sp.get_piece_size()} pieces, {path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
