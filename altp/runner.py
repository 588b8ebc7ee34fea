"""The runner: GCG inference over a split with one pruner, then scoring and records.

One run directory holds everything a table needs::

    out_dir/
      predictions/<image_id>.json   GLaMM's per-image format (scored by eval.gcg)
      records/<image_id>.json       kept tokens per stage, object coverage, extras, timings, errors
      metrics.json                  flat: metrics, FLOPs ratio, kept tokens, timing, provenance
      run.json                      resolved config, git sha, package versions, device, per-image timings

Each image's record and prediction are written atomically, record first, so an
image counts as done exactly when its prediction file exists; rerunning the same
command skips done images and a killed run resumes where it stopped. Per-image
seeds derive from the base seed and the image id, never from iteration order,
so a resumed run writes the same bytes as an uninterrupted one.

metrics.json is a function of the config and the records alone: pruner
hyper-parameters (``pruner.<key>``) are the pruner config group's values as
the user set them (``pruner.lambda_: null`` stays null), and what a pruner
solves per image (PDrop's lambda, its stage counts) lives in the records and
is aggregated generically (``extras.<key>.mean|min|max``, ``stage_schedules``),
so a fully resumed run writes the same metrics as a fresh one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import altp.pruners  # noqa: F401  (registers the built-in pruners conf/pruner/*.yaml build)
from altp.coverage import decode_gt_masks, image_object_coverage, summarise_coverage
from altp.data.grandf import GrandfFormatError, GrandfSplit, ImageLoadError, Sample
from altp.flops import summarise_flops
from altp.predictions import write_prediction
from altp.provenance import provenance, write_json_atomic
from altp.pruning.base import validate_keep
from altp.run_dir import effective_keep, locked

log = logging.getLogger(__name__)

__all__ = ["run", "image_seed", "resolve_split", "summarise", "print_metrics"]


def image_seed(base_seed: int, image_id: str) -> int:
    """Seed for one image: stable across runs, processes and image order."""
    return (int(base_seed) * 1_000_003 + zlib.crc32(image_id.encode())) % (2**31)


def resolve_split(data_cfg: DictConfig) -> GrandfSplit:
    """The split a data config names; a generated split (``generate:``) is (re)built first.

    Public so that tools reading a finished run (figures, reports) find the very
    images and GT the run saw, regenerated bit-identically where needed.
    """
    gt_dir, image_dir = Path(data_cfg.gt_dir), Path(data_cfg.image_dir)
    gen = data_cfg.get("generate")
    if gen is not None:
        # A generated split is rebuilt whenever its generation parameters change, so an
        # old folder can never stand in for the split the config asks for.
        from altp.data.synthetic import GENERATOR_VERSION, write_synthetic_split

        params = {k: (list(v) if not isinstance(v, (int, float, str)) else v)
                  for k, v in OmegaConf.to_container(gen, resolve=True).items()}
        wanted = {**params, "generator_version": GENERATOR_VERSION}
        root = Path(data_cfg.root)
        root.mkdir(parents=True, exist_ok=True)
        stamp = root / f".{data_cfg.split}_generate.json"
        # Parallel sweep jobs (joblib, SLURM arrays) start together: one generates, the others wait.
        with open(root / f".{data_cfg.split}_generate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            have = (gt_dir / f"{data_cfg.split}_gcg_coco_caption_gt.json").exists()
            if not have or not stamp.exists() or json.loads(stamp.read_text()) != wanted:
                log.info("generating synthetic split %s under %s with %s", data_cfg.split, root, params)
                extra = {k: tuple(params[k]) for k in ("image_size_range", "objects_range") if k in params}
                write_synthetic_split(root, split=data_cfg.split, n_images=int(params["n_images"]),
                                      seed=int(params["seed"]), **extra)
                write_json_atomic(stamp, wanted)
    return GrandfSplit(gt_dir, data_cfg.split, image_dir)


_FINGERPRINT_KEYS = ("model", "pruner", "keep", "seed")


def _fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The config that determines predictions (scoring options excluded)."""
    fp = {k: OmegaConf.to_container(cfg, resolve=True).get(k) for k in _FINGERPRINT_KEYS}
    fp["keep"] = effective_keep(cfg.pruner, cfg.keep)  # pruner=none at any keep is one run
    fp["data"] = {"name": cfg.data.name, "split": cfg.data.split}
    return fp


def _guard_resume(out_dir: Path, cfg: DictConfig) -> None:
    """Refuse to resume into a run directory made by a different config.

    Without this, a changed hyper-parameter with the same out_dir would skip every
    image and silently report the old predictions under the new settings.
    """
    from altp.cli import UserError

    path = out_dir / "fingerprint.json"
    current = json.loads(json.dumps(_fingerprint(cfg)))
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != current:
            diff = [k for k in sorted(set(previous) | set(current)) if previous.get(k) != current.get(k)]
            raise UserError(
                f"{out_dir} holds a run made with a different config ({', '.join(diff)} differ); "
                "pass another out_dir=... or delete that folder"
            )
    else:
        write_json_atomic(path, current)


