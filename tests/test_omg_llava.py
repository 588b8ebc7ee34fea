"""The OMG-LLaVA adapter: prompt layout, [SEG] states, the question retry, cached decoding,
the official-file builder (round trip and missing files) and run.py on the tiny model."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from altp.configs import config_options
from altp.errors import UserError
from altp.flops import MODEL_SHAPES, LLMShape, flops_ratio
from altp.models.base import MissingCheckpointError
from altp.models.omg.internlm2_chat import GCG_QUESTIONS, llama_config_from_internlm2
from altp.models.omg.official_weights import write_official_layouts
from altp.models.omg.preprocess import image_to_tensor
from altp.models.omg.tokenizer import OMG_TINY_TOKENIZER_DIR, load_internlm2_tokenizer
from altp.models.omg.visual import OMG_LLAVA_TINY, OmgLlavaVisual
from altp.models.omg_llava import OmgLlava
from altp.models.omg_llava_build import (
    TINY_INTERNLM2_CONFIG,
    build_omg_llava,
    build_omg_llava_tiny,
    tiny_class_embed,
)
from altp.pruners import build_pruner
from altp.pruning import kept_count
from altp.run.runner import run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "<p>red circle</p>[SEG] on the left."
PRUNERS = config_options("pruner")  # every pruner a run can name (the registry, tests/test_pruner_registry.py)


@pytest.fixture(scope="module")
def model() -> OmgLlava:
    return build_omg_llava_tiny(seed=0, script=SCRIPT, max_new_tokens=16)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A wide (300 x 200) noise image: padded above and below."""
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((200, 300, 3)) * 255).astype(np.uint8))


def _pruner(name: str, keep: float = 0.1):
    kwargs = {"fastv": {"layer": 2}, "pdrop": {"match_layer": 2}}.get(name, {})
    return build_pruner(name, keep=keep, **kwargs) if name != "none" else None


def _predict(model: OmgLlava, image: Image.Image, pruner_name: str = "none", **kw):
    pruner = _pruner(pruner_name)
    prep = None if pruner is None else pruner.prepare(model.vision_image(image), model.grid)
    return model.predict(image, pruner=pruner, prep=prep, **kw)


def _suffix(model: OmgLlava, question: int) -> list[int]:
    """The text after <image> in xtuner's internlm2_chat INSTRUCTION, encoded without BOS."""
    text = "\n" + GCG_QUESTIONS[question] + "<|im_end|>\n<|im_start|>assistant\n"
    return model.tokenizer.encode(text, add_special_tokens=False)


# -- preprocessing and prompt ----------------------------------------------------------------------
def test_vision_image_is_the_encoder_input(model: OmgLlava, image: Image.Image) -> None:
    seen = model.vision_image(image)
    assert seen.shape == (1024, 1024, 3) and seen.dtype == np.uint8
    assert (seen[:100] == (122, 116, 104)).all()  # mean-colour padding above the 2:3 image
    # preprocess.image_to_tensor is the independent port of upstream's expand2square + CLIPImageProcessor.
    assert torch.equal(model.pixels(image), image_to_tensor(image)[None])
    assert model.grid == (16, 16) and model.num_visual == 256


@torch.inference_mode()
def test_token_grid_fraction_is_the_pixel_token_grid_of_the_padded_square(model: OmgLlava) -> None:
    # 800 x 425: padded to 800 px, image rows [187, 612) of the square; a token row is 50 px,
    # so row 3 spans original rows [-37, 13) (13 of 50 in the image) and row 8 lies inside.
    frac = model.token_grid_fraction(np.ones((425, 800), dtype=bool))
    assert frac.shape == model.grid == (16, 16)
    assert frac[3, 5] == pytest.approx(13 / 50) and frac[8, 8] == 1.0 and frac[0, 0] == 0.0


