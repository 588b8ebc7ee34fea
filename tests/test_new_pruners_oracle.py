"""VisionZip, DivPrune, DART and ALTP/DDC at the LLM input against independent eager oracles.

Each oracle re-derives its inputs from stock transformers modules (CLIP run with eager
attention and ``output_attentions=True``, a forward hook on its ``k_proj``; the stock
``LlamaForCausalLM`` forward with ``output_hidden_states=True``; the adapter's prompt
embeddings) and re-implements the upstream rule (dvlab-research/VisionZip
``clip_encoder.py``, vbdi/divprune ``llava_arch.py``, ZichenWen1/DART
``modeling_llama_self.py``), never calling the harness's helpers. Where the harness
deviates from upstream on purpose (documented in ``baselines/*.py``), the oracle encodes
the deviation explicitly, marked ``DEVIATION``:

* VisionZip: patch tokens only (no CLS kept or merged) and the dominant/contextual split
  of ``floor(keep * V)`` with upstream's 10/64 share;
* DivPrune and DART: exactly ``floor(keep * V)`` visual tokens kept (DART: the
  ``floor(keep * V) - 4`` picks shared by the 8 pivots, the first ``n % 8`` in upstream's
  set order taking one more);
* float32 arithmetic throughout (upstream: fp16).

What the pruners chose is read from the prediction records and from the ``Selection``
each ``select`` call returns (a spy on the pruner instance). Every case also checks that
a batch of several images gives each image exactly its batch-of-one result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image
from transformers import CLIPVisionModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from altp.errors import UserError
from altp.models import build_model
from altp.pruners import build_pruner
from altp.pruning.base import Pruner
from altp.train.samples import render_sample

ROOT = Path(__file__).resolve().parents[1]
KEEPS = (0.1, 0.25, 0.5)


# -- models, images, runs ----------------------------------------------------------------------------
def _images(n: int) -> list[Image.Image]:
    return [Image.fromarray(render_sample(seed=0, index=i, split="val").image) for i in range(n)]


@pytest.fixture(scope="module")
def glamm() -> tuple[Any, list[Any]]:
    model = build_model("glamm_tiny", seed=0, max_new_tokens=2)
    return model, [model.preprocess(im) for im in _images(2)]


@pytest.fixture(scope="module")
def omg():
    """The random OMG-LLaVA, scripted to answer ``[SEG]`` so that one GCG question usually suffices
    (the oracles read the question of the record kept, ``extras["question"]``).

    Its ConvNeXt costs ~0.5 s an image here, so the visual encoding of each (one-image)
    pixel tensor is memoised on the instance for this module: it is a pure function of
    the pixels, and the adapter already encodes a batch one image at a time on the CPU.
    """
    model = build_model("omg_llava_tiny", seed=0, max_new_tokens=2, script="[SEG]")
    real = model.visual.encode
    memo: dict[bytes, Any] = {}

    def encode(pixels: torch.Tensor) -> Any:
        key = pixels.cpu().numpy().tobytes()
        if key not in memo:
            memo[key] = real(pixels)
        return memo[key]

    model.visual.encode = encode
    yield model, [model.preprocess(im) for im in _images(2)]
    del model.visual.encode


_RUNS: dict[tuple[str, str, float], _Run] = {}
_PREPS: dict[tuple[str, str], list[Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def _forget_runs():
    """The cached runs hold the module's models: drop them with the module."""
    yield
    _RUNS.clear()
    _PREPS.clear()


def _cached_run(request: pytest.FixtureRequest, name: str, pruner: str, keep: float, **kw: Any) -> _Run:
    """One :class:`_Run` per (model fixture, pruner, keep) for the module (the oracle tests share them)."""
    model, inputs = request.getfixturevalue(name)
    key = (name, f"{pruner}{sorted(kw.items())}", keep)
    if key not in _RUNS:
        p = build_pruner(pruner, keep=keep, **kw)
        preps = None
        if type(p).prepare is not Pruner.prepare:  # region maps: per image, independent of keep
            pk = (name, pruner)
            if pk not in _PREPS:
                _PREPS[pk] = [p.prepare(x.vision_image, model.grid) for x in inputs]
            preps = _PREPS[pk]
        _RUNS[key] = _Run(model, inputs, p, preps)
    return _RUNS[key]


def _spy(pruner: Any) -> list[tuple[Any, Any]]:
    """Record every (PruneContext, Selection) of ``pruner.select`` from now on."""
    calls: list[tuple[Any, Any]] = []
    real = pruner.select

    def select(ctx: Any) -> Any:
        sel = real(ctx)
        calls.append((ctx, sel))
        return sel

    pruner.select = select
    return calls