def _predict_one(model: Any, pruner: Any, split: GrandfSplit, sample: Sample, seed: int) -> tuple[dict, dict]:
    """Run one image; returns (prediction fields, record). Raises ImageLoadError."""
    t0 = time.perf_counter()
    image = split.load_image(sample)
    prep = None
    prep_ms = 0.0
    if pruner is not None:
        tp = time.perf_counter()
        prep = pruner.prepare(model.vision_image(image), model.grid)
        prep_ms = (time.perf_counter() - tp) * 1e3
    out = model.predict(image, pruner=pruner, prep=prep, seed=seed)
    wall_ms = (time.perf_counter() - t0) * 1e3  # the diagnostic below is not the model's time
    rec = out.record
    per_stage = rec.kept_tokens_per_stage[0] if rec.kept_tokens_per_stage else []
    record = {
        "image_id": sample.image_id,
        "error": None,
        "kept_tokens": rec.kept_tokens[0] if rec.kept_tokens else None,
        "kept_per_stage": list(rec.kept_per_stage),
        "stage_layers": list(rec.stage_layers),
        "extras": rec.extras[0] if rec.extras else {},
        "kept_tokens_per_stage": per_stage,
        **image_object_coverage(model, decode_gt_masks(split.annotations.masks[sample.image_id]), per_stage),
        "num_visual": out.num_visual,
        "num_text_tokens": out.num_text_tokens,
        "new_tokens": out.new_tokens,
        "n_phrases": len(out.phrases),
        "n_masks": len(out.masks),
        "timings": {**out.timings, "select_ms": rec.select_ms, "prep_ms": prep_ms,
                    "wall_ms": wall_ms},
    }
    pred = {"caption": out.caption, "phrases": list(out.phrases), "masks": list(out.masks)}
    return pred, record


def _failed_record(sample: Sample, err: BaseException) -> dict:
    return {"image_id": sample.image_id, "error": f"{type(err).__name__}: {err}", "kept_tokens": None,
            "kept_per_stage": [], "stage_layers": [], "extras": {}, "kept_tokens_per_stage": [],
            "object_coverage": [], "timings": {}}


def _pruner_config(cfg: DictConfig) -> dict[str, Any]:
    """The pruner config group's hyper-parameters as the user set them (no target, name or keep)."""
    group = OmegaConf.to_container(cfg.pruner, resolve=True)
    return {k: v for k, v in group.items() if not k.startswith("_") and k not in ("name", "keep")}


