"""Batched inference: every image of a batch gets exactly its batch-1 prediction.

The oracle is the same model on one image at a time. Compared exactly: caption,
phrases, masks (bit for bit), the record fields the runner writes, the token
counts. The cases are checked to occur: images that stop at different lengths
(glamm_shapes), images with masks, OMG-LLaVA images that need different numbers
of questions and have different object-token counts (separate engine calls).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from altp.models import build_model
from altp.models.base import GCGModel, GCGPrediction, ImageInputs
from altp.pruners import available_pruners, build_pruner
from altp.pruning._rowwise import per_sample_linear
from altp.pruning.engine import PruningEngine
from altp.train.samples import render_sample
from tests.test_engine import GRID, PREFIX, V, prompt, tiny_lm

# (registry name, build_pruner kwargs); fastv's per-step re-selection decodes on the uncached path.
PRUNERS = [(p, {}) for p in available_pruners()] + [("fastv", {"reselect": "per_step"})]
# The fast suite runs every pruner on glamm_tiny and a few on the others (OMG-LLaVA's vision tower
# costs ~0.5 s an image on the CPU; per-step re-selection recomputes the sequence every step).
FAST = {"glamm_tiny": {"altp", "ddc", "fastv", "none", "pdrop", "random", "uniform", "fastv-per_step", "visionzip",
                       "divprune", "dart"},
        "glamm_shapes": {"none", "fastv", "random", "altp"}, "omg_llava_tiny": {"random"}}


def _noise_images(sizes: list[tuple[int, int]]) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in sizes]


_MODELS = {
    # A scripted answer: a [SEG] state and a mask per image, different images.
    "glamm_tiny": (lambda: build_model("glamm_tiny", seed=0, num_layers=6, max_new_tokens=12,
                                       script="<p>A red circle</p>[SEG] on the left."),
                   lambda: _noise_images([(90, 120), (130, 100), (100, 100)])),
    # Trained: its answers end at image-dependent lengths (per-sequence stopping; some reach the cap).
    "glamm_shapes": (lambda: build_model("glamm_shapes", max_new_tokens=60),
                     lambda: [Image.fromarray(render_sample(seed=0, index=i, split="val").image) for i in range(3)]),
    # Random: these images take 1, 2 and 6 questions and have 8, 8 and 7 object tokens.
    "omg_llava_tiny": (lambda: build_model("omg_llava_tiny", seed=0, max_new_tokens=8),
                       lambda: _noise_images([(200, 300), (240, 180), (160, 160)])),
}


_CASES: dict[str, tuple[str, GCGModel, list[ImageInputs]]] = {}


def _case(model_name: str) -> tuple[str, GCGModel, list[ImageInputs]]:
    """One model and its preprocessed images per test session (built on first use)."""
    if model_name not in _CASES:
        build, images = _MODELS[model_name]
        model = build()
        _CASES[model_name] = (model_name, model, [model.preprocess(im) for im in images()])
    return _CASES[model_name]


def _fields(p: GCGPrediction) -> tuple:
    r = p.record
    return (p.caption, p.phrases, [(m.shape, m.tobytes()) for m in p.masks], r.kept_tokens, r.kept_tokens_per_stage,
            r.kept_per_stage, r.stage_layers, r.extras, r.hparams, p.num_text_tokens, p.num_visual, p.new_tokens)


def _params():
    for model in _MODELS:
        for name, kw in PRUNERS:
            if name == "visionzip" and model == "omg_llava_tiny":
                continue  # needs a ViT's CLS attention: a config-time error there (tests/test_new_pruners_oracle.py)
            label = f"{name}{'-per_step' if kw else ''}"
            slow = label not in FAST[model]
            yield pytest.param(model, name, kw, marks=[pytest.mark.slow] if slow else [], id=f"{model}-{label}")


@pytest.mark.parametrize(("model_name", "pruner_name", "kw"), list(_params()))
def test_batch_equals_batch_of_one(model_name: str, pruner_name: str, kw: dict) -> None:
    name, model, inputs = _case(model_name)
    pruner = build_pruner(pruner_name, keep=0.1, **kw)
    preps = [pruner.prepare(x.vision_image, model.grid) if pruner is not None else None for x in inputs]
    seeds = [101, 7, 55]
    alone = [model.predict_batch([x], pruner=pruner, preps=[p], seeds=[s])[0]
             for x, p, s in zip(inputs, preps, seeds, strict=True)]
    together = model.predict_batch(inputs, pruner=pruner, preps=preps, seeds=seeds)
    assert [_fields(p) for p in together] == [_fields(p) for p in alone]
    assert all(p.timings["batch_size"] == len(inputs) for p in together)
    assert all(p.timings["batch_size"] == 1 for p in alone)
    # The cases the batch must get right really occur.
    if name == "glamm_shapes":  # (an image may get no mask under a harsh pruner: DivPrune at the input)
        assert len({p.new_tokens for p in alone}) > 1 and any(p.masks for p in alone)
    if name == "glamm_tiny":
        assert all(len(p.masks) == 1 for p in alone)
    if name == "omg_llava_tiny":
        if pruner_name in ("none", "random"):  # under pdrop and per-step fastv all three take six questions
            assert len({p.record.extras[0]["questions_tried"] for p in alone}) > 1
        assert len({p.num_text_tokens - len(model.suffix_ids[p.record.extras[0]["question"]]) for p in alone}) > 1


def test_predict_is_predict_batch_of_the_preprocessed_image() -> None:
    _, model, _ = _case("glamm_tiny")
    image = _noise_images([(90, 120)])[0]
    a = model.predict(image, pruner=None, prep=None)
    b = model.predict_batch([model.preprocess(image)], pruner=None, preps=[None], seeds=[0])[0]
    assert _fields(a) == _fields(b)
    with pytest.raises(ValueError, match="one prep and one seed per image"):
        model.predict_batch([model.preprocess(image)] * 2, pruner=None, preps=[None], seeds=[0, 1])


@pytest.mark.parametrize("name", ["glamm_tiny", "omg_llava_tiny"])
def test_preprocess_is_the_vision_image_and_pickles(name: str) -> None:
    _, model, _ = _case(name)
    for image in _noise_images([(200, 300), (240, 180)]):
        x = model.preprocess(image.convert("L"))  # any mode: converted to RGB like vision_image
        assert isinstance(x, ImageInputs) and x.size == (image.height, image.width)
        assert np.array_equal(x.vision_image, model.vision_image(image.convert("L")))
        assert x.vision_image.dtype == np.uint8
        assert all(isinstance(a, np.ndarray) and a.dtype == np.uint8 for a in x.pixels.values())
        y = pickle.loads(pickle.dumps(x))
        assert np.array_equal(y.vision_image, x.vision_image)
        assert y.pixels.keys() == x.pixels.keys()
        assert all(np.array_equal(y.pixels[k], v) for k, v in x.pixels.items())


# -- the engine: per-sequence stopping and per-sample bits ---------------------------------------------
def test_engine_rows_stop_on_their_own_and_keep_their_batch_of_one_bits() -> None:
    lm, x = tiny_lm(), prompt(4)
    eng = PruningEngine(lm=lm, pruner=build_pruner("fastv", keep=0.25))
    kw = dict(visual_start=PREFIX, num_visual=V, grid=GRID, max_new_tokens=10)
    free = eng.generate(inputs_embeds=x, eos_token_id=None, **kw)
    eos = int(free.tokens[0, 3])  # ends row 0 at step 3 at the latest; other rows wherever it occurs
    out = eng.generate(inputs_embeds=x, eos_token_id=eos, **kw)
    assert len(set(out.lengths.tolist())) > 1  # rows really stop at different steps
    for b in range(4):
        one = eng.generate(inputs_embeds=x[b : b + 1], eos_token_id=eos, **kw)
        n = int(out.lengths[b])
        assert n == one.tokens.shape[1] and torch.equal(out.tokens[b, :n], one.tokens[0])
        assert torch.equal(out.step_hidden[b, :n], one.step_hidden[0])  # bit-identical states
        assert (out.tokens[b, n:] == eos).all()


def test_per_sample_linear_matches_one_sample_at_a_time_on_the_cpu() -> None:
    # The CPU measure the exactness rests on: M = 1..3 rows take other kernels than M >= 4.
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 96)
    for m in (1, 2, 3, 5):
        x = torch.randn(8, m, 128)
        alone = torch.stack([lin(x[i]) for i in range(8)])
        with per_sample_linear(lin, x):
            together = lin(x)
        assert torch.equal(together, alone)
    # Within one context: 2-D and 4-D inputs, and the batch shrinking and growing (rows leaving a
    # decoding batch), each call against its own samples alone (the views are kept per batch shape).
    x2, x4 = torch.randn(8, 128), torch.randn(8, 2, 3, 128)
    with per_sample_linear(lin, x2):
        for x in (x2, x2[:5], x2[:2], x2, x4, x4[:3]):
            assert torch.equal(lin(x), torch.stack([lin(x[i : i + 1])[0] for i in range(x.shape[0])]))
    assert "forward" not in vars(lin)  # the stock forward is back


def _leaves(x, path="enc"):
    """(path, tensor) of every tensor in a nested encoding (dataclasses, tuples)."""
    import dataclasses

    if torch.is_tensor(x):
        yield path, x
    elif dataclasses.is_dataclass(x):
        for f in dataclasses.fields(x):
            yield from _leaves(getattr(x, f.name), f"{path}.{f.name}")
    elif isinstance(x, tuple):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")


def test_vision_encoders_of_a_batch_give_each_image_its_batch1_bits() -> None:
    """The batched encodings predict_batch uses equal each image encoded alone, bit for bit.

    Oracle: the encoders on one image. Checked on the encoders where a plain batched call rounds
    differently on this CPU (oneDNN picks convolution algorithms by batch size): GLaMM-tiny's SAM
    (256 px) and OMG-LLaVA's visual encoding, whose batch is joined by ``VisualEncoding.concat``.
    """
    from altp.models.omg.visual import VisualEncoding
    from altp.pruning._rowwise import encode_per_sample

    glamm = build_model("glamm_tiny", seed=0, num_layers=2)
    images = _noise_images([(200, 300), (240, 180), (160, 160)])
    sam = torch.cat([glamm.grounding_encoder.preprocess(im)[0] for im in images])
    with torch.inference_mode():
        batch = encode_per_sample(glamm.grounding_encoder.encode, sam)
        for b in range(len(images)):
            assert torch.equal(batch[b], glamm.grounding_encoder.encode(sam[b : b + 1])[0])
    omg = build_model("omg_llava_tiny", seed=0)
    pixels = omg.pixel_input([omg.preprocess(im) for im in images])
    with torch.inference_mode():
        joined = encode_per_sample(omg.visual.encode, pixels, VisualEncoding.concat)
        alone = [omg.visual.encode(pixels[b : b + 1]) for b in range(len(images))]
    leaves = dict(_leaves(joined))
    for b, one in enumerate(alone):
        for path, t in _leaves(one):
            if path.startswith("enc.tokens.object_tokens"):
                assert torch.equal(leaves[f"enc.tokens.object_tokens[{b}]"], t)
            elif path in ("enc.tokens.separator",) or ".key_pos" in path:
                assert torch.equal(leaves[path], t), path  # image-independent: taken from the first image
            else:
                assert leaves[path].shape[0] == len(images), path
                assert torch.equal(leaves[path][b : b + 1], t), path
