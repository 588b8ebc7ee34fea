"""Book-keeping of one prefill's pruning stages (used by :mod:`altp.pruning.engine`).

A :class:`PrunePlan` checks a pruner's schedule, validates each
:class:`~altp.pruning.base.Selection`, turns it into a gather index over the
sequence, and remembers what the decode steps need (which layers start a new
token set and the position the generated tokens get there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from altp.pruning.base import STAGE_SIGNALS, Pruner, PruneStage, Selection
from altp.pruning.records import PruneRecord

__all__ = ["KeptSetLog", "PrunePlan", "StageState"]


@dataclass
class StageState:
    """One stage of a prefill.

    Attributes:
        index: stage number.
        stage: the pruner's :class:`PruneStage`.
        keep: (B, N_after) long, indices into the prompt as it enters this stage
            (prefix, kept visual tokens, suffix); None until selected.
        num_before: prompt tokens entering the stage.
        decode_base: position of generated token 0 in the layers from this stage on.
        merged: (B, M, D) tokens the selection made by merging (None: none), inserted
            at ``merge_at`` of the gathered sequence.
        merge_src: (B, M) long, for each merged token the index (into the sequence
            entering the stage) of the token whose position it takes.
        merge_at: where the merged tokens go: after the prefix and the kept visual tokens.
    """

    index: int
    stage: PruneStage
    keep: torch.Tensor | None = None
    num_before: int = 0
    decode_base: int = 0
    merged: torch.Tensor | None = None
    merge_src: torch.Tensor | None = None
    merge_at: int = 0

    def apply(
        self, h: torch.Tensor, pos: torch.Tensor, n_gen: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the kept tokens of ``h`` (B, num_before + n_gen, D); generated tokens are always kept.

        Returns the gathered hidden states and their position ids (B or 1, L').
        """
        if self.keep is None:
            raise RuntimeError("stage applied before its tokens were selected")
        idx = self.keep  # (B, N_after)
        b = h.shape[0]
        if n_gen:
            tail = torch.arange(self.num_before, self.num_before + n_gen, device=idx.device)
            idx = torch.cat([idx, tail[None].expand(b, -1)], dim=1)
        h = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))
        if self.merged is not None and self.merge_src is not None:
            at = self.merge_at
            h = torch.cat([h[:, :at], self.merged.to(h.dtype), h[:, at:]], dim=1)
            idx = torch.cat([idx[:, :at], self.merge_src, idx[:, at:]], dim=1)  # whose positions they take
        if self.stage.renumber_positions:
            pos = torch.arange(idx.shape[1], device=h.device)[None]
        else:
            pos = torch.gather(pos.expand(b, -1), 1, idx)
        return h, pos