def test_prompt_layout(model: OmgLlava, image: Image.Image) -> None:
    ids, tok = model.token_ids, model.tokenizer
    assert model.prefix_ids == [
        ids.bos,
        ids.im_start,
        *tok.encode("user\n", add_special_tokens=False),
    ]
    enc = model.visual.encode(model.pixels(image))
    n = enc.tokens.object_tokens[0].shape[0]
    assert 1 <= n <= OMG_LLAVA_TINY.num_queries
    for q in (0, 3):
        suffix = model.suffix_ids[q]
        assert suffix == _suffix(model, q)
        emb = model.build_inputs_embeds(enc, q)[0]
        text = model.llm.get_input_embeddings()(torch.tensor(model.prefix_ids + suffix))
        assert emb.shape[0] == 4 + 256 + 1 + n + len(suffix)
        assert torch.equal(emb[:4], text[:4]) and torch.equal(emb[4 + 256 + 1 + n :], text[4:])
        assert torch.equal(emb[4:260], enc.tokens.pixel_tokens[0])
        assert torch.equal(emb[260], enc.tokens.separator)
        assert torch.equal(emb[261 : 261 + n], enc.tokens.object_tokens[0])


# -- [SEG] states, retry, cache -------------------------------------------------------------------
@torch.inference_mode()
def test_seg_mask_uses_the_seg_tokens_own_state(
    model: OmgLlava, image: Image.Image, monkeypatch
) -> None:
    seen: list[torch.Tensor] = []
    real = model.visual.seg_masks
    monkeypatch.setattr(model.visual, "seg_masks", lambda h, *a: seen.append(h) or real(h, *a))
    out = _predict(model, image)
    assert out.phrases == ["red circle"] and out.caption == "red circle on the left."
    assert len(out.masks) == 1 and out.masks[0].shape == (200, 300) and out.masks[0].dtype == bool

    # Oracle: a plain transformers forward over prompt + fed-back tokens.
    enc = model.visual.encode(model.pixels(image))
    prompt = model.build_inputs_embeds(enc, 0)
    tokens = model.tokenizer.encode(SCRIPT, add_special_tokens=False)
    fed = model.llm.get_input_embeddings()(torch.tensor([tokens]))
    states = model.llm.model(inputs_embeds=torch.cat([prompt, fed], 1)).last_hidden_state[0]
    at = prompt.shape[1] + tokens.index(model.token_ids.seg)  # where [SEG] is the input
    torch.testing.assert_close(seen[0][0], states[at], rtol=1e-4, atol=1e-4)
    # GLaMM's choice (the state that produced [SEG]) is a different vector.
    assert not torch.allclose(seen[0][0], states[at - 1], atol=1e-2)


@torch.inference_mode()
def test_next_question_until_a_seg_state(model: OmgLlava, image: Image.Image, monkeypatch) -> None:
    asked: list[int] = []
    real = model.build_inputs_embeds
    monkeypatch.setattr(
        model, "build_inputs_embeds", lambda enc, q: asked.append(q) or real(enc, q)
    )
    # 5 tokens end on [SEG]: it is never fed back, so it has no state (upstream drops it) -> retry all six.
    out = _predict(model, image, max_new_tokens=5)
    assert asked == [0, 1, 2, 3, 4, 5]
    extras = out.record.extras[0]
    assert extras["question"] == 5 and extras["questions_tried"] == 6
    assert out.masks == [] and out.phrases == ["red circle"]  # the last answer stands, as upstream
    assert out.num_text_tokens == 4 + len(model.suffix_ids[5]) + 1 + extras["object_tokens"]
    asked.clear()
    out = _predict(model, image, max_new_tokens=6)
    assert asked == [0] and out.record.extras[0]["questions_tried"] == 1 and len(out.masks) == 1


