"""The harness on a CUDA device (skipped with a reason without one): the same budgets and
bytes-level resume as on CPU, cached and uncached decoding agreeing on the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from altp.pruning import kept_count
from altp.run.runner import run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gpu


def _run(data_root: Path, out: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "data=synthetic", f"data.root={data_root}", "data.generate.n_images=3", "evaluate=false",
            f"out_dir={out}", *overrides,
        ])  # fmt: skip
    return run(cfg, choices={"model": cfg.model._target_.split(".")[-1], "data": "synthetic",
                             "pruner": cfg.pruner.name})  # fmt: skip


@pytest.mark.parametrize("pruner", ["fastv", "pdrop", "altp"])
def test_tiny_glamm_on_cuda_keeps_the_cpu_budgets(pruner: str, tmp_path: Path) -> None:
    args = ("model=glamm_tiny", f"pruner={pruner}", "keep=0.25")
    gpu = _run(tmp_path / "data", tmp_path / "gpu", *args, "model.device=cuda")
    _run(tmp_path / "data", tmp_path / "cpu", *args)
    assert gpu["n_failed"] == 0 and gpu["device"].startswith("cuda")
    for path in sorted((tmp_path / "gpu" / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        want = json.loads((tmp_path / "cpu" / "records" / path.name).read_text())
        assert rec["stage_layers"] == want["stage_layers"]
        if pruner != "pdrop":  # PDrop's solved lambda may differ in the last float bits
            assert rec["kept_per_stage"] == want["kept_per_stage"] == [kept_count(0.25, 576)]


def test_shapes_model_bf16_on_cuda_grounds_its_images(tmp_path: Path) -> None:
    m = _run(tmp_path / "data", tmp_path / "run", "model=glamm_shapes", "model.device=cuda",
             "model.dtype=bfloat16", "pruner=altp", "keep=0.25")  # fmt: skip
    assert m["n_failed"] == 0 and m["mean_kept_tokens"] == kept_count(0.25, 576)
    preds = [json.loads(p.read_text()) for p in (tmp_path / "run" / "predictions").glob("*.json")]
    assert any(p["pred_masks"] for p in preds)


def test_cuda_run_resumes_to_identical_bytes(tmp_path: Path, monkeypatch) -> None:
    from altp.run.runner import InjectedFault

    args = ("model=glamm_tiny", "model.device=cuda", "pruner=fastv", "keep=0.1")
    _run(tmp_path / "data", tmp_path / "ref", *args)
    monkeypatch.setenv("ALTP_TEST_FAULT", "raise@1")
    with pytest.raises(InjectedFault):
        _run(tmp_path / "data", tmp_path / "cut", *args)
    monkeypatch.delenv("ALTP_TEST_FAULT")
    _run(tmp_path / "data", tmp_path / "cut", *args)
    for p in sorted((tmp_path / "ref" / "predictions").glob("*.json")):
        assert (tmp_path / "cut" / "predictions" / p.name).read_bytes() == p.read_bytes(), p.name


def _predictions(run_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "predictions").glob("*.json"))}


@pytest.mark.parametrize("pruner", ["none", "fastv", "altp"])
def test_bf16_cached_decoding_matches_recomputation(pruner: str, tmp_path: Path) -> None:
    # bf16 on the GPU: the KV-cached steps and the full recomputation per step (groundingLMM's own
    # decoding) round differently, so masks may differ in a few boundary pixels; the tokens may not.
    args = ("model=glamm_tiny", "model.device=cuda", "model.dtype=bfloat16", f"pruner={pruner}", "keep=0.25")
    cached = _run(tmp_path / "data", tmp_path / "cached", *args, "batch_size=1")
    from hydra.utils import instantiate

    from altp.data.resolve import resolve_split

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["data=synthetic", f"data.root={tmp_path / 'data'}",
                                                       "data.generate.n_images=3", *args])  # fmt: skip
    model, prune = instantiate(cfg.model), instantiate(cfg.pruner)
    assert cached["n_failed"] == 0
    split = resolve_split(cfg.data)
    for sample in split:
        inputs = model.preprocess(split.load_image(sample))
        prep = prune.prepare(inputs.vision_image, model.grid) if prune is not None else None
        outs = {c: model.predict_batch([inputs], pruner=prune, preps=[prep], seeds=[0], use_cache=c)[0]
                for c in (True, False)}  # fmt: skip
        assert outs[True].new_tokens == outs[False].new_tokens
        assert outs[True].caption == outs[False].caption and outs[True].phrases == outs[False].phrases
        assert outs[True].record.kept_tokens == outs[False].record.kept_tokens
        for a, b in zip(outs[True].masks, outs[False].masks, strict=True):
            assert (a != b).mean() < 0.01  # bf16 rounding flips at most a boundary pixel or so


def test_batch_16_generates_the_tokens_of_batch_1(tmp_path: Path) -> None:
    args = ("model=glamm_tiny", "model.device=cuda", "model.dtype=bfloat16", "pruner=altp", "keep=0.25",
            "data.generate.n_images=16", "num_workers=2")  # fmt: skip
    _run(tmp_path / "data", tmp_path / "b1", *args, "batch_size=1")
    _run(tmp_path / "data", tmp_path / "b16", *args, "batch_size=16")
    one, many = _predictions(tmp_path / "b1"), _predictions(tmp_path / "b16")
    assert len(one) == 16 and one.keys() == many.keys()
    for name in one:
        assert (many[name]["caption"], many[name]["phrases"]) == (one[name]["caption"], one[name]["phrases"]), name
        assert len(many[name]["pred_masks"]) == len(one[name]["pred_masks"]), name


@pytest.mark.parametrize(("model", "dtype", "batch"), [("glamm_tiny", "bfloat16", 4), ("glamm_shapes", "float32", 8)])
def test_continuous_batches_generate_the_tokens_of_batch_1(model: str, dtype: str, batch: int, tmp_path: Path) -> None:
    # On CUDA the rows' attention is one masked SDPA over caches padded to the longest: last-bit
    # differences from batch 1 are allowed, so greedy answers may part at a near tie (shapes: its
    # trained answers differ in length, so slots are refilled mid-decoding).
    args = (f"model={model}", "model.device=cuda", f"model.dtype={dtype}", "pruner=fastv", "keep=0.25",
            "data.generate.n_images=16", "num_workers=2")  # fmt: skip
    _run(tmp_path / "data", tmp_path / "b1", *args, "batch_size=1")
    _run(tmp_path / "data", tmp_path / "cont", *args, f"batch_size={batch}", "batching=continuous")
    one, many = _predictions(tmp_path / "b1"), _predictions(tmp_path / "cont")
    assert len(one) == 16 and one.keys() == many.keys()
    same = [(many[n]["caption"], many[n]["phrases"]) == (one[n]["caption"], one[n]["phrases"]) for n in one]
    assert sum(same) >= (16 if model == "glamm_tiny" else 14), same
