"""Continuous batching: a finished answer's slot takes the next image, and every image still gets batch 1's bits.

The oracle is the same model on one image at a time (``predict_batch`` of one).
Compared exactly: caption, phrases, masks, the record fields the runner writes, the
token counts. More images than slots, so slots are refilled while other rows decode;
the cases are checked to occur: answers of different lengths finishing out of order
(glamm_shapes), OMG-LLaVA images that take several questions (re-asked as new work).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from altp.models import build_model
from altp.models.base import GCGModel, ImageInputs
from altp.models.generate import DECODE_COUNTS
from altp.pruners import available_pruners, build_pruner
from altp.pruning._continuous import DecodePool
from altp.pruning.engine import PruningEngine
from altp.train.samples import render_sample
from tests.test_engine import GRID, PREFIX, V, prompt, tiny_lm
from tests.test_predict_batch import _fields, _noise_images

N_IMAGES = 9  # more than either slot count: slots are refilled
_SIZES = [(90, 120), (130, 100), (100, 100), (200, 300), (240, 180), (160, 160), (120, 90), (100, 130), (150, 110)]
_MODELS = {
    "glamm_tiny": (lambda: build_model("glamm_tiny", seed=0, num_layers=6, max_new_tokens=12,
                                       script="<p>A red circle</p>[SEG] on the left."),
                   lambda: _noise_images(_SIZES)),
    "glamm_shapes": (lambda: build_model("glamm_shapes", max_new_tokens=60),
                     lambda: [Image.fromarray(render_sample(seed=0, index=i, split="val").image)
                              for i in range(N_IMAGES)]),
    "omg_llava_tiny": (lambda: build_model("omg_llava_tiny", seed=0, max_new_tokens=8),
                       lambda: _noise_images(_SIZES)),
}
FAST = {"glamm_tiny": {"altp", "fastv", "pdrop", "visionzip", "dart", "none"},
        "glamm_shapes": {"none", "fastv", "altp"}, "omg_llava_tiny": {"random"}}
_CASES: dict[str, tuple[GCGModel, list[ImageInputs]]] = {}


def _case(name: str) -> tuple[GCGModel, list[ImageInputs]]:
    if name not in _CASES:
        build, images = _MODELS[name]
        model = build()
        _CASES[name] = (model, [model.preprocess(im) for im in images()])
    return _CASES[name]


def _params():
    for model in _MODELS:
        for name in available_pruners():
            if name == "visionzip" and model == "omg_llava_tiny":
                continue  # needs a ViT's CLS attention
            yield pytest.param(model, name, marks=[] if name in FAST[model] else [pytest.mark.slow],
                               id=f"{model}-{name}")


@pytest.mark.parametrize(("model_name", "pruner_name"), list(_params()))
def test_continuous_equals_batch_of_one(model_name: str, pruner_name: str) -> None:
    model, inputs = _case(model_name)
    pruner = build_pruner(pruner_name, keep=0.1)
    preps = [pruner.prepare(x.vision_image, model.grid) if pruner is not None else None for x in inputs]
    seeds = [101 + 7 * i for i in range(len(inputs))]
    alone = [model.predict_batch([x], pruner=pruner, preps=[p], seeds=[s])[0]
             for x, p, s in zip(inputs, preps, seeds, strict=True)]
    for slots in (4, 8):
        DECODE_COUNTS.reset()
        got = list(model.predict_stream(((i, x, p, s) for i, (x, p, s) in enumerate(zip(inputs, preps, seeds,
                                                                                            strict=True))),
                                        pruner=pruner, slots=slots))  # fmt: skip
        order = [k for k, _ in got]
        assert sorted(order) == list(range(len(inputs)))
        assert {k: _fields(p) for k, p in got} == {i: _fields(p) for i, p in enumerate(alone)}, slots
        assert all(p.timings["batch_size"] == slots for _, p in got)
        # every decoding step of a live row made one token after the prefill's first (of every question asked)
        asked = sum(p.record.extras[0].get("questions_tried", 1) for _, p in got)
        assert DECODE_COUNTS.row_steps <= slots * DECODE_COUNTS.steps
        if asked == len(got):  # (a re-asked question's earlier answers are not in the predictions)
            assert DECODE_COUNTS.row_steps == sum(p.new_tokens - 1 for _, p in got)
        if model_name == "glamm_shapes" and pruner_name == "none":
            assert order != sorted(order)  # short answers overtake long ones
    if model_name == "glamm_shapes":
        assert len({p.new_tokens for p in alone}) > 1
    if model_name == "omg_llava_tiny" and pruner_name in ("none", "random"):
        assert max(p.record.extras[0]["questions_tried"] for p in alone) > 1  # re-asked as new work


@pytest.mark.parametrize("kw", [{"reselect": "per_step"}, {}])
def test_uncached_decoding_streams_in_static_batches(kw: dict) -> None:
    model, inputs = _case("glamm_tiny")
    pruner = build_pruner("fastv", keep=0.1, **kw)
    use_cache = None if kw else False
    alone = [model.predict_batch([x], pruner=pruner, preps=[None], seeds=[0], use_cache=use_cache)[0]
             for x in inputs[:5]]  # fmt: skip
    got = list(model.predict_stream(((i, x, None, 0) for i, x in enumerate(inputs[:5])), pruner=pruner, slots=2,
                                    use_cache=use_cache))  # fmt: skip
    assert [k for k, _ in got] == list(range(5))  # static batches keep the order
    assert [_fields(p) for _, p in got] == [_fields(p) for p in alone]


# -- the engine's pool ---------------------------------------------------------------------------------
def _pool_run(eng: PruningEngine, x: torch.Tensor, eos: int, padded: bool | None) -> dict[int, Any]:
    """Rows 0-1 admitted together, then refills one at a time with at most three live rows."""
    kw = dict(visual_start=PREFIX, num_visual=V, grid=GRID, prep=None)
    out: dict[int, Any] = {}
    with DecodePool(eng, max_new_tokens=12, eos_token_id=eos, padded=padded) as pool:
        done = pool.admit([0, 1], inputs_embeds=x[:2], seed=[0, 1], **kw)
        todo = list(range(2, x.shape[0]))
        while pool.live or todo:
            while pool.live < 3 and todo:
                b = todo.pop(0)
                done += pool.admit([b], inputs_embeds=x[b : b + 1], seed=[b], **kw)
            done += pool.step()
        out.update({f.key: f for f in done})
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pruner_name", ["fastv", "pdrop", "dart", "none"])
def test_pool_rows_keep_their_batch_of_one_bits(attn: str, pruner_name: str) -> None:
    lm, x = tiny_lm(), prompt(6)
    lm.config._attn_implementation = attn
    eng = PruningEngine(lm=lm, pruner=build_pruner(pruner_name, keep=0.25))
    kw = dict(visual_start=PREFIX, num_visual=V, grid=GRID, max_new_tokens=12)
    eos = int(eng.generate(inputs_embeds=x, eos_token_id=None, **kw).tokens[0, 3])
    out = _pool_run(eng, x, eos, padded=None)
    lengths = set()
    for b in range(6):
        one = eng.generate(inputs_embeds=x[b : b + 1], eos_token_id=eos, seed=[b], **kw)
        assert torch.equal(out[b].tokens, one.tokens[0]) and torch.equal(out[b].step_hidden, one.step_hidden[0])
        lengths.add(len(out[b].tokens))
    assert len(lengths) > 1  # rows end at different steps, so slots were refilled mid-decoding
    assert lm.config._attn_implementation == attn  # restored after decoding


def test_pool_padded_attention_is_the_same_attention() -> None:
    # What a GPU runs (one batched SDPA over caches padded to the longest, masked per row), here in fp32.
    lm, x = tiny_lm(), prompt(6)
    eng = PruningEngine(lm=lm, pruner=build_pruner("pdrop", keep=0.25))
    eos = int(eng.generate(inputs_embeds=x, eos_token_id=None, visual_start=PREFIX, num_visual=V, grid=GRID,
                           max_new_tokens=12).tokens[0, 3])  # fmt: skip
    rows, padded = _pool_run(eng, x, eos, padded=False), _pool_run(eng, x, eos, padded=True)
    for b in range(6):
        assert torch.equal(rows[b].tokens, padded[b].tokens)
        torch.testing.assert_close(padded[b].step_hidden, rows[b].step_hidden, rtol=1e-5, atol=1e-5)


# -- the runner ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Flaky:
    """A model whose stream and batched API fail on one image (by its pixels)."""

    model: GCGModel
    bad: np.ndarray

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def _check(self, x: ImageInputs) -> None:
        if np.array_equal(x.vision_image, self.bad):
            raise RuntimeError("poisoned image")

    def predict_batch(self, inputs, **kw):
        for x in inputs:
            self._check(x)
        return self.model.predict_batch(inputs, **kw)

    def predict_stream(self, work, **kw):
        def checked():
            for item in work:
                self._check(item[1])
                yield item

        return self.model.predict_stream(checked(), **kw)


def test_a_failing_image_in_the_stream_is_recorded_and_the_others_are_batch_1s(tmp_path: Path) -> None:
    from altp.data.grandf import GrandfSplit
    from altp.data.synthetic import write_synthetic_split
    from altp.run.batches import run_images

    gt = write_synthetic_split(tmp_path / "data", split="val", n_images=6, seed=0, image_size_range=(64, 160))
    split = GrandfSplit(gt, "val", tmp_path / "data" / "images")
    model, _ = _case("glamm_tiny")
    pruner = build_pruner("fastv", keep=0.1)
    samples = list(split)

    def run(m: Any, out: Path, **kw: Any) -> dict[str, dict]:
        return run_images(m, pruner, split, samples, pred_dir=out / "p", rec_dir=out / "r", seed=0, **kw)

    ref = run(model, tmp_path / "ref", batch_size=1, batching="static")
    bad = model.preprocess(split.load_image(samples[3])).vision_image
    got = run(_Flaky(model, bad), tmp_path / "got", batch_size=4, continue_on_error=True)
    assert got[samples[3].image_id]["error"] == "RuntimeError: poisoned image"
    for s in samples:
        if s is not samples[3]:
            assert (tmp_path / "got" / "p" / f"{s.image_id}.json").read_bytes() == \
                (tmp_path / "ref" / "p" / f"{s.image_id}.json").read_bytes()
            assert {**got[s.image_id], "timings": None} == {**ref[s.image_id], "timings": None}