@pytest.mark.parametrize("pruner_name", ["none", "fastv", "pdrop"])
def test_cached_equals_uncached(model: OmgLlava, image: Image.Image, pruner_name: str) -> None:
    a = _predict(model, image, pruner_name, use_cache=True)
    b = _predict(model, image, pruner_name, use_cache=False)
    assert (a.caption, a.phrases, a.new_tokens) == (b.caption, b.phrases, b.new_tokens)
    assert a.record.kept_tokens == b.record.kept_tokens
    assert len(a.masks) == len(b.masks) == 1 and np.array_equal(a.masks[0], b.masks[0])


def test_per_step_fastv_picks_the_uncached_path_by_itself(model: OmgLlava, image: Image.Image) -> None:
    pruner = build_pruner("fastv", keep=0.1, reselect="per_step")
    auto = model.predict(image, pruner=pruner, prep=None)
    explicit = model.predict(image, pruner=pruner, prep=None, use_cache=False)
    assert (auto.caption, auto.phrases, auto.new_tokens) == (explicit.caption, explicit.phrases, explicit.new_tokens)
    assert auto.record.kept_tokens == explicit.record.kept_tokens
    assert auto.record.extras[0]["reselect_steps"] == auto.new_tokens
    with pytest.raises(ValueError, match="use_cache=False"):
        model.predict(image, pruner=pruner, prep=None, use_cache=True)


def test_flops_shape_of_the_real_model_is_internlm2_7b() -> None:
    # InternLM2-chat-7B's config.json values (docs/omg_llava_port.md section 5), 7B LLM on meta.
    cfg = {**TINY_INTERNLM2_CONFIG, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768,
           "vocab_size": 92544}  # fmt: skip
    with torch.device("meta"):
        llm = LlamaForCausalLM(llama_config_from_internlm2(cfg, vocab_size=92548))
    tok, ids = load_internlm2_tokenizer(OMG_TINY_TOKENIZER_DIR)
    visual = OmgLlavaVisual(config=replace(OMG_LLAVA_TINY, llm_dims=4096))
    m = OmgLlava(visual=visual, llm=llm, tokenizer=tok, token_ids=ids)
    assert m.llm_shape == MODEL_SHAPES["omg_llava"]


# -- the official files ---------------------------------------------------------------------------
def _write_official(model: OmgLlava, root: Path) -> dict[str, str]:
    """``model`` in upstream's files under ``root`` (the layout of conf/model/omg_llava.yaml)."""
    ids = model.token_ids
    w = write_official_layouts(model.visual, model.llm.state_dict(), num_heads=4, num_kv_heads=2,
                               base_vocab=ids.base_vocab, lora_rank=3)  # fmt: skip
    folder = root / "internlm2-chat-7b"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({**TINY_INTERNLM2_CONFIG, "vocab_size": ids.base_vocab})
    )
    shutil.copy(OMG_TINY_TOKENIZER_DIR / "tokenizer.model", folder / "tokenizer.model")
    save_file(
        {k: v.contiguous() for k, v in w["internlm2"].items()}, str(folder / "model.safetensors")
    )
    paths = {
        "internlm2_dir": str(folder),
        "omg_seg_ckpt": str(root / "omg_seg_convl.pth"),
        "finetuned_ckpt": str(root / "finetuned_gcg.pth"),
        "class_embed": str(root / "convnext_large_d_320_CocoPanopticOVDataset.pth"),
        "convnext_ckpt": str(root / "convnext_large_d_320" / "open_clip_pytorch_model.bin"),
    }
    Path(paths["convnext_ckpt"]).parent.mkdir()
    torch.save({"state_dict": w["omg_seg"]}, paths["omg_seg_ckpt"])  # mmengine-style wrapper
    torch.save(w["finetuned"], paths["finetuned_ckpt"])
    # What build_omg_llava_tiny(seed=0) installed, as the (K, P, D) file upstream reads.
    torch.save(tiny_class_embed(0), paths["class_embed"])
    torch.save(w["open_clip"], paths["convnext_ckpt"])
    return paths