def _solved_summary(ok: list[dict]) -> dict[str, Any]:
    """What pruners decided per image, aggregated without knowing any pruner.

    ``extras.<key>.mean|min|max`` for every numeric scalar in the records' extras
    (PDrop's solved lambda, OMG-LLaVA's question index, ...), and
    ``stage_schedules``: the distinct (stage_layers, kept_per_stage) with their
    image counts, most frequent first.
    """
    out: dict[str, Any] = {}
    values: dict[str, list[float]] = {}
    for r in ok:
        for k, v in r.get("extras", {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                values.setdefault(k, []).append(v)
    for k in sorted(values):
        vs = values[k]
        out.update({f"extras.{k}.mean": sum(vs) / len(vs), f"extras.{k}.min": min(vs), f"extras.{k}.max": max(vs)})
    counts: dict[tuple, int] = {}
    for r in ok:
        key = (tuple(r["stage_layers"]), tuple(r["kept_per_stage"]))
        counts[key] = counts.get(key, 0) + 1
    out["stage_schedules"] = [{"stage_layers": list(lay), "kept_per_stage": list(kept), "n_images": n}
                              for (lay, kept), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return out


def summarise(records: list[dict], *, llm_shape: Any) -> dict[str, Any]:
    """Aggregate per-image records into the flat numbers of metrics.json."""
    ok = [r for r in records if r.get("error") is None]
    out: dict[str, Any] = {"n_images": len(records), "n_failed": len(records) - len(ok)}
    if not ok:
        return out
    kept = [r["kept_per_stage"][0] if r["kept_per_stage"] else r["num_visual"] for r in ok]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out.update(summarise_flops(ok, shape=llm_shape))  # the three FLOPs conventions of altp.flops
    out.update(
        mean_kept_tokens=mean(kept),
        mean_new_tokens=mean([r["new_tokens"] for r in ok]),
        n_phrase_mask_mismatch=sum(r["n_phrases"] != r["n_masks"] for r in ok),
        time_per_image_s=mean([r["timings"]["wall_ms"] for r in ok]) / 1e3,
    )
    for key in ("prefill_ms", "decode_ms", "select_ms", "prep_ms", "vision_ms", "mask_ms"):
        vals = [r["timings"][key] for r in ok if key in r["timings"]]
        if vals:
            out[key] = mean(vals)
    out.update(summarise_coverage(ok))
    out.update(_solved_summary(ok))
    return out


def run(cfg: DictConfig, *, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Run inference, score, and write the run records; returns the flat metrics.

    The run holds a lock on its directory throughout (:func:`altp.run_dir.locked`): a
    second job given the same directory (``pruner=none`` at several keeps of one sweep)
    waits, then finds every image done and only scores.

    Args:
        cfg: the composed Hydra config (see conf/config.yaml).
        choices: config-group choices (model/pruner/data names) for the records.
    """
    with locked(Path(cfg.out_dir)):
        return _run(cfg, choices=choices)


def _run(cfg: DictConfig, *, choices: dict[str, str] | None = None) -> dict[str, Any]:
    from hydra.utils import instantiate

    choices = dict(choices or {})
    out_dir = Path(cfg.out_dir)
    pred_dir, rec_dir = out_dir / "predictions", out_dir / "records"
    pred_dir.mkdir(parents=True, exist_ok=True)
    rec_dir.mkdir(parents=True, exist_ok=True)

    from altp.cli import UserError

    try:
        validate_keep(cfg.keep)
    except ValueError as err:
        raise UserError(str(err)) from None
    pruner = instantiate(cfg.pruner)  # validates the pruner's own arguments
    _guard_resume(out_dir, cfg)
    try:
        split = resolve_split(cfg.data)
    except (GrandfFormatError, FileNotFoundError) as err:
        raise UserError(str(err)) from err
    samples = list(split)
    if cfg.get("max_images") is not None:
        samples = samples[: int(cfg.max_images)]
    model = instantiate(cfg.model)

    todo = [s for s in samples if not (pred_dir / f"{s.image_id}.json").exists()]
    log.info("%d images, %d already done, writing to %s", len(samples), len(samples) - len(todo), out_dir)
    from tqdm import tqdm

    with torch.inference_mode():
        for sample in tqdm(todo, desc=f"{choices.get('pruner', 'run')} keep={cfg.keep}", unit="img"):
            try:
                pred, record = _predict_one(model, pruner, split, sample, image_seed(cfg.seed, sample.image_id))
            except ImageLoadError as err:
                pred, record = {"caption": "", "phrases": [], "masks": []}, _failed_record(sample, err)
                log.warning("image %s failed: %s", sample.image_id, err)
            except Exception as err:
                if not cfg.continue_on_error:
                    raise
                pred, record = {"caption": "", "phrases": [], "masks": []}, _failed_record(sample, err)
                log.warning("image %s failed: %s", sample.image_id, err)
            write_json_atomic(rec_dir / f"{sample.image_id}.json", record)
            write_prediction(pred_dir, image_id=sample.image_id, **pred)

    records = [json.loads((rec_dir / f"{s.image_id}.json").read_text()) for s in samples]
    metrics: dict[str, Any] = {
        "model": choices.get("model", ""),
        "pruner": choices.get("pruner", "none" if pruner is None else pruner.name),
        "keep": effective_keep(cfg.pruner, cfg.keep),
        "data": cfg.data.name,
        "split": cfg.data.split,
    }
    if cfg.get("evaluate", True):
        from eval.gcg import evaluate

        scores = evaluate(pred_dir=pred_dir, gt_dir=Path(cfg.data.gt_dir), split=cfg.data.split,
                          text_encoder=cfg.text_encoder, image_ids=[s.image_id for s in samples])
        metrics.update({k: scores[k] for k in ("meteor", "cider", "ap50", "miou", "recall")})
        metrics["text_encoder"] = scores.get("text_encoder", cfg.text_encoder)
    metrics.update(summarise(records, llm_shape=model.llm_shape))
    hp = _pruner_config(cfg)
    metrics.update({f"pruner.{k}": v for k, v in hp.items()})
    prov = provenance(device=str(model.device), dtype=str(model.dtype).removeprefix("torch."))
    metrics.update({k: prov[k] for k in ("git_sha", "version", "device", "dtype")})
    # Tables resolve duplicate cells by this stamp (file mtimes do not survive a clone).
    metrics["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_json_atomic(out_dir / "run.json", {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "choices": choices,
        "provenance": prov,
        "pruner_hparams": hp,
        "per_image": [{"image_id": r["image_id"], "error": r.get("error"), **r.get("timings", {})} for r in records],
    })
    return metrics


def print_metrics(metrics: dict[str, Any]) -> None:
    """Print one run's headline numbers (metrics x100, FLOPs as remaining %)."""
    head = f"{metrics.get('model')} | {metrics.get('data')} | {metrics.get('pruner')} keep={metrics.get('keep')}"
    cols = [("METEOR", "meteor"), ("CIDEr", "cider"), ("AP50", "ap50"), ("mIoU", "miou"), ("Recall", "recall"),
            ("FLOPs%", "flops_ratio")]
    cells = [f"{name} {100 * metrics[key]:.1f}" for name, key in cols if metrics.get(key) is not None]
    extra = f"kept {metrics.get('mean_kept_tokens', float('nan')):.1f} tok, {metrics.get('n_images')} img"
    if metrics.get("n_failed"):
        extra += f", {metrics['n_failed']} FAILED"
    print(f"{head}: " + "  ".join(cells) + f"  ({extra})")
