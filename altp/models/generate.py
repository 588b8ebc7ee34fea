"""The timed generate-and-decode pipeline both model adapters run for one image.

An adapter supplies its model-specific steps; this module owns their order, the
device syncs around every timed stage and the timings::

    encode()                       vision_ms   (image -> whatever the prompt needs)
    for each question q:           prefill_ms + decode_ms (the engine's, summed over questions)
        engine.generate(prompt(encoding, q))
        seg_states(step_hidden, tokens); stop at the first question with a [SEG] state
    masks(encoding, seg_states)    mask_ms
    parse(tokens)                  caption and phrases
                                   total_ms: encode to the end of parse

GLaMM asks one question; OMG-LLaVA tries upstream's six GCG questions in turn
until one gives a ``[SEG]`` state (the last answer stands otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from altp._device import synchronize
from altp.models.base import GCGPrediction

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import LlamaForCausalLM

    from altp.pruning.base import Pruner
    from altp.pruning.engine import GenerateOutput

__all__ = ["Answer", "Decoded", "generate_and_decode"]

E = TypeVar("E")  # the adapter's image encoding


@dataclass(frozen=True)
class Answer:
    """One question's generation.

    Attributes:
        question: index of the question asked.
        tokens: (T,) generated ids.
        seg_states: (N, D) the states that make the ``[SEG]`` masks.
        out: the engine's output (record, step states, timings).
    """

    question: int
    tokens: torch.Tensor
    seg_states: torch.Tensor
    out: GenerateOutput


@dataclass(frozen=True)
class Decoded(Generic[E]):
    """What :func:`generate_and_decode` produced for one image.

    Attributes:
        encoding: what ``encode`` returned.
        answers: every question asked, in order; the last one is the answer kept.
        caption, phrases: ``parse`` of the kept answer's tokens.
        masks: one (H, W) bool array per ``[SEG]`` state of the kept answer.
        timings: milliseconds: vision_ms, prefill_ms, decode_ms, mask_ms, total_ms;
            and batch_size (1: one image per forward).
    """

    encoding: E
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
            caption=self.caption, phrases=self.phrases, masks=self.masks, record=self.answer.out.record,
            num_text_tokens=num_text_tokens, num_visual=num_visual, new_tokens=int(self.answer.tokens.numel()),
            timings=self.timings,
        )  # fmt: skip


def generate_and_decode(
    *,
    lm: LlamaForCausalLM,
    pruner: Pruner | None,
    device: torch.device,
    encode: Callable[[], E],
    prompt: Callable[[E, int], torch.Tensor],
    num_questions: int = 1,
    seg_states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    masks: Callable[[E, torch.Tensor], list[np.ndarray]],
    parse: Callable[[list[int]], tuple[str, list[str]]],
    visual_start: int,
    num_visual: int,
    grid: tuple[int, int],
    prep: Any,
    max_new_tokens: int,
    eos_token_id: int | list[int],
    use_cache: bool | None,
    seed: int,
) -> Decoded[E]:
    """Encode, generate greedily through the pruning engine, decode masks and text; timed.

    Args:
        lm: the causal LM the engine runs (``*ForCausalLM``).
        pruner: the pruner, or None for the full model.
        device: where the model runs (synced before every clock reading).
        encode: the vision stage; its result goes to ``prompt`` and ``masks``.
        prompt: ``(encoding, question)`` -> (1, L, D) prompt embeddings with the
            visual span at ``[visual_start, visual_start + num_visual)``.
        num_questions: questions to try until one gives a ``[SEG]`` state.
        seg_states: ``(step_hidden (T, D), tokens (T,))`` -> (N, D) states for the masks.
        masks: ``(encoding, states (N, D))`` -> N bool masks at the image's size.
        parse: generated ids -> (caption, phrases).
        visual_start, num_visual, grid, prep, max_new_tokens, eos_token_id,
            use_cache, seed: passed to :meth:`altp.pruning.engine.PruningEngine.generate`
            (``prep`` is what ``pruner.prepare`` returned for this image).
    """
    # Lazy: importing an adapter (the training code does) stays free of the engine and every pruner.
    from altp.pruning.engine import PruningEngine

    t0 = time.perf_counter()
    encoding = encode()
    synchronize(device)
    t1 = time.perf_counter()
    engine = PruningEngine(lm=lm, pruner=pruner)
    answers: list[Answer] = []
    for q in range(num_questions):
        out = engine.generate(
            inputs_embeds=prompt(encoding, q), visual_start=visual_start, num_visual=num_visual, grid=grid,
            prep=[prep], max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, use_cache=use_cache, seed=seed,
        )  # fmt: skip
        tokens = out.tokens[0]  # (T,)
        answers.append(Answer(question=q, tokens=tokens, seg_states=seg_states(out.step_hidden[0], tokens), out=out))
        if answers[-1].seg_states.shape[0]:
            break
    last = answers[-1]
    synchronize(device)
    t2 = time.perf_counter()
    mask_list = masks(encoding, last.seg_states)
    synchronize(device)
    t3 = time.perf_counter()
    caption, phrases = parse(last.tokens.tolist())
    timings = {
        "vision_ms": (t1 - t0) * 1e3,
        "prefill_ms": sum(float(a.out.prefill_ms) for a in answers),
        "decode_ms": sum(float(a.out.decode_ms) for a in answers),
        "mask_ms": (t3 - t2) * 1e3,
        "total_ms": (time.perf_counter() - t0) * 1e3,
        "batch_size": 1,
    }
    return Decoded(encoding=encoding, answers=answers, caption=caption, phrases=phrases, masks=mask_list,
                   timings=timings)  # fmt: skip