def test_official_layouts_reload_to_identical_outputs(
    model: OmgLlava, image: Image.Image, tmp_path: Path
) -> None:
    paths = _write_official(model, tmp_path)
    again = build_omg_llava(**paths, dtype="float32", device="cpu", max_new_tokens=16,
                            visual_config=OMG_LLAVA_TINY)  # fmt: skip
    a, b = model.visual.state_dict(), again.visual.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    a, b = model.llm.state_dict(), again.llm.state_dict()
    assert set(a) == set(b)
    for k in a:  # the LoRA merge is exact up to float32 rounding
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert again.llm_weights.startswith("InternLM2-chat-7B with the finetuned LoRA merged")
    for name in ("none", "altp"):
        x, y = _predict(model, image, name), _predict(again, image, name)
        assert (x.caption, x.phrases, x.new_tokens, x.num_text_tokens) == (y.caption, y.phrases, y.new_tokens,
                                                                          y.num_text_tokens)  # fmt: skip
        assert x.record.kept_tokens == y.record.kept_tokens
        assert len(x.masks) == len(y.masks) == 1 and np.array_equal(x.masks[0], y.masks[0])
    assert "NF4" in y.record.extras[0]["llm_weights"]


REQUIRED = [
    ("internlm2_dir", "config.json", "internlm/internlm2-chat-7b"),
    ("internlm2_dir", "tokenizer.model", "internlm/internlm2-chat-7b"),
    ("omg_seg_ckpt", None, "zhangtao-whu/OMG-LLaVA omg_seg_convl.pth"),
    ("finetuned_ckpt", None, "zhangtao-whu/OMG-LLaVA finetuned_gcg.pth"),
    ("class_embed", None, "zhangtao-whu/OMG-LLaVA convnext_large_d_320_CocoPanopticOVDataset.pth"),
    (
        "convnext_ckpt",
        None,
        "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup open_clip_pytorch_model.bin",
    ),
]


@pytest.mark.parametrize(("arg", "inside", "repo"), REQUIRED)
def test_missing_official_file_is_one_line(
    tmp_path: Path, arg: str, inside: str | None, repo: str
) -> None:
    # Empty placeholders: the check must come before any file is read.
    paths = {"internlm2_dir": tmp_path / "internlm2-chat-7b", "omg_seg_ckpt": tmp_path / "a.pth",
             "finetuned_ckpt": tmp_path / "b.pth", "class_embed": tmp_path / "c.pth",
             "convnext_ckpt": tmp_path / "d.bin"}  # fmt: skip
    paths["internlm2_dir"].mkdir()
    for f in ("config.json", "tokenizer.model"):
        (paths["internlm2_dir"] / f).write_text("")
    for k in ("omg_seg_ckpt", "finetuned_ckpt", "class_embed", "convnext_ckpt"):
        paths[k].write_text("")
    gone = paths[arg] / inside if inside else paths[arg]
    gone.unlink()
    with pytest.raises(MissingCheckpointError) as err:
        build_omg_llava(**{k: str(v) for k, v in paths.items()}, device="cpu")
    msg = str(err.value)
    assert (
        len(msg.splitlines()) == 1
        and str(gone) in msg
        and f"hf download {repo} " in msg
    )


def test_model_omg_llava_without_files_exits_with_one_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from altp.run.cli import one_line_errors

    monkeypatch.setenv("ALTP_CKPT_DIR", str(tmp_path))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=omg_llava"])
    assert cfg.model.max_new_tokens == 100
    with pytest.raises(SystemExit) as stop, one_line_errors():
        instantiate(cfg.model)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = tmp_path / "omg_llava" / "internlm2-chat-7b" / "config.json"
    assert len(err) == 1 and str(want) in err[0] and "internlm/internlm2-chat-7b" in err[0]


