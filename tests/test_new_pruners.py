"""The 2025 pruners' arguments, counts and recorded selection work (their upstream rules:
tests/test_new_pruners_oracle.py), and the one-line errors of combinations that cannot work."""

from __future__ import annotations

import re

import pytest

from altp.pruners import build_pruner
from altp.pruning.base import ScheduleInfo
from baselines.visionzip import split_budget

INFO = ScheduleInfo(num_visual=576, num_text=70, num_layers=32, hidden_size=4096, intermediate_size=11008,
                    grid=(24, 24))  # fmt: skip


@pytest.mark.parametrize(("n", "dominant", "contextual"), [(57, 48, 9), (144, 121, 23), (288, 243, 45),
                                                           (64, 54, 10), (1, 1, 0), (2, 1, 1)])  # fmt: skip
def test_visionzip_budget_split_follows_upstreams_ratio(n: int, dominant: int, contextual: int) -> None:
    # upstream's README default: 54 dominant + 10 contextual = 64
    assert split_budget(n, 10 / 64) == (dominant, contextual)


@pytest.mark.parametrize(("name", "layer", "renumber", "score_layer"), [
    ("visionzip", 0, True, None), ("divprune", 0, True, None), ("dart", 2, False, 1)])  # fmt: skip
def test_where_each_new_pruner_acts(name: str, layer: int, renumber: bool, score_layer: int | None) -> None:
    pruner = build_pruner(name, keep=0.1)
    assert pruner is not None
    (stage,) = pruner.schedule(INFO)
    assert (stage.layer, stage.n_keep, stage.renumber_positions, stage.score_layer) == (layer, 57, renumber,
                                                                                        score_layer)  # fmt: skip


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("visionzip", {"layer": 2}, "visionzip prunes at the LLM input"),
    ("dart", {"layer": 0}, "pruning layer must be >= 1"),
    ("fastv", {"layer": 0}, "layer 0 has no attention to score with"),
    ("altp", {"layer": 0}, "pass importance=cls"),
    ("ddc", {"layer": 0, "importance": "attention"}, "pass importance=cls"),
    ("altp", {"importance": "saliency"}, "unknown importance"),
    ("dart", {"pivot_image": 0}, "pivot_image >= 1"),
    ("visionzip", {"contextual_share": 1.0}, "contextual_share must be in [0, 1)"),
])  # fmt: skip
def test_combinations_that_cannot_work_are_one_line_errors(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        build_pruner(name, keep=0.1, **kwargs)
    assert "\n" not in str(err.value)


def test_added_flops_of_the_recorded_selection_work() -> None:
    """DivPrune's distance matrix and VisionZip's merge, as recorded per image, computed by hand."""
    from PIL import Image

    from altp.models import build_model
    from altp.train.samples import render_sample

    model = build_model("glamm_tiny")
    x = [model.preprocess(Image.fromarray(render_sample(seed=0, index=0, split="val").image))]
    v, d = model.num_visual, model.llm_shape.hidden_size
    out = model.predict_batch(x, pruner=build_pruner("divprune", keep=0.25), preps=[None], seeds=[0],
                              max_new_tokens=1)  # fmt: skip
    assert out[0].record.extras[0]["added_flops"] == 2 * v * v * d
    out = model.predict_batch(x, pruner=build_pruner("visionzip", keep=0.25), preps=[None], seeds=[0],
                              max_new_tokens=1)  # fmt: skip
    n = v // 4  # floor(0.25 * V)
    dom, ctx = split_budget(n, 10 / 64)
    c = model.vision_tower.config.hidden_size
    h = c // model.vision_tower.config.num_attention_heads  # the keys averaged over heads
    r = v - dom
    assert out[0].record.extras[0]["added_flops"] == 2 * (r - ctx) * ctx * (h + c) + 2 * ctx * (c * d + d * d)
    assert len(out[0].record.merged_tokens_per_stage[0][0]) == ctx


def test_divprune_renumber_switch_keeps_original_positions_at_the_input() -> None:
    """renumber=False (an ablation) keeps each kept token's position: the stock LLM with those position ids agrees."""
    from altp.pruning.engine import PruningEngine
    from tests.test_engine import GRID, PREFIX, V, prompt, tiny_lm

    pruner = build_pruner("divprune", keep=0.25, renumber=False)
    assert pruner is not None and pruner.hparams()["renumber"] is False
    (stage,) = pruner.schedule(INFO)
    assert (stage.layer, stage.renumber_positions) == (0, False)
    lm, x = tiny_lm(), prompt()
    logits, rec = PruningEngine(lm=lm, pruner=pruner).prefill(inputs_embeds=x, visual_start=PREFIX, num_visual=V,
                                                                grid=GRID, last_only=True)  # fmt: skip
    import torch

    keep = torch.tensor(list(range(PREFIX)) + [PREFIX + i for i in rec.kept_tokens[0]]
                        + list(range(PREFIX + V, x.shape[1])))  # fmt: skip
    with torch.inference_mode():
        ref = lm(inputs_embeds=x[:, keep], position_ids=keep[None]).logits[:, -1:]
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
