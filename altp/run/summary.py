"""A run's summary: metrics.json and run.json from the config and the per-image records.

metrics.json is a function of the config and the records alone: pruner
hyper-parameters (``pruner.<key>``) are the pruner config group's values as
the user set them (``pruner.lambda_: null`` stays null), and what a pruner
solves per image (PDrop's lambda, its stage counts) lives in the records and
is aggregated generically (``extras.<key>.mean|min|max``, ``stage_schedules``),
so a fully resumed run writes the same metrics as a fresh one.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from altp.coverage import summarise_coverage
from altp.flops import summarise_flops
from altp.provenance import provenance, write_json_atomic
from altp.run_dir import effective_keep

if TYPE_CHECKING:  # pragma: no cover - typing only
    from altp.models.base import GCGModel

__all__ = ["name_ids", "print_metrics", "pruner_config", "summarise", "write_hydra_files", "write_summary"]


def pruner_config(cfg: DictConfig) -> dict[str, Any]:
    """The pruner config group's hyper-parameters as the user set them (no target, name or keep)."""
    group = cast("dict[str, Any]", OmegaConf.to_container(cfg.pruner, resolve=True))  # a DictConfig's is a dict
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
    out: dict[str, Any] = {"n_images": len(records), "n_failed": len(records) - len(ok),
                           "failed_images": [r["image_id"] for r in records if r.get("error") is not None]}
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
    for key in ("prefill_ms", "decode_ms", "select_ms", "prep_ms", "vision_ms", "mask_ms", "input_wait_ms"):
        vals = [r["timings"][key] for r in ok if key in r["timings"]]
        if vals:
            out[key] = mean(vals)
    out.update(summarise_coverage(ok))
    out.update(_solved_summary(ok))
    out["kept_fraction_per_stage"] = _kept_fraction_per_stage(ok)
    regions = [r["extras"]["regions"] for r in ok if isinstance(r.get("extras", {}).get("regions"), int)]
    if regions:  # DDC / ALTP: with one region the pruner is plain FastV (extras.regions.* has mean/min/max)
        out["single_region_share"] = sum(n == 1 for n in regions) / len(regions)
    return out


def _kept_fraction_per_stage(ok: list[dict]) -> list[float]:
    """Mean over images of the visual tokens kept after each stage, as a fraction of all of them.

    What a run really kept, whatever ``keep`` said (PDrop with ``lambda_`` keeps lambda**s of
    the tokens at stage s). Images with fewer stages than the most (none here) count from theirs.
    """
    n_stages = max((len(r["kept_per_stage"]) for r in ok), default=0)
    out = []
    for s in range(n_stages):
        fr = [r["kept_per_stage"][s] / r["num_visual"] for r in ok if len(r["kept_per_stage"]) > s]
        out.append(sum(fr) / len(fr))
    return out


def write_summary(
    out_dir: Path,
    cfg: DictConfig,
    *,
    choices: dict[str, str],
    pruner_name: str,
    records: list[dict],
    scores: dict[str, Any] | None,
    model: GCGModel,
    world_size: int = 1,
    keep_ignored: bool = False,
) -> dict[str, Any]:
    """Write metrics.json and run.json of a finished run; returns the metrics.

    Args:
        out_dir: the run directory.
        cfg: the composed config.
        choices: config-group choices (model/pruner/data names).
        pruner_name: the pruner's registry name (``none`` unpruned).
        records: one record per scored image, in split order.
        scores: :func:`eval.gcg.evaluate`'s result, or None when not scored.
        model: the model adapter (``llm_shape``, ``device``, ``dtype``).
        world_size: processes that ran the images (run.json's ``throughput``).
        keep_ignored: the pruner's schedule does not depend on ``keep`` (PDrop with
            ``lambda_``): metrics.json then says so (``keep_ignored``), and tables show
            ``kept_fraction_per_stage`` instead of ``keep``, which still names the cell.
    """
    metrics: dict[str, Any] = {
        "model": choices.get("model", ""),
        "pruner": choices.get("pruner", pruner_name),
        "keep": effective_keep(cfg.pruner, cfg.keep),
        "data": cfg.data.name,
        "split": cfg.data.split,
    }
    if keep_ignored:
        metrics["keep_ignored"] = True
    if scores is not None:
        metrics.update({k: scores[k] for k in ("meteor", "cider", "ap50", "miou", "recall")})
        metrics["text_encoder"] = scores.get("text_encoder", cfg.text_encoder)
    metrics.update(summarise(records, llm_shape=model.llm_shape))
    hp = pruner_config(cfg)
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
        # How this (last) invocation ran; not in the fingerprint: none of it changes the outputs.
        "throughput": {"batch_size": int(cfg.get("batch_size", 1)), "batching": cfg.get("batching", "continuous"),
                       "num_workers": int(cfg.get("num_workers", 0)),
                       "world_size": int(world_size), "threads": torch.get_num_threads(),
                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "per_image": [{"image_id": r["image_id"], "error": r.get("error"), **r.get("timings", {})} for r in records],
    })
    return metrics


def write_hydra_files(out_dir: Path, cfg: DictConfig) -> None:
    """Write Hydra's ``.hydra/{config,hydra,overrides}.yaml`` for a run started by ``run.py``.

    conf/config.yaml sets ``hydra.output_subdir: null`` so that Hydra does not write them
    before the run starts: a refused resume must leave the folder's record of the command
    that made it alone. The runner calls this once the run is accepted; outside a Hydra
    job (the Python API, tests) there is nothing to write.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = out_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    for name, node in (("config.yaml", task), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                       ("overrides.yaml", hydra_cfg.overrides.task)):
        (folder / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


def print_metrics(metrics: dict[str, Any]) -> None:
    """Print one run's headline numbers (metrics x100, FLOPs as remaining %)."""
    head = f"{metrics.get('model')} | {metrics.get('data')} | {metrics.get('pruner')} keep={_keep_text(metrics)}"
    # Each FLOPs figure names its convention (altp.flops.FLOPS_CONVENTIONS): the paper's (what the
    # tables show by default) and the run's own prompt differ by a few points for the same run.
    cols = [("METEOR", "meteor"), ("CIDEr", "cider"), ("AP50", "ap50"), ("mIoU", "miou"), ("Recall", "recall"),
            ("FLOPs%(paper)", "flops_ratio_paper"), ("FLOPs%(prompt)", "flops_ratio")]
    cells = [f"{name} {100 * metrics[key]:.1f}" for name, key in cols if metrics.get(key) is not None]
    extra = f"kept {metrics.get('mean_kept_tokens', float('nan')):.1f} tok, {metrics.get('n_images')} img"
    print(f"{head}: " + "  ".join(cells) + f"  ({extra})")
    if metrics.get("n_failed"):
        print(f"{metrics['n_failed']} image(s) FAILED and score as empty predictions: "
              f"{name_ids(metrics.get('failed_images') or [])}; rerun the same command to retry them")


def _keep_text(metrics: dict[str, Any]) -> str:
    """``keep`` as run: the command line's, or the kept fraction per stage where the schedule ignores it."""
    fractions = metrics.get("kept_fraction_per_stage")
    if metrics.get("keep_ignored") and fractions:
        return ">".join(f"{f:.3g}" for f in fractions) + " (schedule fixed by the pruner, not keep)"
    return str(metrics.get("keep"))


def name_ids(ids: list[str], shown: int = 5) -> str:
    """``a, b, c (+n more)``: the first ``shown`` ids of a list."""
    return ", ".join(ids[:shown]) + (f" (+{len(ids) - shown} more)" if len(ids) > shown else "")
