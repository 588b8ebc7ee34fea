"""Batch-invariant linear layers for the one-row-per-sample steps of a batch on the CPU.

A batch of B images must give each image exactly the tokens it gets alone. On
the CPU (MKL, fp32) ``F.linear`` on ``M`` rows takes a different kernel for
``M`` in 1..3 than for ``M >= 4`` (measured: the results differ in the last
bits; every ``M >= 4`` gives a row the same bits), so the steps that run one
row per sample at batch 1 -- each cached decoding step, the logits of the last
prompt token, the scoring row of FastV / PyramidDrop -- would round differently
when B samples stack into ``M = B`` rows, and greedy decoding amplifies a last
bit into another token. Multi-row calls (prefill, vision towers: hundreds of
rows per sample) are already batch-invariant.

:func:`per_sample_linear` fixes it from outside the model: within the context
each ``nn.Linear`` of a module computes ``x (B, ..., K)`` as one ``baddbmm`` with
the weight broadcast (stride 0) over dim 0, the sample, so each sample is its
own ``(m, K) x (K, N)`` problem, which MKL computes with exactly the kernel
``F.linear`` uses on those ``m`` rows alone (measured bit for bit for m = 1, 2,
3, 5; a contiguous copy of the weight would NOT be). ``tests/test_predict_batch.py``
checks the result through the models. A call costs ~22 us for 8 rows of the
shapes model's 128 x 256 layer against ~15 us for one shared-weight GEMM of the
8 rows and ~8 us for one row alone: far less than looping over the samples. The
forward is replaced on the module instances for the duration (no transformers
code is touched); a ``TorchFunctionMode`` would do the same for every op and
measured 65 % slower decoding steps.

On CUDA nothing is changed: there batched results may differ in the last bits
from batch 1.

Vision towers are the other place: oneDNN picks a convolution's algorithm by the
batch size, so a batched image encoder rounds differently from one image alone
(measured: the 3 x 3 convolution of SAM's neck at 256 px, OMG-LLaVA's ConvNeXt
pixel tokens; CLIP's patch convolution happened to agree). On the CPU
:func:`encode_per_sample` runs an encoder one image at a time -- exactly the
batch-1 computation -- and concatenates; on CUDA it is one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from types import MethodType
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["encode_per_sample", "per_sample_linear"]

T = TypeVar("T")


def encode_per_sample(encode: Callable[[torch.Tensor], T], pixels: torch.Tensor,
                      concat: Callable[[list[T]], T] = torch.cat) -> T:
    """``encode(pixels)`` over a batch of images, with each image's batch-1 bits on the CPU.

    Args:
        encode: an image encoder, (B, ...) pixels -> its batched result.
        pixels: (B, ...) the batch.
        concat: joins the B one-image results into the batched result
            (``torch.cat`` along dim 0 for a tensor).
    """
    if pixels.device.type != "cpu" or pixels.shape[0] < 2:
        return encode(pixels)
    return concat([encode(pixels[i : i + 1]) for i in range(pixels.shape[0])])


def _per_sample_forward(
    self: nn.Linear, x: torch.Tensor, *, views: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]]
) -> torch.Tensor:
    """``nn.Linear.forward`` with dim 0 of ``x`` (B, ..., K) as B independent problems.

    A decoding step calls this ~60 times, so the broadcast weight (and bias) views are
    kept in ``views`` per (batch, rows) for the duration of :func:`per_sample_linear` and a 3-D ``x``
    (the usual (B, 1, K)) is used as it is: it cut the call from ~33 to ~22 us here.
    """
    if x.dim() < 2 or x.shape[0] < 2:
        return F.linear(x, self.weight, self.bias)
    b, k, n = x.shape[0], self.in_features, self.out_features
    rows = x if x.dim() == 3 else x.reshape(b, -1, k)  # (B, m, K): sample b's m rows
    key = (b, rows.shape[1])
    if key not in views:
        wt = self.weight.t().expand(b, k, n)  # (B, K, N), stride 0 over B: no copy
        views[key] = (wt, None if self.bias is None else self.bias.expand(b, rows.shape[1], n))
    wt, bias = views[key]
    # the bias fused as addmm fuses it in F.linear
    out = torch.bmm(rows, wt) if bias is None else torch.baddbmm(bias, rows, wt)
    return out if x.dim() == 3 else out.reshape(*x.shape[:-1], n)


@contextmanager
def per_sample_linear(module: nn.Module, like: torch.Tensor) -> Iterator[None]:
    """Within the block, every ``nn.Linear`` in ``module`` gives each sample (dim 0) its batch-1 bits.

    Only on the CPU (see the module docstring); elsewhere a no-op.

    Args:
        module: the module whose linear layers (itself included) run per sample.
        like: a tensor of the batch, for its device.
    """
    if like.device.type != "cpu":
        yield
        return
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for m in linears:
        m.forward = MethodType(partial(_per_sample_forward, views={}), m)  # views: gone with the context
    try:
        yield
    finally:
        for m in linears:
            del m.forward
