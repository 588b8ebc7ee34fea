"""The runner: GCG inference over a split with one pruner, then scoring and records.

One run directory holds everything a table needs::

    out_dir/
      predictions/<image_id>.json   GLaMM's per-image format (scored by eval.gcg)
      records/<image_id>.json       kept tokens per stage, object coverage, extras, timings, errors
      metrics.json                  flat: metrics, FLOPs ratio, kept tokens, timing, provenance
      run.json                      resolved config, git sha, package versions, device, per-image timings
      fingerprint.json              the config that determines the predictions (altp.fingerprint)

A run has three seams, each its own module: which images to do (:mod:`altp.resume`),
one image through the model (:mod:`altp.inference`), and writing the summary
(:mod:`altp.run_summary`).

Each image's record and prediction are written atomically, record first.
Rerunning the same command skips images whose record and prediction read back
as a success; failed images, and images whose files are missing, torn or corrupt,
are run again (:mod:`altp.resume`), so a killed run resumes where it stopped. Per-image
seeds derive from the base seed and the image id, never from iteration order,
so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

import altp.pruners  # noqa: F401  (registers the built-in pruners conf/pruner/*.yaml build)
from altp.config_checks import check_config
from altp.data.grandf import GrandfFormatError, ImageLoadError
from altp.data.resolve import resolve_split
from altp.fingerprint import fingerprint, guard_resume
from altp.flops import PAPER_TEXT_TOKENS
from altp.inference import empty_prediction, failed_record, image_seed, predict_image, write_image
from altp.pruning.base import ScheduleInfo
from altp.resume import plan_resume
from altp.run_dir import locked
from altp.run_summary import print_metrics, summarise, write_hydra_files, write_summary

if TYPE_CHECKING:  # pragma: no cover - typing only
    from altp.models.base import GCGModel
    from altp.pruning.base import Pruner

log = logging.getLogger(__name__)

__all__ = ["InjectedFault", "image_seed", "print_metrics", "resolve_split", "run", "summarise"]


class InjectedFault(BaseException):
    """Raised by ``ALTP_TEST_FAULT=raise@k`` (tests only); not an Exception, so nothing swallows it."""


def _fault_point(where: str, index: int) -> None:
    """Test-only fault injection, read from ``ALTP_TEST_FAULT=<action>[-torn]@<k>``.

    At the k-th image (0-based) this process runs, ``raise`` raises :class:`InjectedFault`
    and ``kill`` SIGKILLs the process: before the image starts, or with ``-torn`` after
    its record is written and before its prediction. Resume tests interrupt a run at an
    exact image this way instead of racing a timer. Unset in normal use.
    """
    spec = os.environ.get("ALTP_TEST_FAULT")
    if not spec:
        return
    action, _, at = spec.partition("@")
    if int(at) != index or action.endswith("-torn") != (where == "torn"):
        return
    if action.removesuffix("-torn") == "raise":
        raise InjectedFault(f"ALTP_TEST_FAULT={spec}")
    os.kill(os.getpid(), signal.SIGKILL)


def _check_pruner_fits(pruner: Pruner | None, model: GCGModel, cfg: DictConfig) -> None:
    """Schedule the pruner once on the model's shape, so a budget it cannot meet (keep below one
    token, a PDrop lambda that empties a stage) is one line before the loop, not an error per image."""
    if pruner is None:
        return
    from altp.errors import UserError

    shape = model.llm_shape
    info = ScheduleInfo(num_visual=model.num_visual, num_text=PAPER_TEXT_TOKENS, num_layers=shape.num_layers,
                        hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, grid=model.grid)
    try:
        pruner.schedule(info)
    except ValueError as err:
        raise UserError(f"pruner={pruner.name} keep={cfg.keep} on {model.num_visual} visual tokens: {err}") from None


def run(cfg: DictConfig, *, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Run inference, score, and write the run records; returns the flat metrics.

    The run holds a lock on its directory throughout (:func:`altp.run_dir.locked`): a
    second job given the same directory (``pruner=none`` at several keeps of one sweep)
    waits, then finds every image done and only scores.

    Args:
        cfg: the composed Hydra config (see conf/config.yaml).
        choices: config-group choices (model/pruner/data names) for the records.
    """
    check_config(cfg)  # one line per bad value, before the run directory is made
    with locked(Path(cfg.out_dir)):
        return _run(cfg, choices=choices)


def _run(cfg: DictConfig, *, choices: dict[str, str] | None = None) -> dict[str, Any]:
    from hydra.utils import instantiate

    choices = dict(choices or {})
    out_dir = Path(cfg.out_dir)
    pred_dir, rec_dir = out_dir / "predictions", out_dir / "records"
    pred_dir.mkdir(parents=True, exist_ok=True)
    rec_dir.mkdir(parents=True, exist_ok=True)

    from altp.errors import UserError

    pruner: Pruner | None = instantiate(cfg.pruner)  # validates the pruner's own arguments
    try:
        split = resolve_split(cfg.data)
    except (GrandfFormatError, FileNotFoundError) as err:
        raise UserError(str(err)) from err
    samples = list(split)
    if cfg.get("max_images") is not None:
        samples = samples[: int(cfg.max_images)]
    model: GCGModel = instantiate(cfg.model)
    _check_pruner_fits(pruner, model, cfg)
    # After the model loads: a missing checkpoint is reported by its builder, not as a difference.
    guard_resume(out_dir, fingerprint(cfg, split))
    write_hydra_files(out_dir, cfg)  # only now: a refused resume leaves the folder's .hydra/ as it was

    plan = plan_resume(samples, pred_dir, rec_dir)
    log.info("%d images, %d already done, writing to %s", len(samples), len(plan.done), out_dir)
    if plan.retried:
        log.info("retrying %d image(s) that failed before: %s", len(plan.retried), ", ".join(plan.retried[:5]))
    records = dict(plan.done)
    from tqdm import tqdm

    with torch.inference_mode():
        for index, sample in enumerate(tqdm(plan.todo, desc=f"{choices.get('pruner', 'run')} keep={cfg.keep}",
                                            unit="img")):
            _fault_point("before", index)
            try:
                pred, record = predict_image(model, pruner, split, sample, image_seed(cfg.seed, sample.image_id))
            except ImageLoadError as err:
                pred, record = empty_prediction(), failed_record(sample, err)
                log.warning("image %s failed: %s", sample.image_id, err)
            except Exception as err:
                if not cfg.continue_on_error:
                    raise
                pred, record = empty_prediction(), failed_record(sample, err)
                log.warning("image %s failed: %s", sample.image_id, err)
            write_image(pred_dir, rec_dir, sample.image_id, pred, record, torn=lambda i=index: _fault_point("torn", i))
            records[sample.image_id] = json.loads(json.dumps(record))  # as a resumed run reads it back

    scores = None
    if cfg.get("evaluate", True):
        from eval.gcg import evaluate

        scores = evaluate(pred_dir=pred_dir, gt_dir=Path(cfg.data.gt_dir), split=cfg.data.split,
                          text_encoder=cfg.text_encoder, image_ids=[s.image_id for s in samples])
    return write_summary(out_dir, cfg, choices=choices, pruner_name="none" if pruner is None else pruner.name,
                         records=[records[s.image_id] for s in samples], scores=scores, model=model)
