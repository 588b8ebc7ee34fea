"""Write the tiny GLaMM tokenizer to altp/models/assets/tiny_tokenizer/ (deterministic).

A word-level vocabulary over the words of GLaMM's prompt and of the synthetic
shapes captions (colours, shapes, sizes, spatial words, backgrounds), each word
in four spellings (with / without a leading space, lower / capitalised), plus
punctuation and runs of spaces, so ``decode(encode(prompt)) == prompt``. Ids
0-2 are ``<unk> <s> </s>`` like LLaMA; GLaMM's seven added tokens follow the base
vocabulary in upstream order. Usage::

    .venv/bin/python scripts/build_tiny_tokenizer.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from altp.models.tokenizer import GLAMM_ADDED_TOKENS, TINY_TOKENIZER_DIR, gcg_prompt  # noqa: E402

SPECIALS = ("<unk>", "<s>", "</s>")
COLOURS = "red green blue yellow orange purple pink brown black white gray grey cyan magenta violet teal navy olive maroon golden silver beige"
SHAPES = "circle circles square squares triangle triangles rectangle rectangles ellipse ellipses disc disk star stars ring polygon hexagon pentagon diamond shape shapes object objects blob dot oval bar stripe line"
SIZES = "small large big tiny medium huge little wide tall narrow short long thin thick"
SPATIAL = (
    "left right top bottom center centre middle upper lower corner side edge near next to above below "
    "behind front beside between across around over under inside outside along far close"
)
BACKGROUNDS = "background foreground plain striped stripes gradient noisy noise dark light textured checkered mottled solid pattern scene canvas surface"
FUNCTION_WORDS = (
    "a an the and or of on in at with is are there this that it its image picture photo shows showing "
    "contains containing placed located sits lies appears can be seen one two three four five several some "
    "each another other colored coloured filled outlined we see partly partially hidden visible occluded by also"
)
PROMPT_WORDS = (
    "chat between curious human artificial intelligence assistant gives helpful detailed polite answers "
    "human's questions user provides overview could you please give me description respond interleaved "
    "segmentation masks for corresponding parts answer"
)
PUNCT = list(".,:;!?'\"()-")
# GPT-2-style split that keeps one leading space on a word and leaves extra spaces
# as their own run, so every string round-trips through the word-level model.
SPLIT = r" ?[A-Za-z']+| ?[0-9]| ?[^\sA-Za-z0-9]|\s+(?!\S)|\s+"


def vocabulary() -> list[str]:
    words: list[str] = []
    for group in (COLOURS, SHAPES, SIZES, SPATIAL, BACKGROUNDS, FUNCTION_WORDS, PROMPT_WORDS):
        words.extend(group.split())
    words.extend(["USER", "ASSISTANT"])
    forms: list[str] = []
    for w in dict.fromkeys(words):  # dedupe, keep first-seen order
        for v in dict.fromkeys([w, w.capitalize()]):
            forms.extend([v, " " + v])
    forms.extend(str(d) for d in range(10))
    forms.extend(" " + str(d) for d in range(10))
    forms.extend(PUNCT)
    forms.extend(" " + p for p in PUNCT)
    forms.extend(" " * k for k in range(1, 9))
    forms.extend(["\n", "\n\n"])
    vocab = list(SPECIALS)
    vocab.extend(f for f in dict.fromkeys(forms) if f not in SPECIALS)
    return vocab


def build(out: Path) -> PreTrainedTokenizerFast:
    vocab = vocabulary()
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT), behavior="isolated")
    tk.decoder = decoders.Fuse()  # tokens carry their own spaces: concatenate
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS])
    tk.add_tokens([AddedToken(t, normalized=False, special=True) for t in GLAMM_ADDED_TOKENS])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        clean_up_tokenization_spaces=False, model_max_length=2048,
    )
    fast.add_special_tokens({"additional_special_tokens": list(GLAMM_ADDED_TOKENS)})
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    # Self-check: the prompt must round-trip without <unk>.
    prompt = gcg_prompt().replace("<image>", "")
    ids = fast(prompt, add_special_tokens=False)["input_ids"]
    if fast.unk_token_id in ids or fast.decode(ids) != prompt:
        raise RuntimeError("tiny tokenizer does not round-trip GLaMM's prompt; extend the vocabulary")
    return fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=TINY_TOKENIZER_DIR)
    args = ap.parse_args()
    tok = build(args.out)
    print(f"wrote {args.out} ({len(tok)} tokens, base vocab {len(tok) - len(GLAMM_ADDED_TOKENS)})")


if __name__ == "__main__":
    main()