def test_table2_experiment_composes() -> None:
    from altp.run.cli import check_overrides

    # exits 2 on an unknown name or value (minilm: bert-base-uncased need not be cached here)
    check_overrides(["-m", "model=omg_llava,omg_llava_tiny", "experiment=table2_omg_llava", "text_encoder=minilm"])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["experiment=table2_omg_llava"],
            return_hydra_config=True,
        )
    assert cfg.model._target_ == "altp.models.omg_llava_build.build_omg_llava"
    params = cfg.hydra.sweeper.params
    assert params.keep == "0.1,0.25" and [
        kept_count(float(k), 256) for k in params.keep.split(",")
    ] == [25, 64]


# -- run.py model=omg_llava_tiny --------------------------------------------------------------------
N_IMAGES = 2


def _cfg(data_root: Path, out_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=omg_llava_tiny", "model.max_new_tokens=16", "data=synthetic", f"data.root={data_root}",
            f"data.generate.n_images={N_IMAGES}", f"out_dir={out_dir}", *overrides])  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.mark.parametrize("pruner", PRUNERS)
def test_run_every_pruner_keeps_the_budget(
    pruner: str, model: OmgLlava, data_root: Path, tmp_path: Path
) -> None:
    keep = 0.1
    cfg = _cfg(data_root, tmp_path / "run", f"pruner={pruner}", f"keep={keep}", "evaluate=false")
    if pruner == "visionzip":  # reads a ViT's CLS attention, which the ConvNeXt lacks: one line, no run
        with pytest.raises(UserError, match="needs the vision tower's cls_attention"):
            run(cfg, choices={"model": "omg_llava_tiny", "data": "synthetic", "pruner": pruner})
        return
    metrics = run(cfg, choices={"model": "omg_llava_tiny", "data": "synthetic", "pruner": pruner})
    shape = LLMShape(hidden_size=64, intermediate_size=128, num_layers=32)  # the tiny's own
    n_suffix = len(_suffix(model, 0))
    ratios = []
    for p in sorted((tmp_path / "run" / "records").glob("*.json")):
        rec = json.loads(p.read_text())
        assert rec["error"] is None and rec["num_visual"] == 256
        if pruner == "pdrop":
            lam = rec["extras"]["lambda"]
            assert rec["kept_per_stage"] == [
                kept_count(lam ** (s + 1), 256) for s in range(len(rec["stage_layers"]))
            ]
            expected = rec["kept_per_stage"][0]
        else:
            expected = 256 if pruner == "none" else kept_count(keep, 256)
        assert len(rec["kept_tokens"]) == expected
        assert rec["kept_tokens"] == sorted(set(rec["kept_tokens"])) and 0 <= rec["kept_tokens"][0]
        assert rec["kept_tokens"][-1] < 256
        ex = rec["extras"]
        assert ex["separator_tokens"] == 1 and ex["object_tokens"] >= 1 and ex["question"] == 0
        # n of eq. 5 counts the separator and object tokens: they are in every layer's sequence.
        assert rec["num_text_tokens"] == 4 + n_suffix + 1 + ex["object_tokens"]
        assert rec["n_phrases"] == rec["n_masks"] == 1
        stages = list(zip(rec["stage_layers"], rec["kept_per_stage"], strict=True))
        ratios.append(
            flops_ratio(
                num_text=rec["num_text_tokens"], num_visual=256, visual_kept=stages, shape=shape,
                added=ex.get("added_flops", 0.0),  # DivPrune's and DART's selection work
            )
        )
    assert len(ratios) == N_IMAGES and metrics["n_failed"] == 0
    assert metrics["flops_ratio"] == pytest.approx(sum(ratios) / len(ratios))
    if pruner not in ("none", "pdrop"):
        assert metrics["mean_kept_tokens"] == 25
    pred = json.loads(next((tmp_path / "run" / "predictions").glob("*.json")).read_text())
    assert pred["phrases"] == ["red circle"] and len(pred["pred_masks"]) == 1


