"""The timed generate-and-decode pipeline both model adapters run for a batch of images.

An adapter supplies its model-specific steps (:class:`GCGSteps`, callable on any
set of its preprocessed images); this module owns their order, the
grouping of a batch into equal-length engine calls, the device syncs around
every timed stage and the timings::

    encode(images)                     vision_ms   (B images -> whatever the prompts need)
    for each question q:               prefill_ms + decode_ms (the engine's, summed over calls)
        prompt(encoding, b, q) for every sample b still without a [SEG] state
        engine.generate per group of equal prompt length (a sub-batch)
        seg_states(step_hidden, tokens) per sample
    masks(images, encoding, seg states) mask_ms
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

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from altp._device import synchronize
from altp.models.base import GCGPrediction, ImageInputs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import LlamaForCausalLM

    from altp.pruning.base import Pruner, VisionSignals
    from altp.pruning.records import PruneRecord

__all__ = ["DECODE_COUNTS", "Answer", "DecodeCounts", "Decoded", "GCGSteps", "StepsAdapter", "generate_and_decode",
           "stream_decode"]

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


@dataclass(frozen=True)
class GCGSteps(Generic[E]):
    """An adapter's model-specific steps, for any set of its preprocessed images.

    Attributes:
        lm: the causal LM the engine runs (``*ForCausalLM``).
        device: where the model runs (synced before every clock reading).
        encode: the vision stage of some images; its result goes to ``prompt``,
            ``vision`` and ``masks`` together with those images.
        prompt: ``(encoding, sample, question)`` -> (1, L, D) prompt embeddings of one
            sample of the encoding, the visual span at ``[visual_start, visual_start + num_visual)``.
        seg_states: ``(step_hidden (T, D), tokens (T,))`` -> (N, D) states for the masks.
        masks: ``(images, encoding, [states (N_b, D) per sample])`` -> per sample, N_b bool
            masks at that image's size (a sample with no states gets none and costs nothing).
        parse: one sample's generated ids -> (caption, phrases).
        visual_start, num_visual, grid, eos_token_id: passed to
            :meth:`altp.pruning.engine.PruningEngine.generate`.
        num_questions: questions to try until a sample's answer gives a ``[SEG]`` state.
        vision: ``(encoding, samples)`` -> those samples' vision-tower signals for the
            engine (:class:`altp.pruning.base.VisionSignals`), or None where the model
            has none or the pruner needs none.
    """

    lm: LlamaForCausalLM
    device: torch.device
    encode: Callable[[Sequence[ImageInputs]], E]
    prompt: Callable[[E, int, int], torch.Tensor]
    seg_states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    masks: Callable[[Sequence[ImageInputs], E, list[torch.Tensor]], list[list[np.ndarray]]]
    parse: Callable[[list[int]], tuple[str, list[str]]]
    visual_start: int
    num_visual: int
    grid: tuple[int, int]
    eos_token_id: int | list[int]
    num_questions: int = 1
    vision: Callable[[E, list[int]], VisionSignals | None] | None = None


@dataclass
class DecodeCounts:
    """Decoding steps and the rows they carried, summed over every call in this process.

    ``row_steps / (slots * steps)`` is the slot utilisation of a run with ``slots``
    rows per step at most (``scripts/bench_throughput.py`` resets and reads it).
    """

    steps: int = 0
    row_steps: int = 0

    def reset(self) -> None:
        self.steps = self.row_steps = 0


DECODE_COUNTS = DecodeCounts()


def _groups(lengths: dict[int, int]) -> list[list[int]]:
    """Samples by prompt length, each group in batch order, groups by their first sample."""
    by_len: dict[int, list[int]] = {}
    for b, n in lengths.items():
        by_len.setdefault(n, []).append(b)
    return list(by_len.values())


def generate_and_decode(
    steps: GCGSteps[E],
    inputs: Sequence[ImageInputs],
    *,
    pruner: Pruner | None,
    preps: Sequence[Any],
    seeds: Sequence[int],
    max_new_tokens: int,
    use_cache: bool | None,
) -> list[Decoded[E]]:
    """Encode, generate greedily through the pruning engine, decode masks and text; timed.

    Args:
        steps: the adapter's steps.
        inputs: the batch's preprocessed images (B of them).
        pruner: the pruner, or None for the full model.
        preps, seeds: per sample, what ``pruner.prepare`` returned and its seed.
        max_new_tokens, use_cache: passed to :meth:`altp.pruning.engine.PruningEngine.generate`.

    Returns:
        One :class:`Decoded` per sample, in batch order.
    """
    # Lazy: importing an adapter (the training code does) stays free of the engine and every pruner.
    from altp.pruning.engine import PruningEngine

    batch_size = len(inputs)
    if not (len(preps) == len(seeds) == batch_size >= 1):
        raise ValueError(f"need one prep and one seed per image: {batch_size} images, "
                         f"{len(preps)} preps, {len(seeds)} seeds")
    device = steps.device
    t0 = time.perf_counter()
    encoding = steps.encode(inputs)
    synchronize(device)
    t1 = time.perf_counter()
    engine = PruningEngine(lm=steps.lm, pruner=pruner)
    answers: list[list[Answer]] = [[] for _ in range(batch_size)]
    prefill_ms = decode_ms = 0.0
    pending = list(range(batch_size))
    for q in range(steps.num_questions):
        prompts = {b: steps.prompt(encoding, b, q) for b in pending}
        for group in _groups({b: int(p.shape[1]) for b, p in prompts.items()}):
            out = engine.generate(
                inputs_embeds=torch.cat([prompts[b] for b in group]), visual_start=steps.visual_start,
                num_visual=steps.num_visual, grid=steps.grid, prep=[preps[b] for b in group],
                max_new_tokens=max_new_tokens, eos_token_id=steps.eos_token_id, use_cache=use_cache,
                seed=[seeds[b] for b in group],
                vision=steps.vision(encoding, group) if steps.vision is not None else None,
            )  # fmt: skip
            prefill_ms += out.prefill_ms
            decode_ms += out.decode_ms
            DECODE_COUNTS.steps += out.steps
            DECODE_COUNTS.row_steps += out.row_steps
            lengths = out.lengths.tolist() if out.lengths is not None else [out.tokens.shape[1]] * len(group)
            for i, b in enumerate(group):
                tokens, hidden = out.tokens[i, : lengths[i]], out.step_hidden[i, : lengths[i]]  # (T,), (T, D)
                record = out.record.row(i, select_ms=out.record.select_ms / len(group))
                answers[b].append(Answer(question=q, tokens=tokens, seg_states=steps.seg_states(hidden, tokens),
                                         record=record))  # fmt: skip
        pending = [b for b in pending if not answers[b][-1].seg_states.shape[0]]
        if not pending:
            break
    synchronize(device)
    t2 = time.perf_counter()
    mask_lists = steps.masks(inputs, encoding, [a[-1].seg_states for a in answers])
    synchronize(device)
    t3 = time.perf_counter()
    texts = [steps.parse(a[-1].tokens.tolist()) for a in answers]
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


@dataclass
class _Image(Generic[E]):
    """One image of a continuous stream, from its admission until its masks are decoded."""

    key: Any
    inputs: ImageInputs
    prep: Any
    seed: int
    encoding: E
    index: int
    images: Sequence[ImageInputs]  # every image of its encoding, in the encoding's order
    vision_ms: float
    answers: list[Answer] = field(default_factory=list)
    prefill_ms: float = 0.0
    decode_ms: float = 0.0


def stream_decode(
    steps: GCGSteps[E],
    work: Iterable[tuple[Any, ImageInputs, Any, int]],
    *,
    pruner: Pruner | None,
    slots: int,
    max_new_tokens: int,
    use_cache: bool | None,
) -> Iterator[tuple[Any, Decoded[E]]]:
    """Continuous batching: each image as it finishes, while finished rows take the next image.

    Args:
        steps: the adapter's steps.
        work: ``(key, inputs, prep, seed)`` per image; read lazily, at most ``slots``
            images ahead of the ones finished.
        pruner: the pruner, or None for the full model.
        slots: rows decoding at once (the batch size).
        max_new_tokens, use_cache: as :func:`generate_and_decode`. The cached path only:
            with ``use_cache=False`` or a pruner that re-selects per step, the images
            run in static batches of ``slots`` (yielded in order).

    Yields:
        ``(key, Decoded)`` per image, in the order they finish. Each equals
        :func:`generate_and_decode` of that image alone (bit for bit on the CPU in fp32).
        Whenever a row ends, newcomers are encoded together, prefilled in groups of
        equal prompt length (:class:`~altp.pruning._continuous.DecodePool`) and join the
        rows decoding; an OMG-LLaVA answer without a ``[SEG]`` state puts the image
        back at the head of the queue with the next question. Timings are the image's
        shares: of its encoding group's vision time, of its prefill groups', of every
        decoding step it took part in (the step's time over its live rows), plus its own
        masks; ``total_ms`` is their sum and ``batch_size`` is ``slots``.
    """
    from altp.pruning._continuous import DecodePool
    from altp.pruning.engine import PruningEngine

    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    items = iter(work)
    if use_cache is False or (pruner is not None and pruner.reselects_per_step):
        while chunk := list(itertools.islice(items, slots)):
            keys, inputs, preps, seeds = zip(*chunk, strict=True)
            decoded = generate_and_decode(steps, list(inputs), pruner=pruner, preps=preps, seeds=seeds,
                                          max_new_tokens=max_new_tokens, use_cache=use_cache)  # fmt: skip
            yield from zip(keys, decoded, strict=True)
        return
    device = steps.device
    pool = DecodePool(PruningEngine(lm=steps.lm, pruner=pruner), max_new_tokens=max_new_tokens,
                      eos_token_id=steps.eos_token_id)  # fmt: skip
    queue: deque[tuple[_Image[E], int]] = deque()  # (image, question) re-asked
    exhausted = False
    try:
        while True:
            free = slots - pool.live - len(queue)
            fresh = [] if exhausted else list(itertools.islice(items, max(free, 0)))
            exhausted = exhausted or len(fresh) < max(free, 0)
            if fresh:
                t0 = time.perf_counter()
                images = [x for _, x, _, _ in fresh]
                encoding = steps.encode(images)
                synchronize(device)
                share = (time.perf_counter() - t0) * 1e3 / len(fresh)
                for i, (key, x, prep, seed) in enumerate(fresh):
                    queue.append((_Image(key=key, inputs=x, prep=prep, seed=seed, encoding=encoding, index=i,
                                         images=images, vision_ms=share), 0))  # fmt: skip
            joining = [queue.popleft() for _ in range(min(len(queue), slots - pool.live))]
            finished = [f for group in _prompt_groups(steps, joining) for f in _admit(steps, pool, group)]
            finished += pool.step()
            for f in finished:
                image, q = f.key
                tokens = f.tokens
                image.answers.append(Answer(question=q, tokens=tokens, seg_states=steps.seg_states(f.step_hidden, tokens),
                                            record=f.record))  # fmt: skip
                image.prefill_ms += f.prefill_ms
                image.decode_ms += f.decode_ms
                if not image.answers[-1].seg_states.shape[0] and q + 1 < steps.num_questions:
                    queue.appendleft((image, q + 1))
                    continue
                yield image.key, _decoded(steps, image, slots)
            if exhausted and not queue and not pool.live:
                break
    finally:
        DECODE_COUNTS.steps += pool.stats.steps
        DECODE_COUNTS.row_steps += pool.stats.row_steps
        pool.close()


def _prompt_groups(
    steps: GCGSteps[E], joining: list[tuple[_Image[E], int]]
) -> list[list[tuple[_Image[E], int, torch.Tensor]]]:
    """The newcomers' prompts, grouped by prompt length (each group prefills as one engine call)."""
    prompts = [(image, q, steps.prompt(image.encoding, image.index, q)) for image, q in joining]
    return [[prompts[i] for i in group] for group in _groups({i: int(p.shape[1]) for i, (_, _, p) in enumerate(prompts)})]


def _admit(steps: GCGSteps[E], pool: Any, group: list[tuple[_Image[E], int, torch.Tensor]]) -> list[Any]:
    """One prefill group into the pool; returns the rows already finished."""
    from altp.pruning.base import VisionSignals

    signals = None
    if steps.vision is not None:
        parts = [steps.vision(image.encoding, [image.index]) for image, _, _ in group]
        signals = VisionSignals.concat([s for s in parts if s is not None]) if any(parts) else None
    return pool.admit([(image, q) for image, q, _ in group], inputs_embeds=torch.cat([p for _, _, p in group]),
                      visual_start=steps.visual_start, num_visual=steps.num_visual, grid=steps.grid,
                      prep=[image.prep for image, _, _ in group], seed=[image.seed for image, _, _ in group],
                      vision=signals)  # fmt: skip


def _decoded(steps: GCGSteps[E], image: _Image[E], slots: int) -> Decoded[E]:
    """An image whose last answer stands: its masks and text, and its timings."""
    t0 = time.perf_counter()
    states = image.answers[-1].seg_states
    none = states.new_zeros((0, states.shape[-1]))
    masks = steps.masks(image.images, image.encoding,
                        [states if i == image.index else none for i in range(len(image.images))])[image.index]  # fmt: skip
    synchronize(steps.device)
    mask_ms = (time.perf_counter() - t0) * 1e3
    caption, phrases = steps.parse(image.answers[-1].tokens.tolist())
    total = image.vision_ms + image.prefill_ms + image.decode_ms + (time.perf_counter() - t0) * 1e3
    timings = {"vision_ms": image.vision_ms, "prefill_ms": image.prefill_ms, "decode_ms": image.decode_ms,
               "mask_ms": mask_ms, "total_ms": total, "batch_size": slots}  # fmt: skip
    return Decoded(encoding=image.encoding, index=image.index, answers=image.answers, caption=caption,
                   phrases=phrases, masks=masks, timings=timings)  # fmt: skip


class StepsAdapter:
    """``predict_batch`` and ``predict_stream`` of an adapter that describes itself by its steps.

    An adapter (GLaMM, OMG-LLaVA) subclasses this before :class:`altp.models.base.GCGModel`
    and defines :meth:`gcg_steps`, :meth:`decoded_prediction` and ``max_new_tokens``.
    """

    max_new_tokens: int

    def gcg_steps(self, pruner: Pruner | None) -> GCGSteps[Any]:
        """The adapter's :class:`GCGSteps` for ``pruner``."""
        raise NotImplementedError

    def decoded_prediction(self, decoded: Decoded[Any]) -> GCGPrediction:
        """The :class:`~altp.models.base.GCGPrediction` of one decoded image."""
        raise NotImplementedError

    @torch.inference_mode()
    def predict_batch(
        self,
        inputs: Sequence[ImageInputs],
        *,
        pruner: Pruner | None,
        preps: Sequence[Any],
        seeds: Sequence[int],
        max_new_tokens: int | None = None,
        use_cache: bool | None = None,
    ) -> list[GCGPrediction]:
        """A static batch; see :meth:`altp.models.base.GCGModel.predict_batch`."""
        decoded = generate_and_decode(self.gcg_steps(pruner), list(inputs), pruner=pruner, preps=preps, seeds=seeds,
                                      max_new_tokens=int(max_new_tokens or self.max_new_tokens), use_cache=use_cache)
        return [self.decoded_prediction(d) for d in decoded]

    @torch.inference_mode()
    def predict_stream(
        self,
        work: Iterable[tuple[Any, ImageInputs, Any, int]],
        *,
        pruner: Pruner | None,
        slots: int,
        max_new_tokens: int | None = None,
        use_cache: bool | None = None,
    ) -> Iterator[tuple[Any, GCGPrediction]]:
        """Continuous batching; see :meth:`altp.models.base.GCGModel.predict_stream`."""
        for key, d in stream_decode(self.gcg_steps(pruner), work, pruner=pruner, slots=slots,
                                    max_new_tokens=int(max_new_tokens or self.max_new_tokens), use_cache=use_cache):
            yield key, self.decoded_prediction(d)