class _Run:
    """One pruner on a batch of all images, and on each image alone (with its first-token logits)."""

    def __init__(self, model: Any, inputs: list[Any], pruner: Any, preps: list[Any] | None = None) -> None:
        b = len(inputs)
        self.preps = preps = preps if preps is not None else [None] * b
        self.calls = _spy(pruner)
        self.together = model.predict_batch(inputs, pruner=pruner, preps=preps, seeds=list(range(b)),
                                            max_new_tokens=2)  # fmt: skip
        self.batch_calls = list(self.calls)
        self.alone, self.alone_calls, self.first_logits = [], [], []
        for i, (x, p) in enumerate(zip(inputs, preps, strict=True)):
            self.calls.clear()
            logits: list[torch.Tensor] = []
            hook = model.llm.lm_head.register_forward_hook(lambda _m, _a, out, logits=logits: logits.append(out))
            try:
                self.alone.append(model.predict_batch([x], pruner=pruner, preps=[p], seeds=[i], max_new_tokens=2)[0])
            finally:
                hook.remove()
            self.alone_calls.append(list(self.calls))
            self.first_logits.append(logits[0][0])  # the prefill's last-token logits (the first lm_head call)

    def assert_batch_is_alone(self) -> None:
        for t, a in zip(self.together, self.alone, strict=True):
            assert t.caption == a.caption and t.phrases == a.phrases
            assert t.record.kept_tokens == a.record.kept_tokens
            assert t.record.kept_tokens_per_stage == a.record.kept_tokens_per_stage
            assert t.record.merged_tokens_per_stage == a.record.merged_tokens_per_stage
            assert t.record.extras == a.record.extras


def _kept(pred: Any) -> list[int]:
    (kept,) = pred.record.kept_tokens
    return kept


def _floor_keep(keep: float, v: int) -> int:
    return math.floor(keep * v)  # the harness's exact budget (no binary round-off at these keeps)


# -- GLaMM's CLIP, eager ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glamm_eager(glamm) -> list[dict[str, torch.Tensor]]:
    """Per image: upstream VisionZip's inputs from an eager copy of GLaMM's CLIP tower.

    ``hidden_states[select_layer]`` (the features), ``attentions[select_layer]`` (the
    softmax probabilities of the layer producing them) and ``layers[select_layer]``'s keys
    via a hook on ``k_proj`` (input ``layer_norm1(x)``), averaged over heads, as llmc does.
    """
    model, inputs = glamm
    stock = model.vision_tower
    tower = CLIPVisionModel._from_config(stock.config, attn_implementation="eager").eval()
    tower.load_state_dict(stock.state_dict())
    sl = model.config.select_layer  # -2
    layer = getattr(tower, "vision_model", tower).encoder.layers[sl]
    heads = stock.config.num_attention_heads
    out = []
    for x in inputs:
        seen: list[torch.Tensor] = []
        hook = layer.self_attn.k_proj.register_forward_hook(lambda _m, _a, o, seen=seen: seen.append(o))
        try:
            with torch.inference_mode():
                res = tower(pixel_values=model.clip_input([x]), output_hidden_states=True, output_attentions=True)
        finally:
            hook.remove()
        (k,) = seen
        attn, hs = res.attentions[sl], res.hidden_states[sl]  # (1, H, 1+V, 1+V), (1, 1+V, C)
        metric = k.view(1, k.shape[1], heads, -1).transpose(1, 2).mean(1)  # (1, 1+V, hd)
        out.append({
            "cls": attn[0, :, 0, 1:].sum(0),  # CLS query row, CLS column dropped, SUM over heads: (V,)
            "feats": hs[0, 1:],  # patch tokens of the feature layer, before the projector: (V, C)
            "metric": metric[0, 1:],  # (V, hd)
        })  # fmt: skip
    return out


def test_eager_clip_oracle_reproduces_glamms_visual_tokens(glamm, glamm_eager) -> None:
    """Sanity of the oracle's own inputs: its features through the projector are GLaMM's visual tokens."""
    model, inputs = glamm
    with torch.inference_mode():
        for x, e in zip(inputs, glamm_eager, strict=True):
            ref = model.encode_image(model.clip_input([x]))[0]
            torch.testing.assert_close(model.mm_projector(e["feats"]), ref, rtol=1e-5, atol=1e-6)
            # softmax rows sum to 1 per head: the CLS row without its CLS column sums below the head count
            assert 0 < float(e["cls"].sum()) < model.vision_tower.config.num_attention_heads


