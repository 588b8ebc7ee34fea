"""The timed generate-and-decode pipeline both model adapters run for a batch of images.

An adapter supplies its model-specific steps; this module owns their order, the
grouping of a batch into equal-length engine calls, the device syncs around
every timed stage and the timings::

    encode()                           vision_ms   (B images -> whatever the prompts need)
    for each question q:               prefill_ms + decode_ms (the engine's, summed over calls)
        prompt(encoding, b, q) for every sample b still without a [SEG] state
        engine.generate per group of equal prompt length (a sub-batch)
        seg_states(step_hidden, tokens) per sample
    masks(encoding, seg states)        mask_ms
    parse(tokens) per sample           caption and phrases
                                       total_ms: encode to the end of parse

Timings are per image: each stage's time over the whole batch divided by the
batch size B (``batch_size`` in the dict), so the images' numbers sum to the
batch's time. GLaMM asks one question; OMG-LLaVA tries upstream's six GCG
questions in turn, re-asking only the samples whose answer had no ``[SEG]``
state (the last answer stands otherwise). Prompts of different lengths
(OMG-LLaVA's object tokens) run as separate engine calls, so the engine's
position rules hold per sample; a sample's result never depends on its batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from altp._device import synchronize
from altp.models.base import GCGPrediction

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import LlamaForCausalLM

    from altp.pruning.base import Pruner, VisionSignals
    from altp.pruning.records import PruneRecord

__all__ = ["Answer", "Decoded", "generate_and_decode"]

E = TypeVar("E")  # the adapter's encoding of the batch


@dataclass(frozen=True)
class Answer:
    """One question's generation for one sample.

    Attributes:
        question: index of the question asked.
        tokens: (T,) generated ids, up to and including the first EOS.
        seg_states: (N, D) the states that make the ``[SEG]`` masks.
        record: the sample's :class:`PruneRecord` (a batch of one).
    """

    question: int
    tokens: torch.Tensor
    seg_states: torch.Tensor
    record: PruneRecord


@dataclass(frozen=True)
class Decoded(Generic[E]):
    """What :func:`generate_and_decode` produced for one image of the batch.

    Attributes:
        encoding: what ``encode`` returned (the whole batch's).
        index: this image's position in the batch.
        answers: every question asked, in order; the last one is the answer kept.
        caption, phrases: ``parse`` of the kept answer's tokens.
        masks: one (H, W) bool array per ``[SEG]`` state of the kept answer.
        timings: milliseconds per image (vision_ms, prefill_ms, decode_ms, mask_ms,
            total_ms: the batch's time / batch_size) and batch_size.
    """

    encoding: E
    index: int
    answers: list[Answer]
    caption: str
    phrases: list[str]
    masks: list[np.ndarray]
    timings: dict[str, float]

    @property
    def answer(self) -> Answer:
        """The answer kept (the last question asked)."""
        return self.answers[-1]

    def prediction(self, *, num_text_tokens: int, num_visual: int) -> GCGPrediction:
        """The :class:`GCGPrediction` of the kept answer."""
        return GCGPrediction(
            caption=self.caption, phrases=self.phrases, masks=self.masks, record=self.answer.record,
            num_text_tokens=num_text_tokens, num_visual=num_visual, new_tokens=int(self.answer.tokens.numel()),
            timings=self.timings,
        )  # fmt: skip


def _groups(lengths: dict[int, int]) -> list[list[int]]:
    """Samples by prompt length, each group in batch order, groups by their first sample."""
    by_len: dict[int, list[int]] = {}
    for b, n in lengths.items():
        by_len.setdefault(n, []).append(b)
    return list(by_len.values())


def generate_and_decode(
    *,
    lm: LlamaForCausalLM,
    pruner: Pruner | None,
    device: torch.device,
    batch_size: int,
    encode: Callable[[], E],
    prompt: Callable[[E, int, int], torch.Tensor],
    num_questions: int = 1,
    seg_states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    masks: Callable[[E, list[torch.Tensor]], list[list[np.ndarray]]],
    parse: Callable[[list[int]], tuple[str, list[str]]],
    visual_start: int,
    num_visual: int,
    grid: tuple[int, int],
    preps: Sequence[Any],
    seeds: Sequence[int],
    max_new_tokens: int,
    eos_token_id: int | list[int],
    use_cache: bool | None,
    vision: Callable[[E, list[int]], VisionSignals | None] | None = None,
) -> list[Decoded[E]]:
    """Encode, generate greedily through the pruning engine, decode masks and text; timed.

    Args:
        lm: the causal LM the engine runs (``*ForCausalLM``).
        pruner: the pruner, or None for the full model.
        device: where the model runs (synced before every clock reading).
        batch_size: B, the images in the batch.
        encode: the vision stage for all B images; its result goes to ``prompt`` and ``masks``.
        prompt: ``(encoding, sample, question)`` -> (1, L, D) prompt embeddings of one
            sample with the visual span at ``[visual_start, visual_start + num_visual)``.
        num_questions: questions to try until a sample's answer gives a ``[SEG]`` state.
        seg_states: ``(step_hidden (T, D), tokens (T,))`` -> (N, D) states for the masks.
        masks: ``(encoding, [states (N_b, D) per sample])`` -> per sample, N_b bool masks
            at that image's size.
        parse: one sample's generated ids -> (caption, phrases).
        visual_start, num_visual, grid, max_new_tokens, eos_token_id, use_cache: passed
            to :meth:`altp.pruning.engine.PruningEngine.generate`.
        preps, seeds: per sample, what ``pruner.prepare`` returned and its seed.
        vision: ``(encoding, samples)`` -> those samples' vision-tower signals for the
            engine (:class:`altp.pruning.base.VisionSignals`), or None where the model
            has none or the pruner needs none.

    Returns:
        One :class:`Decoded` per sample, in batch order.
    """
    # Lazy: importing an adapter (the training code does) stays free of the engine and every pruner.
    from altp.pruning.engine import PruningEngine

    if not (len(preps) == len(seeds) == batch_size >= 1):
        raise ValueError(f"need one prep and one seed per image: {batch_size} images, "
                         f"{len(preps)} preps, {len(seeds)} seeds")
    t0 = time.perf_counter()
    encoding = encode()
    synchronize(device)
    t1 = time.perf_counter()
    engine = PruningEngine(lm=lm, pruner=pruner)
    answers: list[list[Answer]] = [[] for _ in range(batch_size)]
    prefill_ms = decode_ms = 0.0
    pending = list(range(batch_size))
    for q in range(num_questions):
        prompts = {b: prompt(encoding, b, q) for b in pending}
        for group in _groups({b: int(p.shape[1]) for b, p in prompts.items()}):
            out = engine.generate(
                inputs_embeds=torch.cat([prompts[b] for b in group]), visual_start=visual_start,
                num_visual=num_visual, grid=grid, prep=[preps[b] for b in group], max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_id, use_cache=use_cache, seed=[seeds[b] for b in group],
                vision=vision(encoding, group) if vision is not None else None,
            )  # fmt: skip
            prefill_ms += out.prefill_ms
            decode_ms += out.decode_ms
            lengths = out.lengths.tolist() if out.lengths is not None else [out.tokens.shape[1]] * len(group)
            for i, b in enumerate(group):
                tokens, hidden = out.tokens[i, : lengths[i]], out.step_hidden[i, : lengths[i]]  # (T,), (T, D)
                record = out.record.row(i, select_ms=out.record.select_ms / len(group))
                answers[b].append(Answer(question=q, tokens=tokens, seg_states=seg_states(hidden, tokens),
                                         record=record))  # fmt: skip
        pending = [b for b in pending if not answers[b][-1].seg_states.shape[0]]
        if not pending:
            break
    synchronize(device)
    t2 = time.perf_counter()
    mask_lists = masks(encoding, [a[-1].seg_states for a in answers])
    synchronize(device)
    t3 = time.perf_counter()
    texts = [parse(a[-1].tokens.tolist()) for a in answers]
    per_image = 1e3 / batch_size
    timings = {
        "vision_ms": (t1 - t0) * per_image,
        "prefill_ms": prefill_ms / batch_size,
        "decode_ms": decode_ms / batch_size,
        "mask_ms": (t3 - t2) * per_image,
        "total_ms": (time.perf_counter() - t0) * per_image,
        "batch_size": batch_size,
    }
    return [
        Decoded(encoding=encoding, index=b, answers=answers[b], caption=texts[b][0], phrases=texts[b][1],
                masks=mask_lists[b], timings=dict(timings))
        for b in range(batch_size)
    ]  # fmt: skip
