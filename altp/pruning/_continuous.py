"""Continuous batching: rows of different lengths decode together, and a finished row's slot is refilled.

:class:`DecodePool` holds the rows being decoded. :meth:`DecodePool.admit` runs
newcomers' prefill (with pruning) through the engine, :meth:`DecodePool.step`
decodes one token for every live row and hands back the rows that finished, so
the caller can put the next image in their place. The rows' KV caches differ in
length (different prompts, pruning stages, answers started at different steps),
so each row owns a slot of a per-layer buffer (:class:`_SlotCache`): its prefill's
keys and values are copied to the start of its slot, a step writes every row's new
token with one indexed copy per layer, and the attention reads each row's cache as
a batch-of-one view of its slot. A step runs the stock decoder layers once for
all rows: the linear layers as one batched call (per sample on the CPU,
:func:`~altp.pruning._rowwise.per_sample_linear`), each row with its own rotary
position (its own plan and step), and the attention through :func:`rows_attention`,
an attention function registered with transformers' ``AttentionInterface`` that
the config names for the duration of the decoding steps (restored before any
prefill):

* on the CPU, one call of the model's own attention (SDPA or eager) per row, on
  that row's query and its own cached keys and values: the batch-1 computation, so
  every row keeps its batch-1 bits in fp32;
* elsewhere, one batched SDPA call over the rows' caches padded to the longest,
  with a per-row boolean mask (last-bit differences from batch 1, as batched
  results on CUDA have anyway).

Only the cached path: a pruner that re-selects per step, or ``use_cache=False``,
recomputes whole sequences and is run in static batches by the caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from altp._device import synchronize
from altp.pruning._plan import PrunePlan
from altp.pruning._rowwise import per_sample_linear
from altp.pruning.records import PruneRecord

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers.cache_utils import Cache

    from altp.pruning._kv_cache import GrowingLayer
    from altp.pruning.base import VisionSignals
    from altp.pruning.engine import PruningEngine

__all__ = ["ROWS_ATTENTION", "DecodePool", "FinishedRow", "rows_attention"]

ROWS_ATTENTION = "altp_rows"


class _SlotCache:
    """Every row's KV cache, per layer one key and one value buffer of shape (slots, H, capacity, D).

    Row r's cache in layer l is ``keys[l][slot_r, :, :length]``: a view with a batch of one,
    handed to the attention exactly as a batch-1 cache hands its keys over (only the
    strides of the leading dims differ, which the attention's arithmetic does not see:
    ``tests/test_continuous.py`` compares the bits). A decoding step writes every row's
    new key and value with one indexed copy per layer.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def _room(self, layer: int, slots: int, length: int, like_k: torch.Tensor, like_v: torch.Tensor) -> None:
        k, v = self.keys[layer], self.values[layer]
        if k is not None and v is not None and k.shape[0] >= slots and k.shape[2] >= length:
            return
        s = max(slots, k.shape[0] if k is not None else 0)
        cap = max(length + max(64, length), k.shape[2] if k is not None else 0)  # doubling
        nk = like_k.new_zeros((s, like_k.shape[1], cap, like_k.shape[-1]))
        nv = like_v.new_zeros((s, like_v.shape[1], cap, like_v.shape[-1]))
        if k is not None and v is not None:
            nk[: k.shape[0], :, : k.shape[2]].copy_(k)
            nv[: v.shape[0], :, : v.shape[2]].copy_(v)
        self.keys[layer], self.values[layer] = nk, nv

    def put(self, layer: int, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A prefill's (1, H, L, D) keys and values as the start of ``slot``'s cache."""
        n = keys.shape[-2]
        self._room(layer, slot + 1, n, keys, values)
        k, v = self.keys[layer], self.values[layer]
        assert k is not None and v is not None  # made by _room
        k[slot, :, :n].copy_(keys[0])
        v[slot, :, :n].copy_(values[0])

    def append(self, layer: int, slots: torch.Tensor, at: torch.Tensor, top: int, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Write (B, H, 1, D) keys and values at position ``at[b]`` of slot ``slots[b]``; returns the buffers."""
        self._room(layer, 1, top + 1, keys, values)
        k, v = self.keys[layer], self.values[layer]
        assert k is not None and v is not None  # made by _room
        k[slots, :, at] = keys[:, :, 0]
        v[slots, :, at] = values[:, :, 0]
        return k, v


class _RowCaches:
    """One step's view of the slot cache, passed to the decoder layers as their ``past_key_values``.

    ``update`` writes the rows' new keys and values and keeps, for :func:`rows_attention`
    (which the same layer calls right after), the buffers and each row's slot and length.
    """

    def __init__(self, cache: _SlotCache, slots: list[int], lengths: list[list[int]], base: Any, direct: bool,
                 padded: bool) -> None:  # fmt: skip
        self.cache = cache
        self.slots = slots
        self.lengths = lengths  # per layer, per row: its cached tokens before this step
        self.base = base  # the model's own attention function (sdpa or eager)
        self.direct = direct  # base is transformers' SDPA: call torch's SDPA as it does, without its checks
        self.padded = padded
        dev = _cache_device(cache)
        self._slots_t = torch.tensor(slots, device=dev)
        self._at = torch.tensor(lengths, device=dev)  # (layers, B)
        self.layer = 0
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.layer = layer_idx
        self.buffers = self.cache.append(layer_idx, self._slots_t, self._at[layer_idx], max(self.lengths[layer_idx]),
                                         key_states, value_states)  # fmt: skip
        return key_states, value_states  # unused: rows_attention reads the buffers

    def rows(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Per row: (b, keys, values) of its cache including this step's token, (1, H, L_b, D) views."""
        assert self.buffers is not None  # update() ran first in this layer
        k, v = self.buffers
        for b, (s, n) in enumerate(zip(self.slots, self.lengths[self.layer], strict=True)):
            yield b, k[s : s + 1, :, : n + 1], v[s : s + 1, :, : n + 1]


def _cache_device(cache: _SlotCache) -> torch.device | None:
    k = next((t for t in cache.keys if t is not None), None)
    return k.device if k is not None else None


def rows_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one decoding step whose rows have caches of different lengths.

    ``query`` is (B, H, 1, D); the keys and values are each row's own, from the
    :class:`_RowCaches` in ``kwargs["altp_rows"]``. Returns (B, 1, H, D) as
    transformers' attention functions do.
    """
    del key, value, attention_mask  # the rows' own keys and values are in the slot cache
    rows = cast(_RowCaches, kwargs.pop("altp_rows"))
    if rows.padded:
        return _padded_attention(module, query, rows, kwargs.get("scaling")), None
    if rows.direct:
        # transformers' sdpa_attention_forward for one decoding query without a mask (on the CPU: GQA
        # through enable_gqa), minus its Python checks: the same torch call on the same tensors.
        groups = int(getattr(module, "num_key_value_groups", 1))
        gqa = {"enable_gqa": True} if groups > 1 else {}
        outs = [F.scaled_dot_product_attention(query[b : b + 1], k, v, attn_mask=None, dropout_p=0.0,
                                               scale=kwargs.get("scaling"), is_causal=False, **gqa)
                for b, k, v in rows.rows()]  # fmt: skip
        return torch.cat(outs).transpose(1, 2).contiguous(), None
    outs = [rows.base(module, query[b : b + 1], k, v, None, **kwargs)[0] for b, k, v in rows.rows()]
    return torch.cat(outs), None


def _padded_attention(module: torch.nn.Module, query: torch.Tensor, rows: _RowCaches,
                      scaling: float | None) -> torch.Tensor:  # fmt: skip
    """One SDPA call over the rows' caches up to the longest, masked per row: (B, 1, H, D)."""
    assert rows.buffers is not None  # update() ran first in this layer
    k, v = rows.buffers
    lengths = torch.tensor(rows.lengths[rows.layer], device=query.device) + 1  # (B,)
    n, b = int(lengths.max()), len(rows.slots)
    if rows.slots == list(range(b)):  # the usual case (rows in slot order, no free slot among them): views
        keys, values = k[:b, :, :n], v[:b, :, :n]  # (B, H_kv, n, D)
    else:  # a gather (copy) while finished rows' slots wait for newcomers
        keys, values = k[rows._slots_t, :, :n], v[rows._slots_t, :, :n]
    mask = (torch.arange(n, device=query.device)[None] < lengths[:, None])[:, None, None]  # (B, 1, 1, n)
    groups = int(getattr(module, "num_key_value_groups", 1))
    out = F.scaled_dot_product_attention(query, repeat_kv(keys, groups), repeat_kv(values, groups), attn_mask=mask,
                                         scale=scaling)  # fmt: skip
    return out.transpose(1, 2).contiguous()


AttentionInterface.register(ROWS_ATTENTION, rows_attention)


@dataclass
class FinishedRow:
    """A row that ended (EOS or ``max_new_tokens``): what the static engine returns for its sample.

    Attributes:
        key: what the caller admitted it with.
        tokens: (T,) generated ids, up to and including the first EOS.
        step_hidden: (T, D) final-layer normed state whose logits produced each token.
        record: its :class:`PruneRecord` (a batch of one).
        prefill_ms: its share of its prefill group's time.
        decode_ms: its share (time / live rows) of every step it took part in.
    """

    key: Any
    tokens: torch.Tensor
    step_hidden: torch.Tensor
    record: PruneRecord
    prefill_ms: float
    decode_ms: float


@dataclass
class _Row:
    key: Any
    plan: PrunePlan
    slot: int
    prefilled: list[int]  # per layer, the tokens its prefill cached (a step adds one to every layer)
    record: PruneRecord
    prefill_ms: float
    tokens: list[int] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    decode_ms: float = 0.0


@dataclass
class PoolStats:
    """Decoding steps run and the live rows they carried (slot utilisation = row_steps / (slots x steps))."""

    steps: int = 0
    row_steps: int = 0


class DecodePool:
    """Rows decoding together, each from its own prefill; see the module docstring.

    Args:
        engine: the :class:`~altp.pruning.engine.PruningEngine` (its LM and pruner).
        max_new_tokens: tokens per answer at most (the first one from the prefill included).
        eos_token_id: id(s) that end a row.
        padded: batched attention over padded caches (default: on every device but the CPU).
    """

    def __init__(
        self,
        engine: PruningEngine,
        *,
        max_new_tokens: int,
        eos_token_id: int | list[int] | None,
        padded: bool | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if engine.pruner is not None and engine.pruner.reselects_per_step:
            raise ValueError(f"pruner {engine.pruner.name!r} re-selects per step: it decodes uncached, in static batches")
        self.engine = engine
        self.lm = engine.lm
        self.max_new_tokens = int(max_new_tokens)
        self.eos = set() if eos_token_id is None else ({eos_token_id} if isinstance(eos_token_id, int)
                                                       else set(eos_token_id))  # fmt: skip
        self.padded = padded
        self.rows: list[_Row] = []
        self.stats = PoolStats()
        self.cache = _SlotCache(len(engine.layers))
        self._free: list[int] = []  # slots of finished rows, reused lowest first
        self._slots = 0
        self._decoding: ExitStack | None = None
        self._impl = "eager"
        self._dtype: torch.dtype | None = None

    @property
    def live(self) -> int:
        """Rows decoding."""
        return len(self.rows)

    # -- admission ---------------------------------------------------------------------------------
    def admit(
        self,
        keys: Sequence[Any],
        *,
        inputs_embeds: torch.Tensor,
        visual_start: int,
        num_visual: int,
        grid: tuple[int, int],
        prep: Sequence[Any] | None,
        seed: Sequence[int],
        vision: VisionSignals | None = None,
    ) -> list[FinishedRow]:
        """Prefill ``inputs_embeds`` (G, N, D) (one prompt length) and add its rows; returns those already done.

        Arguments as :meth:`~altp.pruning.engine.PruningEngine.generate`; ``keys`` names the G rows.
        """
        self._stop_decoding()  # the prefill runs the model's own attention and unpatched linears
        eng = self.engine
        dev = inputs_embeds.device
        self._dtype = inputs_embeds.dtype
        eng._vision = vision
        synchronize(dev)
        t0 = time.perf_counter()
        plan, cache, h_last, tok = eng._prefill(inputs_embeds, visual_start, num_visual, grid,
                                                list(prep) if prep is not None else None, list(seed),
                                                use_cache=True)  # fmt: skip
        assert cache is not None  # use_cache=True
        first = tok.tolist()
        synchronize(dev)
        g = len(keys)
        share = (time.perf_counter() - t0) * 1e3 / g
        record = plan.record(eng.pruner)
        layers = [cast("GrowingLayer", layer) for layer in cache.layers]
        done: list[FinishedRow] = []
        for i, key in enumerate(keys):
            row = _Row(key=key, plan=plan, slot=-1, prefilled=[int(layer.get_seq_length()) for layer in layers],
                       record=record.row(i, select_ms=record.select_ms / g), prefill_ms=share, tokens=[first[i]],
                       states=[h_last[i]])  # fmt: skip
            if first[i] in self.eos or self.max_new_tokens == 1:
                done.append(_finish(row))
                continue
            row.slot = self._take_slot()
            for n, layer in enumerate(layers):
                assert layer.keys is not None and layer.values is not None  # every layer ran in the prefill
                self.cache.put(n, row.slot, layer.keys[i : i + 1], layer.values[i : i + 1])
            self.rows.append(row)
        self.rows.sort(key=lambda r: r.slot)  # slot order: the padded attention then reads views, no gather
        return done

    def _take_slot(self) -> int:
        if self._free:
            self._free.sort()
            return self._free.pop(0)
        self._slots += 1
        return self._slots - 1

    # -- decoding ----------------------------------------------------------------------------------
    def step(self) -> list[FinishedRow]:
        """Decode one token for every live row; returns (and drops) the rows that finished."""
        if not self.rows:
            return []
        rows, lm = self.rows, self.lm
        dev = self.engine.layers[0].self_attn.q_proj.weight.device
        synchronize(dev)
        t0 = time.perf_counter()
        tok = torch.tensor([r.tokens[-1] for r in rows], device=dev)  # (B,)
        self._start_decoding(tok)
        padded = dev.type != "cpu" if self.padded is None else self.padded
        impl = self._impl
        base = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention_forward) if impl != "eager" \
            else eager_attention_forward  # fmt: skip
        # (layers, B): cached tokens before this step = the prefill's + the tokens fed since (all but the last)
        lengths = [list(ns) for ns in zip(*([n + len(r.tokens) - 1 for n in r.prefilled] for r in rows), strict=True)]
        caches = _RowCaches(self.cache, [r.slot for r in rows], lengths, base,
                            direct=base is ALL_ATTENTION_FUNCTIONS.get("sdpa"), padded=padded)  # fmt: skip
        rotary = lm.model.rotary_emb
        h = lm.get_input_embeddings()(tok[:, None]).to(self._dtype)  # (B, 1, D)
        starts = {0} | {at for r in rows for at in r.plan.states}
        pe: tuple[torch.Tensor, torch.Tensor] | None = None
        for i, layer in enumerate(self.engine.layers):
            if i in starts or pe is None:
                j = [len(r.tokens) - 1 for r in rows]  # the generated token fed now, 0-based
                pos = torch.tensor([[r.plan.decode_base_at(i) + k] for r, k in zip(rows, j, strict=True)], device=dev)
                pe = rotary(h, pos)
            h = layer(h, attention_mask=None, position_embeddings=pe, past_key_values=cast("Cache", caches),
                      use_cache=True, altp_rows=caches)  # fmt: skip
        h = lm.model.norm(h)[:, -1]  # (B, D)
        nxt = lm.lm_head(h).argmax(-1).tolist()  # one sync per step: greedy decoding must know who stops
        share = (time.perf_counter() - t0) * 1e3 / len(rows)
        self.stats.steps += 1
        self.stats.row_steps += len(rows)
        stay: list[_Row] = []
        done: list[FinishedRow] = []
        for k, (r, t) in enumerate(zip(rows, nxt, strict=True)):
            r.tokens.append(t)
            r.states.append(h[k])
            r.decode_ms += share
            if t in self.eos or len(r.tokens) >= self.max_new_tokens:
                done.append(_finish(r))
                self._free.append(r.slot)
            else:
                stay.append(r)
        self.rows = stay
        if not stay:
            self._stop_decoding()
        return done

    def close(self) -> None:
        """Restore the model (attention function, linear layers); rows still live are dropped."""
        self._stop_decoding()
        self.rows = []
        self.cache = _SlotCache(len(self.engine.layers))

    # -- the decoding context ----------------------------------------------------------------------
    def _start_decoding(self, like: torch.Tensor) -> None:
        """From the first step after a prefill until the next prefill: per-sample linears, rows attention."""
        if self._decoding is not None:
            return
        self._impl = cast(str, self.lm.config._attn_implementation or "eager")
        stack = ExitStack()
        stack.enter_context(per_sample_linear(self.lm, like))
        stack.enter_context(_rows_attention_named(self.lm.config))
        self._decoding = stack

    def _stop_decoding(self) -> None:
        if self._decoding is not None:
            self._decoding.close()
            self._decoding = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _rows_attention_named(config: Any) -> Iterator[None]:
    """Within the block the config names :func:`rows_attention` as its attention implementation."""
    base = config._attn_implementation
    config._attn_implementation = ROWS_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = base


def _finish(row: _Row) -> FinishedRow:
    return FinishedRow(key=row.key, tokens=torch.tensor(row.tokens, device=row.states[0].device),
                       step_hidden=torch.stack(row.states), record=row.record, prefill_ms=row.prefill_ms,
                       decode_ms=row.decode_ms)  # fmt: skip
