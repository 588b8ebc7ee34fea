"""Visual-token pruning inside a stock transformers decoder, with greedy decoding.

The engine owns everything a pruner should not see: the loop over decoder
layers, gathering hidden states and position ids at each pruning stage, the
attention masks and the KV cache. The loop mirrors ``LlamaModel.forward`` of
transformers 5.23.0 (embeddings in, ``rotary_emb`` once per token set, each
stock ``LlamaDecoderLayer`` called with ``position_embeddings``, final ``norm``)
with the pruning stages inserted between layers; no transformers source is
copied or patched.

Sequence layout (per batch element, equal lengths across the batch)::

    [text prefix: visual_start tokens][V visual tokens][text suffix]

Position ids follow each stage's :attr:`PruneStage.renumber_positions`:

* FastV (False): kept tokens keep their original positions (gaps); generated
  token j gets position ``N + j`` in every layer (N = unpruned prompt length),
  as upstream FastV's ``generate`` derives it from the unpruned attention mask.
* PyramidDrop (True): after a drop, positions are ``0..N_s-1`` contiguously;
  generated token j gets ``N_s + j`` in the layers after that stage, where N_s
  is the prompt length kept there. Upstream PyramidDrop
  (``llava/model/modeling_llama_pdrop.py``) starts a decoded token at the
  unpruned cache length and, after each stage layer, subtracts the tokens that
  stage dropped, which is the same number.

The KV cache is a stock :class:`transformers.DynamicCache` whose layers append
in place (:mod:`altp.pruning._kv_cache`, bit-identical to the stock layers);
layers after a stage simply hold shorter entries.

Batches: every sample is pruned by its own scores, prep and seed, and every
pruner keeps the same count for every sample, so the rows stay equal in length.
Cached decoding stops per sequence: a row that emits EOS leaves the batch (its
cache rows too) and its remaining tokens repeat that EOS. On the CPU the steps
that run one row per sample (each decoding step, the last prompt token's
logits, the scoring row) go through :func:`altp.pruning._rowwise.per_sample_linear`,
so every sample's tokens are bit-identical to a batch of one. Rows of different
lengths decoding together, a finished row's slot refilled by the next image
(continuous batching), are :class:`altp.pruning._continuous.DecodePool`'s, built on
this engine's prefill and layers.

Two uncached modes (``use_cache=False``; every step recomputes prompt +
generated tokens through all layers):

* select once (every pruner by default): each step re-applies the kept sets
  chosen at prefill, so it yields the cached path's tokens (an oracle for the
  cache). This is NOT upstream FastV's uncached decoding.
* re-select per step (a pruner whose :attr:`Pruner.reselects_per_step` is True,
  e.g. ``pruner=fastv pruner.reselect=per_step``): each step runs the stages'
  scoring and selection again on the whole sequence, scored by the NEWEST
  token's row, as upstream FastV's ``use_cache=False`` generate does. Generated
  tokens are always kept and keep their original positions. ``use_cache=None``
  (the default) picks this path for such a pruner and the cache otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import DynamicCache

from altp._device import synchronize
from altp.pruning._kv_cache import growing_cache
from altp.pruning._plan import KeptSetLog, PrunePlan, StageState
from altp.pruning._rowwise import per_sample_linear
from altp.pruning._selection import plan_prefill, select_stage
from altp.pruning.base import Pruner, VisionSignals
from altp.pruning.records import PruneRecord

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

__all__ = ["GenerateOutput", "PruningEngine"]

_SUPPORTED_ATTN = ("sdpa", "eager")


@dataclass
class GenerateOutput:
    """Greedy decoding result.

    Attributes:
        tokens: (B, T) generated ids (EOS included when produced; rows that
            finished early are padded with their EOS).
        step_hidden: (B, T, D) final-layer hidden state after the final norm
            (HF's ``hidden_states[-1]``) whose logits produced ``tokens[:, t]``;
            zeros after a row's EOS on the cached path (the row left the batch).
        lengths: (B,) long, tokens of each row up to and including its first
            EOS (T when it produced none): row b is ``tokens[b, :lengths[b]]``.
        record: the prefill's :class:`PruneRecord`.
        prefill_ms: prompt forward incl. pruning, up to the first token's logits.
        decode_ms: the remaining steps.
        steps, row_steps: decoding steps run and the unfinished rows they carried.
    """

    tokens: torch.Tensor
    step_hidden: torch.Tensor
    record: PruneRecord
    prefill_ms: float
    decode_ms: float
    lengths: torch.Tensor | None = None
    steps: int = 0
    row_steps: int = 0


class PruningEngine:
    """Runs a causal LM's decoder layers with a pruner's stages applied.

    Args:
        lm: a transformers ``*ForCausalLM`` with ``.model.layers``,
            ``.model.norm``, ``.model.rotary_emb``, ``.model.embed_tokens`` and
            ``.lm_head`` (LlamaForCausalLM; InternLM2 after conversion to Llama).
        pruner: the pruner, or None for the unpruned model.
    """

    def __init__(self, *, lm: LlamaForCausalLM, pruner: Pruner | None) -> None:
        impl = getattr(lm.config, "_attn_implementation", None) or "eager"
        if impl not in _SUPPORTED_ATTN:
            raise ValueError(
                f"PruningEngine supports attn_implementation in {_SUPPORTED_ATTN}, the model uses {impl!r}; "
                "load it with attn_implementation='sdpa'"
            )
        self.lm = lm
        self.pruner = pruner
        # nn.ModuleList iterates as plain Modules; a LlamaModel's are its decoder layers
        self.layers = cast("list[LlamaDecoderLayer]", list(lm.model.layers)[: lm.config.num_hidden_layers])
        self._eager = impl == "eager"
        self._vision: VisionSignals | None = None  # the current call's vision-tower signals

    # -- public API -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        *,
        inputs_embeds: torch.Tensor,
        visual_start: int,
        num_visual: int,
        grid: tuple[int, int],
        prep: list[Any] | tuple[Any, ...] | None = None,
        max_new_tokens: int,
        eos_token_id: int | list[int] | None,
        use_cache: bool | None = None,
        seed: int | Sequence[int] = 0,
        vision: VisionSignals | None = None,
    ) -> GenerateOutput:
        """Prefill with pruning, then greedy decoding.

        Args:
            inputs_embeds: (B, N, D) prompt embeddings, visual tokens at
                ``[visual_start, visual_start + num_visual)``.
            visual_start: index of the first visual token.
            num_visual: V.
            grid: (rows, cols) of the visual patch grid, rows * cols == V.
            prep: per batch element, what ``pruner.prepare`` returned (or None).
            max_new_tokens: upper bound on T.
            eos_token_id: id(s) that end a sequence, or None.
            use_cache: True decodes from the KV cache; False recomputes the whole
                sequence every step (see the module docstring for what that means
                per pruner); None picks False when the pruner re-selects per step,
                else True.
            seed: per-sample seeds handed to the pruner (``PruneContext.seed``):
                one per batch element, or one int ``s`` meaning ``s + b``.
            vision: the batch's vision-tower signals (``PruneContext.vision``), for a
                pruner that declares ``needs_vision``.

        Raises:
            ValueError: ``use_cache=True`` with a pruner that re-selects per step.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        reselect = self.pruner is not None and self.pruner.reselects_per_step
        if use_cache is None:
            use_cache = not reselect
        elif use_cache and reselect and self.pruner is not None:  # reselect implies a pruner
            raise ValueError(
                f"pruner {self.pruner.name!r} re-selects its tokens at every decoding step, which needs "
                "the uncached path; pass use_cache=False (or None) or select once at prefill"
            )
        eos = torch.tensor(
            []
            if eos_token_id is None
            else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)),
            device=inputs_embeds.device,
        )
        dev = inputs_embeds.device
        self._vision = vision
        synchronize(dev)
        t0 = time.perf_counter()
        plan, cache, h_last, tok = self._prefill(inputs_embeds, visual_start, num_visual, grid, prep, seed,
                                                 use_cache=use_cache)  # fmt: skip
        log = None
        if reselect and plan.first_kept is not None:
            log = KeptSetLog(plan.batch)
            log.add(plan.first_kept)
        synchronize(dev)
        t1 = time.perf_counter()
        embed = self.lm.get_input_embeddings()
        b = inputs_embeds.shape[0]
        toks, states = [tok], [h_last]
        done = torch.isin(tok, eos)
        live = torch.arange(b, device=dev)  # cached path: the rows still in the batch (and the cache)
        seq = inputs_embeds
        steps = row_steps = 0
        # A cached step runs one row per sample through every linear layer of the LM.
        with per_sample_linear(self.lm, tok) if cache is not None and b > 1 else nullcontext():
            for j in range(max_new_tokens - 1):
                n_done = int(done.sum())  # one sync per token: greedy decoding must know when to stop
                if n_done == b:
                    break
                steps, row_steps = steps + 1, row_steps + b - n_done
                if cache is not None:
                    if n_done > b - live.numel():  # rows finished: they leave the batch and the cache
                        stay = ~done[live]
                        cache.batch_select_indices(stay.nonzero()[:, 0])
                        live = live[stay]
                    e = embed(tok[live, None]).to(inputs_embeds.dtype)  # (B_live, 1, D)
                    h = self._decode_step(e, plan, cache, j)[:, -1]  # (B_live, D)
                    nxt_live = self.lm.lm_head(h).argmax(-1)
                    if live.numel() == b:
                        h_last, nxt = h, nxt_live
                    else:
                        h_last = h.new_zeros(b, h.shape[-1]).index_copy_(0, live, h)
                        nxt = tok.clone().index_copy_(0, live, nxt_live)
                else:
                    seq = torch.cat([seq, embed(tok[:, None]).to(inputs_embeds.dtype)], dim=1)
                    if reselect:
                        # A fresh plan over the whole sequence: the newest token is its last row, and
                        # accept() keeps every token after the visual span (suffix + generated ones).
                        step = self._plan(seq, visual_start, num_visual, grid, prep, seed)
                        h_last = self._forward(seq, step, cache=None, select=True)[:, -1]
                        if log is not None and step.first_kept is not None:
                            log.add(step.first_kept, active=~done)
                    else:
                        h_last = self._forward(seq, plan, cache=None, select=False)[:, -1]
                    with per_sample_linear(self.lm.lm_head, h_last):
                        nxt = self.lm.lm_head(h_last).argmax(-1)
                tok = torch.where(done, tok, nxt) if eos.numel() else nxt
                toks.append(tok)
                states.append(h_last)
                done = done | torch.isin(tok, eos)
        synchronize(dev)
        t2 = time.perf_counter()
        record = plan.record(self.pruner)
        if log is not None:
            for d, e in zip(record.extras, log.extras(), strict=True):
                d.update(e)
        tokens = torch.stack(toks, 1)  # (B, T)
        ended = torch.isin(tokens, eos)
        lengths = torch.where(ended.any(1), ended.int().argmax(1) + 1, tokens.shape[1])
        return GenerateOutput(
            tokens=tokens,
            step_hidden=torch.stack(states, 1),
            record=record,
            prefill_ms=(t1 - t0) * 1e3,
            decode_ms=(t2 - t1) * 1e3,
            lengths=lengths,
            steps=steps,
            row_steps=row_steps,
        )

    @torch.inference_mode()
    def prefill(
        self,
        *,
        inputs_embeds: torch.Tensor,
        visual_start: int,
        num_visual: int,
        grid: tuple[int, int],
        prep: list[Any] | tuple[Any, ...] | None = None,
        seed: int | Sequence[int] = 0,
        use_cache: bool = True,
        last_only: bool = False,
        vision: VisionSignals | None = None,
    ) -> tuple[torch.Tensor, PruneRecord]:
        """Prompt forward only (benchmarks, tests); arguments as :meth:`generate`.

        Args:
            last_only: return only the last token's logits (what decoding needs).

        Returns:
            (B, N_last, vocab) logits of the prompt tokens still present in the
            last layer (all N when unpruned; N_last = 1 with ``last_only``), and
            the :class:`PruneRecord`.
        """
        self._vision = vision
        plan = self._plan(inputs_embeds, visual_start, num_visual, grid, prep, seed)
        cache = growing_cache(self.lm.config) if use_cache else None
        hidden = self._forward(inputs_embeds, plan, cache=cache, select=True)
        with per_sample_linear(self.lm.lm_head, hidden) if last_only else nullcontext():
            logits = self.lm.lm_head(hidden[:, -1:] if last_only else hidden)
        return logits, plan.record(self.pruner)

    # -- internals --------------------------------------------------------------------------------------
    def _prefill(
        self,
        inputs_embeds: torch.Tensor,
        visual_start: int,
        num_visual: int,
        grid: tuple[int, int],
        prep: Any,
        seed: int | Sequence[int],
        *,
        use_cache: bool,
    ) -> tuple[PrunePlan, DynamicCache | None, torch.Tensor, torch.Tensor]:
        """The prompt forward with pruning: (plan, KV cache or None, (B, D) last normed state, (B,) first token)."""
        plan = self._plan(inputs_embeds, visual_start, num_visual, grid, prep, seed)
        cache = growing_cache(self.lm.config) if use_cache else None
        hidden = self._forward(inputs_embeds, plan, cache=cache, select=True)  # (B, N, D) normed
        h_last = hidden[:, -1]  # (B, D)
        with per_sample_linear(self.lm.lm_head, h_last):
            tok = self.lm.lm_head(h_last).argmax(-1)  # (B,)
        return plan, cache, h_last, tok

    def _plan(
        self,
        embeds: torch.Tensor,
        visual_start: int,
        num_visual: int,
        grid: tuple[int, int],
        prep: Any,
        seed: int | Sequence[int],
    ) -> PrunePlan:
        return plan_prefill(
            pruner=self.pruner, config=self.lm.config, num_layers=len(self.layers), embeds=embeds,
            visual_start=visual_start, num_visual=num_visual, grid=grid, prep=prep, seed=seed,
        )  # fmt: skip

    def _causal_mask(self, n: int, like: torch.Tensor) -> torch.Tensor | None:
        # SDPA takes mask=None and uses its causal kernel; eager needs the additive mask spelled out.
        if not self._eager or n == 1:
            return None
        m = torch.full((n, n), torch.finfo(like.dtype).min, dtype=like.dtype, device=like.device)
        return m.triu(1)[None, None]  # (1, 1, n, n)

    def _run_layer(
        self,
        i: int,
        h: torch.Tensor,
        pe: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        return self.layers[i](
            h,
            attention_mask=mask,
            position_embeddings=pe,
            past_key_values=cache,
            use_cache=cache is not None,
        )

    def _forward(
        self, h: torch.Tensor, plan: PrunePlan, *, cache: DynamicCache | None, select: bool
    ) -> torch.Tensor:
        """Run all layers over ``h`` (B, L, D) = prompt (+ generated tokens when ``select`` is False).

        With ``select`` the stages score and choose: at prefill, or at a per-step
        re-selection whose fresh plan counts the whole sequence as its prompt.
        Without, they re-apply the kept sets chosen at prefill to the prompt part
        and keep every generated token. Returns (B, L_last, D) after the final norm.
        """
        rotary = self.lm.model.rotary_emb
        n_gen = h.shape[1] - plan.num_prompt
        pos = torch.arange(h.shape[1], device=h.device)[None]  # (1, L)
        pe = rotary(h, pos)
        mask = self._causal_mask(h.shape[1], h)
        score_in: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None
        for i in range(len(self.layers)):
            st = plan.stage_at(i)
            if st is not None:
                if select:
                    self._select(st, plan, h, pe, score_in, cache)
                h, pos = st.apply(h, pos, n_gen)
                pe = rotary(h, pos)
                mask = self._causal_mask(h.shape[1], h)
            nxt = plan.next_score_layer(i)
            if select and nxt == i:
                score_in = (
                    h,
                    pe,
                )  # kept by reference: the input of the layer that scores the next stage
            h = self._run_layer(i, h, pe, mask, cache)
        return self.lm.model.norm(h)

    def _select(
        self,
        st: StageState,
        plan: PrunePlan,
        h: torch.Tensor,
        pe: tuple[torch.Tensor, torch.Tensor],
        score_in: Any,
        cache: DynamicCache | None,
    ) -> None:
        assert self.pruner is not None  # only a pruner's plan has stages to select at
        select_stage(pruner=self.pruner, layers=self.layers, st=st, plan=plan, h=h, pe=pe,
                     score_in=score_in, cache=cache, norm=self.lm.model.norm, vision=self._vision)  # fmt: skip

    def _decode_step(
        self, e: torch.Tensor, plan: PrunePlan, cache: DynamicCache, j: int
    ) -> torch.Tensor:
        """One cached step for generated token j (0-based): (B, 1, D) in, (B, 1, D) normed out."""
        rotary = self.lm.model.rotary_emb
        h = e
        pe = rotary(h, plan.decode_positions(0, j))
        for i in range(len(self.layers)):
            if plan.stage_at(i) is not None:
                pe = rotary(h, plan.decode_positions(i, j))
            h = self._run_layer(i, h, pe, None, cache)
        return self.lm.model.norm(h)
