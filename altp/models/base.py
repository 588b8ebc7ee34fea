"""The model-adapter interface the runner calls, and what the adapters share.

A GCG model adapter (:class:`altp.models.glamm.GLaMM`,
:class:`altp.models.omg_llava.OmgLlava`) turns one image into a grounded caption:
text with ``<p>phrase</p> [SEG]`` tags, one binary mask per phrase. The runner only
needs :class:`GCGModel`; everything model-specific (preprocessing, the vision tower,
the prompt, mask decoding) stays inside the adapter, and the timed
generate-and-decode pipeline they share is :mod:`altp.models.generate`.

Index conventions: masks are ``(H, W)`` bool at the *original* image size; the
i-th mask pairs with the i-th phrase (that order is what the evaluator's AP50
tie-breaking sees, so adapters must keep the order the model produced).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

    from altp.flops import LLMShape
    from altp.pruning.base import Pruner
    from altp.pruning.records import PruneRecord

__all__ = ["GCGModel", "GCGPrediction", "ImageInputs", "MissingCheckpointError", "parse_dtype",
           "restore_rope_fp32", "rope_fp32_masters"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str, *, allowed: tuple[str, ...] = tuple(_DTYPES)) -> torch.dtype:
    """The torch dtype a config names (``float32``, ``bfloat16``, ``float16``), limited to ``allowed``.

    Raises:
        ValueError: the name is not in ``allowed``, listing the valid ones.
    """
    if name not in allowed:
        raise ValueError(f"dtype must be one of {sorted(allowed)}, got {name!r}")
    return _DTYPES[name]


def rope_fp32_masters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32 copies of every rotary embedding's ``inv_freq`` under ``module`` (by submodule name).

    RoPE frequencies must stay fp32 under ``.to(bfloat16)``: a bf16 ``inv_freq`` puts
    position ~600 off by up to a radian in the fast rotary channels. Keep these
    masters at build time and call :func:`restore_rope_fp32` after every cast.
    Meta tensors (shape-only builds) are skipped.
    """
    # (module attributes are typed Tensor | Module; a rotary embedding's inv_freq is a tensor buffer)
    return {n: m.inv_freq.detach().float().cpu().clone() for n, m in module.named_modules()  # pyright: ignore[reportCallIssue]
            if "RotaryEmbedding" in type(m).__name__ and hasattr(m, "inv_freq") and not m.inv_freq.is_meta}


def restore_rope_fp32(module: torch.nn.Module, masters: dict[str, torch.Tensor]) -> None:
    """Put the fp32 ``inv_freq`` masters back (on each buffer's current device)."""
    for name, master in masters.items():
        mod = module.get_submodule(name)
        mod.inv_freq = master.to(mod.inv_freq.device)  # pyright: ignore[reportCallIssue, reportArgumentType]  (as above)
        if hasattr(mod, "original_inv_freq"):
            mod.original_inv_freq = master.to(mod.inv_freq.device).clone()


class MissingCheckpointError(FileNotFoundError):
    """A weights file the model needs is not on disk.

    ``str(err)`` is ONE line naming the missing path and the command that fetches
    it, so the runner can print it without a traceback and exit non-zero.
    """

    def __init__(self, *, missing: str, how_to_get: str) -> None:
        self.missing = missing
        self.how_to_get = how_to_get
        super().__init__(f"missing {missing}: get it with `{how_to_get}`")

    def __str__(self) -> str:  # FileNotFoundError's default str() adds errno noise
        return f"missing {self.missing}: get it with `{self.how_to_get}`"