# -- VisionZip -----------------------------------------------------------------------------------------
# DEVIATION (baselines/visionzip.py, "Counts"): upstream takes (dominant, contextual) as two numbers
# (54 + 10); the harness splits floor(keep * V) with upstream's 10/64 contextual share: these are
# the splits its docstring states for V = 576.
VISIONZIP_SPLIT = {0.1: (48, 9), 0.25: (121, 23), 0.5: (243, 45)}


def visionzip_oracle(cls: torch.Tensor, feats: torch.Tensor, metric: torch.Tensor, keep: float):
    """Upstream clip_encoder.py:49-85 on one image (patch-only). Returns dominant ids, contextual
    features (C, c) and per contextual token its absorbed original ids (target first)."""
    n_dom, n_ctx = VISIONZIP_SPLIT[keep]
    v = cls.shape[0]
    # DEVIATION (patch-only CLS handling): upstream always keeps CLS and takes dominant - 1 patches;
    # GLaMM's LLM sees patch tokens only, so CLS is neither kept nor merged and n_dom patches are dominant.
    topk = cls.topk(n_dom).indices
    mask = torch.ones(v, dtype=torch.bool)
    mask[topk] = False  # True = not dominant
    dominant = (~mask).nonzero()[:, 0]  # original order (upstream's masked_select)
    rest_ids = mask.nonzero()[:, 0]
    metric_f, hs_f = metric[mask], feats[mask]  # (R, hd), (R, c), original order
    r = hs_f.shape[0]
    metric_n = metric_f / metric_f.norm(dim=-1, keepdim=True)  # no eps
    step = max(1, r // n_ctx)
    tgt = torch.arange(0, r, step)[:n_ctx]
    others = ~torch.isin(torch.arange(r), tgt)
    sim = metric_n[others] @ metric_n[tgt].T  # (R - C, C)
    arg = sim.argmax(dim=1)
    assign = F.one_hot(arg, n_ctx).to(hs_f.dtype)
    counts = assign.sum(dim=0).clamp(min=1)[:, None]
    agg = (assign.T @ hs_f[others]) / counts
    contextual = hs_f[tgt] + agg  # target + MEAN of the others assigned to it
    other_ids = rest_ids[others]
    groups = [[int(rest_ids[t])] + other_ids[arg == j].tolist() for j, t in enumerate(tgt.tolist())]
    return dominant.tolist(), contextual, groups


@pytest.mark.parametrize("keep", KEEPS)
def test_visionzip_matches_upstream_rule_on_eager_clip(glamm, glamm_eager, keep: float, request) -> None:
    model, _ = glamm
    run = _cached_run(request, "glamm", "visionzip", keep)
    run.assert_batch_is_alone()
    n_dom, n_ctx = VISIONZIP_SPLIT[keep]
    assert n_dom + n_ctx == _floor_keep(keep, model.num_visual)
    ((_, batch_sel),) = run.batch_calls
    for b, (pred, e) in enumerate(zip(run.alone, glamm_eager, strict=True)):
        dominant, contextual, groups = visionzip_oracle(e["cls"], e["feats"], e["metric"], keep)
        assert _kept(pred) == dominant
        assert pred.record.kept_per_stage == [n_dom + n_ctx] and pred.record.stage_layers == [0]
        assert pred.record.merged_tokens_per_stage == [[groups]]
        # Every patch is kept or absorbed exactly once.
        assert sorted(dominant + [j for g in groups for j in g]) == list(range(model.num_visual))
        # The merged embeddings: the oracle's contextual features through GLaMM's projector.
        ((_, sel),) = run.alone_calls[b]
        with torch.inference_mode():
            want = model.mm_projector(contextual[None])[0]
        assert sel.merged is not None and sel.merged.shape == (1, n_ctx, want.shape[-1])
        scale = float(want.abs().max())
        torch.testing.assert_close(sel.merged[0], want, rtol=0, atol=1e-5 * scale)
        assert torch.equal(batch_sel.merged[b], sel.merged[0])  # batch > 1: this image's bits exactly


@pytest.mark.parametrize("keep", KEEPS)
def test_visionzip_at_layer_0_equals_the_stock_llm_on_dominant_then_contextual(glamm, glamm_eager, keep, request):
    """No decoder layer sees a dropped patch: the first token's logits are the stock LLM's on
    [prefix, dominant patches, contextual tokens, suffix] with contiguous positions."""
    model, _ = glamm
    run = _cached_run(request, "glamm", "visionzip", keep)
    for got, e in zip(run.first_logits, glamm_eager, strict=True):
        dominant, contextual, _ = visionzip_oracle(e["cls"], e["feats"], e["metric"], keep)
        with torch.inference_mode():
            visual = model.mm_projector(torch.cat([e["feats"][dominant], contextual])[None])
            logits = model.llm(inputs_embeds=model.build_inputs_embeds(visual)).logits[0, -1]
        assert int(got.argmax()) == int(logits.argmax())
        torch.testing.assert_close(got, logits, rtol=0, atol=1e-4 * float(logits.abs().max()))


def test_visionzip_on_omg_llava_fails_before_the_model_loads(tmp_path: Path, monkeypatch) -> None:
    import altp.run.runner as runner

    def no_load(*_a, **_k):
        raise AssertionError("the model (or the split) was loaded before the vision check")

    monkeypatch.setattr(runner, "model_on_rank", no_load)
    monkeypatch.setattr(runner, "split_on_ranks", no_load)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=omg_llava_tiny", "data=synthetic", f"data.root={tmp_path / 'data'}", "data.generate.n_images=1",
            f"out_dir={tmp_path / 'run'}", "pruner=visionzip", "keep=0.25", "evaluate=false",
        ])  # fmt: skip
    with pytest.raises(UserError) as err:
        runner.run(cfg, choices={"model": "omg_llava_tiny", "data": "synthetic", "pruner": "visionzip"})
    msg = str(err.value)
    assert "\n" not in msg
    assert "visionzip" in msg and "omg_llava_tiny" in msg
    # It names the signals the ConvNeXt tower lacks.
    for signal in ("cls_attention", "features", "keys"):
        assert signal in msg