# -- make tables ------------------------------------------------------------------------------------
def _omg_metrics(split: str, pruner: str, keep: float, base: float) -> dict:
    """A flat metrics.json of model=omg_llava on GranD-f as altp.run.runner.run writes it."""
    kept = 256 if keep == 1.0 else kept_count(keep, 256)
    return {"model": "omg_llava", "pruner": pruner, "keep": keep, "data": f"grandf_{split}", "split": split,
            "meteor": base, "cider": base + 0.01, "ap50": base + 0.02, "miou": base + 0.03,
            "recall": base + 0.04, "flops_ratio": 1.0 if keep == 1.0 else 0.2, "mean_kept_tokens": kept,
            "n_images": 10, "n_failed": 0, "text_encoder": "bert-base-uncased"}  # fmt: skip


def test_make_tables_gives_table2_for_omg_llava_runs(data_root: Path, tmp_path: Path) -> None:
    import scripts.make_tables as make_tables

    results = tmp_path / "results"
    cells = [("none", 1.0)] + [
        (p, k) for p in ("fastv", "pdrop", "ddc", "altp") for k in (0.1, 0.25)
    ]
    for split in ("val", "test"):
        for i, (pruner, keep) in enumerate(cells):
            path = results / "omg_llava" / split / pruner / f"keep{keep}" / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_omg_metrics(split, pruner, keep, 0.1 + 0.01 * i)))
    for pruner in ("none", "fastv"):  # real run records of the tiny model
        out_dir = results / "omg_llava_tiny" / pruner
        cfg = _cfg(
            data_root, out_dir, f"pruner={pruner}", "keep=0.1", "max_images=1", "evaluate=false"
        )
        run(cfg, choices={"model": "omg_llava_tiny", "data": "synthetic", "pruner": pruner})

    out = tmp_path / "tables"
    assert make_tables.main(["--results", str(results), "--out", str(out), "--conf", str(ROOT / "conf"),
                             "--paper", "none"]) == 0  # fmt: skip
    with open(out / "main_omg_llava_grandf.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    text = (out / "main_omg_llava_grandf.md").read_text()
    assert text.startswith("### Table 2: omg_llava on grandf")
    body = [r for r in rows if r and r[0] in ("none", "fastv", "pdrop", "ddc", "altp")]
    # Unpruned first, then 64 tokens (keep 0.25), then 25 (keep 0.1), methods in the paper's order.
    assert [(r[0], r[1]) for r in body] == [("none", "256")] + [
        (p, t) for t in ("64", "25") for p in ("fastv", "pdrop", "ddc", "altp")
    ]
    assert all(len(r) == 3 + 2 * 5 + 1 for r in body)  # labels, val and test x 5 metrics, FLOPs
    assert body[0][3] == "10.0" and body[0][8] == "10.0"  # METEOR val, METEOR test of the none row
    tiny = (out / "main_omg_llava_tiny_synthetic.md").read_text()
    assert "omg_llava_tiny on synthetic (synthetic benchmark" in tiny and "| fastv | 25 |" in tiny


@torch.inference_mode()
def test_bf16_llm_keeps_a_float32_visual_path(image: Image.Image) -> None:
    m = build_omg_llava_tiny(seed=0, script=SCRIPT, dtype="bfloat16", max_new_tokens=16)
    assert m.dtype == torch.bfloat16 and m.llm.lm_head.weight.dtype == torch.bfloat16
    assert {p.dtype for p in m.visual.parameters()} == {torch.float32}
    assert m.llm.model.rotary_emb.inv_freq.dtype == torch.float32
    m.to(torch.bfloat16)  # a later cast of the whole model must not reach them either
    assert {p.dtype for p in m.visual.parameters()} == {torch.float32}
    assert m.llm.model.rotary_emb.inv_freq.dtype == torch.float32
    out = _predict(m, image, "fastv")
    assert out.phrases == ["red circle"] and len(out.masks) == 1