@dataclass
class GCGPrediction:
    """One image's grounded caption.

    Attributes:
        caption: the answer with tags and ``[SEG]`` removed, whitespace collapsed.
        phrases: the ``<p>...</p>`` contents, stripped, in generation order.
        masks: one (H, W) bool array per ``[SEG]`` token at the original image
            size, in generation order. Normally ``len(masks) == len(phrases)``;
            a model that emits a phrase without ``[SEG]`` (or the reverse) makes
            them differ and the adapter reports what the model produced.
        record: the engine's PruneRecord (kept tokens per stage, extras, timings).
        num_text_tokens: non-visual prompt tokens (for the FLOPs ratio).
        num_visual: visual tokens before pruning (576 for GLaMM, 256 for OMG-LLaVA).
        new_tokens: generated tokens, EOS included if it was produced.
        timings: milliseconds: vision_ms, prefill_ms, decode_ms, mask_ms, total_ms,
            measured from the preprocessed inputs (:class:`ImageInputs`) on; plus
            ``batch_size``, the images that shared the forwards. In a batch each
            stage's time is the batch's time divided by ``batch_size`` (amortised
            per image), so the per-image numbers of a batch sum to its wall time.
    """

    caption: str
    phrases: list[str]
    masks: list[np.ndarray]
    record: PruneRecord
    num_text_tokens: int
    num_visual: int
    new_tokens: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageInputs:
    """One image preprocessed on the CPU for one model: what :meth:`GCGModel.preprocess` returns.

    Deterministic, picklable and made without the model's weights, so a
    ``torch.utils.data.DataLoader`` worker can build it while the model runs.
    Only uint8 pixels: the model normalises them into its float inputs itself, on
    its own device, in ``predict_batch`` (a quarter of float32's bytes between
    processes and to the GPU, and numpy arrays cross a process boundary inside
    the pickle, without a shared-memory segment per tensor).

    Attributes:
        vision_image: (H', W', 3) uint8, exactly the pixels the vision tower sees
            (``pruner.prepare``'s input; equal to ``model.vision_image(image)``).
            GLaMM normalises it into CLIP's input, OMG-LLaVA into its 1024 px input.
        size: (H, W) of the original image (the size of the predicted masks).
        pixels: any other uint8 arrays the model needs, by name. GLaMM: ``sam``
            (h, w, 3), SAM's longest-side resize before normalising and padding
            (:meth:`altp.models.sam.GroundingEncoder.resize`). OMG-LLaVA: none.
    """

    vision_image: np.ndarray
    size: tuple[int, int]
    pixels: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class GCGModel(Protocol):
    """What the runner (and the object-coverage diagnostic) needs from a grounded-conversation model.

    Build one by registry name with :func:`altp.models.build_model`.

    Attributes:
        name: registry / table label (``glamm``, ``glamm_shapes``, ``omg_llava_tiny``, ...).
        grid: (rows, cols) of the visual patch grid, rows * cols == num_visual;
            visual token ``r * cols + c`` is grid cell ``(r, c)`` (row-major).
        num_visual: visual tokens the LLM sees before pruning (the pruners' budget base).
        llm_shape: decoder shape for the eq.-5 FLOPs ratio.
        vision_signals: which :class:`altp.pruning.base.VisionSignals` the vision tower
            can give the LLM-input pruners (GLaMM's CLIP ViT: all; OMG-LLaVA's ConvNeXt,
            which has no CLS token and no attention: none).
    """

    name: str
    grid: tuple[int, int]
    num_visual: int
    llm_shape: LLMShape
    vision_signals: frozenset[str]

    @property
    def device(self) -> torch.device:
        """Where the LLM runs (inputs go there)."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the LLM (OMG-LLaVA's visual side stays float32 whatever it is)."""
        ...

    def vision_image(self, image: Image.Image) -> np.ndarray:
        """(H, W, 3) uint8: exactly the pixels the vision tower sees (for Pruner.prepare)."""
        ...

    def preprocess(self, image: Image.Image) -> ImageInputs:
        """CPU-only, deterministic preprocessing of one decoded image (any mode; converted to RGB).

        Safe in a forked ``DataLoader`` worker: no weights, no device. Its
        ``vision_image`` equals :meth:`vision_image` of the same image.
        """
        ...

    def token_grid_fraction(self, mask: np.ndarray) -> np.ndarray:
        """(rows, cols) float64 in [0, 1]: how much of each visual token's patch ``mask`` covers.

        ``mask`` is (H, W) bool at the original image size; it goes through exactly the
        resize / crop / padding of :meth:`vision_image`, and entry ``[r, c]`` is the
        covered fraction of the area token ``r * cols + c`` stands for (padding and
        cropped-away image parts count as uncovered; see :mod:`altp.models.patch_grid`).
        """
        ...

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
        """Greedy GCG inference on a batch of preprocessed images, one prediction per input in order.

        Each image's prediction equals :meth:`predict` on that image alone (the
        batch only shares the forwards); ``timings`` are amortised per image
        (see :class:`GCGPrediction`).

        Args:
            inputs: what :meth:`preprocess` returned, one per image.
            pruner: the pruner, or None for the full model.
            preps: per image, ``pruner.prepare(inputs[i].vision_image, self.grid)``
                (None entries unpruned).
            seeds: per-image seeds for random pruners.
            max_new_tokens, use_cache: as :meth:`predict`.
        """
        ...

    def predict_stream(
        self,
        work: Iterable[tuple[Any, ImageInputs, Any, int]],
        *,
        pruner: Pruner | None,
        slots: int,
        max_new_tokens: int | None = None,
        use_cache: bool | None = None,
    ) -> Iterator[tuple[Any, GCGPrediction]]:
        """Continuous batching: ``(key, prediction)`` per image, in the order the images finish.

        ``work`` yields ``(key, inputs, prep, seed)`` per image and is read as slots free
        up; at most ``slots`` images decode at once, and a finished image's slot takes the
        next one (:func:`altp.models.generate.stream_decode`). Each prediction equals
        :meth:`predict_batch` of that image alone; ``timings`` are the image's shares of
        the work it took part in.
        """
        ...

    def predict(
        self,
        image: Image.Image,
        *,
        pruner: Pruner | None,
        prep: Any,
        max_new_tokens: int | None = None,
        seed: int = 0,
        use_cache: bool | None = None,
    ) -> GCGPrediction:
        """Greedy GCG inference on one image with ``pruner`` (None = unpruned).

        ``predict_batch([self.preprocess(image)], preps=[prep], seeds=[seed], ...)[0]``.

        Args:
            image: any PIL image (converted to RGB).
            pruner: the pruner, or None for the full model.
            prep: what ``pruner.prepare(self.vision_image(image), self.grid)`` returned
                (None unpruned).
            max_new_tokens: None = the model's default.
            seed: per-image seed for random pruners.
            use_cache: None decodes from the KV cache, except for a pruner whose
                ``reselects_per_step`` is True, which needs the uncached path; False
                recomputes the sequence every step; True forces the cache.

        The one shared implementation: an adapter that subclasses :class:`GCGModel` inherits it.
        """
        return self.predict_batch([self.preprocess(image)], pruner=pruner, preps=[prep], seeds=[seed],
                                  max_new_tokens=max_new_tokens, use_cache=use_cache)[0]