# -- DivPrune ------------------------------------------------------------------------------------------
def divprune_oracle(x: torch.Tensor, keep: float) -> list[int]:
    """Upstream llava_arch.py:147-171 on one image's (V, D) LLM-input visual tokens; sorted kept ids."""
    n = x.shape[0]
    # DEVIATION (count): upstream keeps int(round(ratio * N)); the harness keeps floor(keep * V).
    k = _floor_keep(keep, n)
    x = x.float()  # DEVIATION (precision): float32, upstream fp16
    xn = x / x.norm(dim=1, keepdim=True)  # no eps
    d = 1 - xn @ xn.T  # cosine distance
    s: list[int] = []
    for i in range(k):
        if i == 0:
            score = torch.topk(d, 2, dim=0, largest=False).values[1, :]
        else:
            score = d[s, :].min(dim=0).values
        s.append(int(torch.argmax(score)))
    # Upstream does not mask chosen tokens (their own ~0 distance keeps them out); not degenerate here.
    assert len(set(s)) == k
    return sorted(s)


def _glamm_prompt(model: Any, x: Any) -> torch.Tensor:
    with torch.inference_mode():
        return model.build_inputs_embeds(model.encode_image(model.clip_input([x])))  # (1, L, D)


def _omg_prompt(model: Any, x: Any, question: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.build_inputs_embeds(model.visual.encode(model.pixel_input([x])), question)  # (1, L, D)


def _visual_span(model: Any, embeds: torch.Tensor) -> torch.Tensor:
    s = len(model.prefix_ids)
    return embeds[0, s : s + model.num_visual]


def _prompt(name: str, model: Any, x: Any, question: int) -> torch.Tensor:
    """The adapter's prompt embeddings of one preprocessed image (OMG-LLaVA: for the question asked)."""
    return _glamm_prompt(model, x) if name == "glamm" else _omg_prompt(model, x, question)


def _question(pred: Any) -> int:
    return int(pred.record.extras[0].get("question", 0))  # OMG-LLaVA: the question whose record is kept


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("name", ["glamm", "omg"])
def test_divprune_matches_upstream_greedy_max_min(name: str, keep: float, request) -> None:
    model, inputs = request.getfixturevalue(name)
    run = _cached_run(request, name, "divprune", keep)
    run.assert_batch_is_alone()
    for b, (pred, x) in enumerate(zip(run.alone, inputs, strict=True)):
        embeds = _prompt(name, model, x, _question(pred))
        want = divprune_oracle(_visual_span(model, embeds), keep)
        assert _kept(pred) == want
        assert pred.record.kept_per_stage == [len(want)] and pred.record.stage_layers == [0]
        # The pruner saw exactly these LLM-input embeddings (every question's context, same pixels).
        for ctx, _ in run.alone_calls[b]:
            torch.testing.assert_close(ctx.visual_hidden[0], _visual_span(model, embeds), rtol=0, atol=0)


@pytest.mark.parametrize("keep", KEEPS)
def test_divprune_at_layer_0_equals_the_stock_llm_on_the_kept_tokens(glamm, keep: float, request) -> None:
    """No decoder layer sees a dropped token: the first token's logits are the stock LLM's on the
    prompt with only the oracle's kept visual tokens, positions contiguous."""
    model, inputs = glamm
    run = _cached_run(request, "glamm", "divprune", keep)
    s, v = len(model.prefix_ids), model.num_visual
    for got, x in zip(run.first_logits, inputs, strict=True):
        embeds = _glamm_prompt(model, x)
        kept = divprune_oracle(_visual_span(model, embeds), keep)
        keep_idx = list(range(s)) + [s + j for j in kept] + list(range(s + v, embeds.shape[1]))
        with torch.inference_mode():
            logits = model.llm(inputs_embeds=embeds[:, keep_idx]).logits[0, -1]  # positions 0..L'-1
        assert int(got.argmax()) == int(logits.argmax())
        torch.testing.assert_close(got, logits, rtol=0, atol=1e-4 * float(logits.abs().max()))


# -- DART ----------------------------------------------------------------------------------------------
def dart_oracle(lm: Any, embeds: torch.Tensor, start: int, num_visual: int, keep: float, k_layer: int = 2) -> list[int]:
    """Upstream get_retained_image_token (modeling_llama_self.py:397-449) on the stock LLM's states."""
    cfg = lm.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    seq = embeds.shape[1]
    with torch.inference_mode():
        hs = lm(inputs_embeds=embeds, output_hidden_states=True).hidden_states  # hs[i]: input of layer i
        layer = lm.model.layers[k_layer - 1]
        x = layer.input_layernorm(hs[k_layer - 1])
        k = layer.self_attn.k_proj(x).view(1, seq, n_kv, -1).transpose(1, 2)  # (1, H_kv, L, hd)
        cos, sin = lm.model.rotary_emb(x, torch.arange(seq)[None])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)  # post-RoPE keys, original positions
        k = k.repeat_interleave(n_heads // n_kv, dim=1)  # upstream's repeat_kv
        keys = k.permute(0, 2, 1, 3).reshape(1, seq, -1)[0]  # (L, H * hd)
        h = lm.model.norm(hs[k_layer])[0]  # layer K-1's output through the FINAL norm
    s, n = start, num_visual
    img_piv = (keys[s : s + n].norm(p=1, dim=-1).topk(4).indices + s).tolist()
    txt_piv = (keys[s + n :].norm(p=1, dim=-1).topk(4).indices + s + n).tolist()
    chosen = set(img_piv + txt_piv)
    valid = set(range(s, s + n)) - set(img_piv)
    vlist = list(valid)
    # DEVIATION (count): upstream takes ceil(M // 8) per pivot (4 + 8 * 16 = 132 for M = 128); the
    # harness keeps exactly floor(keep * V): the floor(keep * V) - 4 picks shared by the 8 pivots,
    # one more for each of the first (n % 8) pivots in the set's iteration order.
    share, extra = divmod(_floor_keep(keep, n) - len(img_piv), len(chosen))
    for i, p in enumerate(list(chosen)):  # CPython set order, a snapshot, as upstream
        topk = share + (1 if i < extra else 0)
        sim = -F.cosine_similarity(h[p], h[vlist], dim=-1)  # DEVIATION (precision): float32
        pick = [vlist[j] for j in sim.topk(topk).indices.tolist()]
        chosen.update(pick)
        valid -= set(pick)
        vlist = list(valid)
    chosen -= set(txt_piv)
    return sorted(j - s for j in chosen)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("name", ["glamm", "omg"])
def test_dart_matches_upstream_pivots_and_picks(name: str, keep: float, request) -> None:
    model, inputs = request.getfixturevalue(name)
    run = _cached_run(request, name, "dart", keep)
    run.assert_batch_is_alone()
    for pred, x in zip(run.alone, inputs, strict=True):
        embeds = _prompt(name, model, x, _question(pred))
        want = dart_oracle(model.llm, embeds, len(model.prefix_ids), model.num_visual, keep)
        assert len(want) == _floor_keep(keep, model.num_visual)
        assert _kept(pred) == want
        assert pred.record.kept_per_stage == [len(want)] and pred.record.stage_layers == [2]


def test_dart_cosine_uses_the_final_norm_weight(glamm, request) -> None:
    """The tiny models' final-norm weights are all 1, where the final norm only rescales each token
    and the cosine cannot tell; with a drawn weight the kept set follows the oracle and changes."""
    model, inputs = glamm
    assert bool((model.llm.model.norm.weight == 1).all())
    drawn = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = drawn.llm.model.norm.weight
        w.copy_(0.2 + 1.8 * torch.rand(w.shape, generator=g))
    run = _Run(drawn, inputs, build_pruner("dart", keep=0.25))
    run.assert_batch_is_alone()
    for pred, x in zip(run.alone, inputs, strict=True):
        want = dart_oracle(drawn.llm, _glamm_prompt(drawn, x), len(drawn.prefix_ids), drawn.num_visual, 0.25)
        assert _kept(pred) == want
    plain = _cached_run(request, "glamm", "dart", 0.25)
    assert [_kept(p) for p in run.alone] != [_kept(p) for p in plain.alone]


# -- ALTP / DDC at the LLM input -----------------------------------------------------------------------
def _region_oracle(pred: Any, prep: Any, importance: torch.Tensor, n_keep: int) -> list[int]:
    """Per region of the record (its SLIC labels and budgets), the top-budget tokens by ``importance``."""
    extras = pred.record.extras[0]
    assert sum(extras["budgets"]) == n_keep
    kept: list[int] = []
    for label, budget in zip(extras["region_ids"], extras["budgets"], strict=True):
        (r,) = np.flatnonzero(prep.region_labels == label)
        tokens = torch.from_numpy(np.flatnonzero(prep.patch_region == r))
        kept += tokens[importance[tokens].topk(int(budget)).indices].tolist()
    return sorted(kept)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("method", ["altp", "ddc"])
def test_region_pruner_at_layer_0_ranks_by_eager_cls_attention(glamm, glamm_eager, method: str, keep, request):
    model, _ = glamm
    run = _cached_run(request, "glamm", method, keep, layer=0, importance="cls")
    run.assert_batch_is_alone()
    for pred, prep, e in zip(run.alone, run.preps, glamm_eager, strict=True):
        assert _kept(pred) == _region_oracle(pred, prep, e["cls"], _floor_keep(keep, model.num_visual))
        assert pred.record.stage_layers == [0]


@pytest.mark.parametrize("keep", KEEPS)
def test_altp_at_layer_0_ranks_omg_tokens_by_embedding_norm(omg, keep: float, request) -> None:
    model, inputs = omg
    run = _cached_run(request, "omg", "altp", keep, layer=0, importance="norm")
    run.assert_batch_is_alone()
    for pred, prep, x in zip(run.alone, run.preps, inputs, strict=True):
        norm = _visual_span(model, _omg_prompt(model, x, _question(pred))).float().norm(dim=-1)
        assert _kept(pred) == _region_oracle(pred, prep, norm, _floor_keep(keep, model.num_visual))


@pytest.mark.parametrize("method", ["altp", "ddc"])
def test_region_pruner_at_layer_0_refuses_decoder_attention(method: str) -> None:
    with pytest.raises(ValueError, match="layer 0") as err:
        build_pruner(method, keep=0.25, layer=0, importance="attention")
    assert "\n" not in str(err.value)


def test_cls_importance_on_omg_llava_names_the_missing_signal(tmp_path: Path, monkeypatch) -> None:
    import altp.run.runner as runner

    no_load: Callable[..., Any] = lambda *_a, **_k: pytest.fail("loaded before the vision check")  # noqa: E731
    monkeypatch.setattr(runner, "model_on_rank", no_load)
    monkeypatch.setattr(runner, "split_on_ranks", no_load)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=omg_llava_tiny", "data=synthetic", f"data.root={tmp_path / 'data'}", "data.generate.n_images=1",
            f"out_dir={tmp_path / 'run'}", "pruner=altp", "pruner.layer=0", "pruner.importance=cls", "keep=0.25",
            "evaluate=false",
        ])  # fmt: skip
    with pytest.raises(UserError) as err:
        runner.run(cfg, choices={"model": "omg_llava_tiny", "data": "synthetic", "pruner": "altp"})
    msg = str(err.value)
    assert "\n" not in msg and "cls_attention" in msg and "norm" in msg  # names it, suggests importance=norm
    assert "features" not in msg and "keys" not in msg  # only the one it lacks