class _Timer:
    """Wall time of one critical-path region; CUDA events avoid a device sync per stage."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start_ev = torch.cuda.Event(enable_timing=True)
            self.end_ev = torch.cuda.Event(enable_timing=True)
            self.start_ev.record()
        else:
            self.t0 = time.perf_counter()
        self.ms: float | None = None

    def stop(self) -> None:
        if self.cuda:
            self.end_ev.record()
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3

    def elapsed_ms(self) -> float:
        if self.cuda:
            self.end_ev.synchronize()
            return float(self.start_ev.elapsed_time(self.end_ev))
        return float(self.ms or 0.0)


@dataclass
class PrunePlan:
    """Stages of one prefill and the state between them (see module docstring)."""

    stages: list[PruneStage]
    batch: int
    num_prompt: int
    visual_start: int
    num_visual: int
    grid: tuple[int, int]
    prep: tuple[Any, ...]
    seed: int | tuple[int, ...]
    num_layers: int
    pruner_name: str
    device: torch.device
    states: dict[int, StageState] = field(init=False)
    visual_ids: torch.Tensor = field(init=False)
    num_current: int = field(init=False)
    num_prompt_current: int = field(init=False)
    first_kept: torch.Tensor | None = field(init=False, default=None)
    kept_by_stage: list[torch.Tensor] = field(init=False, default_factory=list)
    merged_by_stage: list[list[list[list[int]]]] = field(init=False, default_factory=list)
    extras: list[dict[str, Any]] = field(init=False)
    timers: list[_Timer] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._check_schedule()
        self.states = {s.layer: StageState(index=k, stage=s) for k, s in enumerate(self.stages)}
        self._score_layers = {
            s.score_layer
            for s in self.stages
            if s.score_layer is not None and s.score_layer < s.layer
        }
        self.visual_ids = torch.arange(self.num_visual, device=self.device)[None].expand(
            self.batch, -1
        )
        self.num_current = self.num_visual
        self.num_prompt_current = self.num_prompt
        self._base = self.num_prompt  # position of generated token 0 in the current layer range
        self.extras = [{} for _ in range(self.batch)]

    def _check_schedule(self) -> None:
        prev_layer, prev_keep = -1, self.num_visual
        for k, s in enumerate(self.stages):
            where = f"{self.pruner_name}.schedule() stage {k} ({s})"
            if not (prev_layer < s.layer < self.num_layers):
                raise ValueError(f"{where}: layers must be ascending in [0, {self.num_layers})")
            if not (1 <= s.n_keep <= prev_keep):
                raise ValueError(
                    f"{where}: n_keep must be in [1, {prev_keep}] (tokens only ever get fewer)"
                )
            low = max(prev_layer, 0)
            if s.score_layer is not None and not (low <= s.score_layer <= s.layer):
                raise ValueError(
                    f"{where}: score_layer must lie in [{low}, {s.layer}] so that it sees this stage's tokens"
                )
            unknown = set(s.signals) - set(STAGE_SIGNALS)
            if unknown or ("keys" in s.signals and s.score_layer is None):
                raise ValueError(f"{where}: signals must be among {STAGE_SIGNALS}, and 'keys' needs a score_layer")
            prev_layer, prev_keep = s.layer, s.n_keep

    @property
    def visual_offset(self) -> int:
        return self.visual_start

    def stage_at(self, layer: int) -> StageState | None:
        return self.states.get(layer)

    def next_score_layer(self, layer: int) -> int | None:
        """``layer`` if some stage scores with that (already-run) layer's input, else None."""
        return layer if layer in self._score_layers else None

    def timer(self) -> _Timer:
        t = _Timer(self.device)
        self.timers.append(t)
        return t

    def accept(self, st: StageState, sel: Selection) -> None:
        """Validate a pruner's answer and turn it into the stage's gather index (and merged tokens)."""
        idx = sel.indices
        n_merged = self._check_merged(st, sel)
        want = (self.batch, st.stage.n_keep - n_merged)
        who = f"pruner {self.pruner_name} (stage {st.index}, layer {st.stage.layer})"
        if (
            not isinstance(idx, torch.Tensor)
            or idx.dtype not in (torch.int64, torch.int32)
            or tuple(idx.shape) != want
        ):
            got = (
                (idx.dtype, tuple(idx.shape))
                if isinstance(idx, torch.Tensor)
                else type(idx).__name__
            )
            raise ValueError(
                f"{who} must return Selection.indices as a (B, n_keep)={want} integer tensor, got {got}"
            )
        idx = idx.to(device=self.device, dtype=torch.long)
        ok = (idx[:, 1:] > idx[:, :-1]).all() & (idx >= 0).all() & (idx < self.num_current).all()
        if not bool(ok):  # one sync per stage: a wrong selection must never pass silently
            raise ValueError(
                f"{who} returned indices that are not sorted, unique and in [0, {self.num_current}): {idx.tolist()}"
            )
        if sel.extras and len(sel.extras) != self.batch:
            raise ValueError(f"{who} returned {len(sel.extras)} extras for a batch of {self.batch}")
        for d, e in zip(self.extras, sel.extras, strict=False):
            d.update(e)
        a, v = self.visual_start, self.num_current
        n = self.num_prompt_current
        b = self.batch
        dev = self.device
        st.keep = torch.cat(
            [
                torch.arange(a, device=dev)[None].expand(b, -1),
                idx + a,
                torch.arange(a + v, n, device=dev)[None].expand(b, -1),
            ],
            dim=1,
        )  # (B, N_after - M)
        st.num_before = n
        kept_ids = torch.gather(self.visual_ids, 1, idx)
        groups: list[list[list[int]]] = [[] for _ in range(b)]
        if n_merged:
            rel = torch.tensor([[g[0] for g in row] for row in sel.merged_from], device=dev)  # (B, M)
            st.merged, st.merge_src, st.merge_at = sel.merged, rel + a, a + idx.shape[1]
            ids = self.visual_ids.tolist()
            groups = [[[ids[r][j] for j in g] for g in row] for r, row in enumerate(sel.merged_from)]
            self.visual_ids = torch.cat([kept_ids, torch.gather(self.visual_ids, 1, rel)], dim=1)
        else:
            self.visual_ids = kept_ids
        if st.index == 0:
            self.first_kept = kept_ids
        self.kept_by_stage.append(kept_ids)
        self.merged_by_stage.append(groups)
        self.num_current = st.stage.n_keep
        self.num_prompt_current = n - v + st.stage.n_keep
        if st.stage.renumber_positions:
            self._base = self.num_prompt_current
        st.decode_base = self._base

    def _check_merged(self, st: StageState, sel: Selection) -> int:
        """M, the merged tokens of ``sel`` (0 without), after checking their shapes and sources."""
        if sel.merged is None:
            return 0
        who = f"pruner {self.pruner_name} (stage {st.index}, layer {st.stage.layer})"
        m = sel.merged
        if m.dim() != 3 or m.shape[0] != self.batch or not (1 <= m.shape[1] <= st.stage.n_keep):
            raise ValueError(f"{who} must return Selection.merged as (B={self.batch}, M, D) with "
                             f"1 <= M <= n_keep={st.stage.n_keep}, got {tuple(m.shape)}")
        groups = sel.merged_from
        if len(groups) != self.batch or any(
            len(row) != m.shape[1] or any(not g or not all(0 <= j < self.num_current for j in g) for g in row)
            for row in groups
        ):
            raise ValueError(f"{who} must return Selection.merged_from with, per sample, one non-empty group of "
                             f"indices in [0, {self.num_current}) per merged token")
        return int(m.shape[1])

    def decode_base_at(self, layer: int) -> int:
        """Position of generated token 0 in ``layer`` (that of the last stage at or before it)."""
        base = self.num_prompt
        for at, st in self.states.items():
            if at <= layer:
                base = st.decode_base
        return base

    def decode_positions(self, layer: int, j: int) -> torch.Tensor:
        """(1, 1) position of generated token j in the layer range starting at ``layer``."""
        base = self.states[layer].decode_base if layer in self.states else self.num_prompt
        return torch.tensor([[base + j]], device=self.device)

    def record(self, pruner: Pruner | None) -> PruneRecord:
        kept = self.first_kept if self.first_kept is not None else self.visual_ids
        return PruneRecord(
            kept_tokens=kept.tolist(),
            kept_tokens_per_stage=[
                [ids[b].tolist() for ids in self.kept_by_stage] for b in range(self.batch)
            ],
            kept_per_stage=[s.n_keep for s in self.stages],
            stage_layers=[s.layer for s in self.stages],
            merged_tokens_per_stage=(
                [[groups[b] for groups in self.merged_by_stage] for b in range(self.batch)]
                if any(any(row) for row in self.merged_by_stage) else []
            ),
            extras=self.extras,
            select_ms=sum(t.elapsed_ms() for t in self.timers),
            hparams=pruner.hparams() if pruner is not None else {},
        )


class KeptSetLog:
    """Summary of the first-stage kept sets chosen at every step, for pruners that re-select per step.

    Per batch element it counts the selections made (prefill included), the
    distinct kept sets among them and the visual tokens kept at least once:
    three integers in the record instead of T sets of n_keep indices.
    """

    def __init__(self, batch: int) -> None:
        self._sets: list[set[tuple[int, ...]]] = [set() for _ in range(batch)]
        self._union: list[set[int]] = [set() for _ in range(batch)]
        self._steps = [0] * batch

    def add(self, kept: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Log one step's (B, n_keep) original visual ids; rows where ``active`` (B,) is False are skipped."""
        rows = kept.tolist()
        live = [True] * len(rows) if active is None else active.tolist()
        for b, (ids, on) in enumerate(zip(rows, live, strict=True)):
            if on:
                self._sets[b].add(tuple(ids))
                self._union[b].update(ids)
                self._steps[b] += 1

    def extras(self) -> list[dict[str, int]]:
        """Per batch element: ``reselect_steps``, ``reselect_distinct_sets``, ``reselect_union``."""
        return [
            {"reselect_steps": n, "reselect_distinct_sets": len(s), "reselect_union": len(u)}
            for n, s, u in zip(self._steps, self._sets, self._union, strict=True)
        ]
