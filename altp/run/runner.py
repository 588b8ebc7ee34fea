"""The runner: GCG inference over a split with one pruner, then scoring and records.

One run directory holds everything a table needs::

    out_dir/
      predictions/<image_id>.json   GLaMM's per-image format (scored by eval.gcg)
      records/<image_id>.json       kept tokens per stage, object coverage, extras, timings, errors
      metrics.json                  flat: metrics, FLOPs ratio, kept tokens, timing, provenance
      run.json                      resolved config, git sha, package versions, device, per-image timings
      fingerprint.json              the config that determines the predictions (altp.run.fingerprint)

A run has four seams, each its own module: which images to do (:mod:`altp.run.resume`),
the images through the input pipeline and the model in batches (:mod:`altp.run.batches`,
:mod:`altp.run.pipeline`, :mod:`altp.run.inference`), which rank does which images
(:mod:`altp.run.distributed`), and writing the summary (:mod:`altp.run.summary`).

``batch_size`` and ``num_workers`` change how fast a run goes, never what it writes
(timings aside), and neither does the number of ranks: they are recorded in run.json
but are not part of the fingerprint, so a run resumes with any of them.

Each image's record and prediction are written atomically, record first.
Rerunning the same command skips images whose record and prediction read back
as a success; failed images, and images whose files are missing, torn or corrupt,
are run again (:mod:`altp.run.resume`), so a killed run resumes where it stopped. Per-image
seeds derive from the base seed and the image id, never from iteration order,
so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

import altp.pruners  # noqa: F401  (registers the built-in pruners conf/pruner/*.yaml build)
from altp.data.grandf import GrandfFormatError, GrandfSplit
from altp.data.resolve import resolve_split
from altp.errors import UserError
from altp.flops import PAPER_TEXT_TOKENS
from altp.pruning.base import ScheduleInfo
from altp.run.batches import InjectedFault, run_images
from altp.run.config_checks import check_config
from altp.run.distributed import World, barrier, broadcast_object, init_world, rank_share
from altp.run.fingerprint import fingerprint, guard_resume
from altp.run.image_identity import stale_images
from altp.run.inference import image_seed
from altp.run.resume import plan_resume, read_record
from altp.run.summary import print_metrics, summarise, write_hydra_files, write_summary
from altp.run.threads import set_model_threads
from altp.run_dir import FAILED_FILE, locked

if TYPE_CHECKING:  # pragma: no cover - typing only
    from altp.models.base import GCGModel
    from altp.pruning.base import Pruner

log = logging.getLogger(__name__)

__all__ = ["InjectedFault", "image_seed", "model_on_rank", "print_metrics", "resolve_split", "run", "split_on_ranks",
           "summarise"]


def _check_vision_signals(pruner: Pruner | None, model_name: str, has: frozenset[str] | None) -> None:
    """One line when the pruner reads vision-tower signals the model does not expose (None: unknown)."""
    needs = pruner.needs_vision if pruner is not None else frozenset()
    if pruner is None or has is None or needs <= has:
        return
    from altp.errors import UserError

    missing = ", ".join(sorted(needs - has))
    offer = ", ".join(sorted(has)) or "none (no CLS token, no attention)"
    raise UserError(
        f"pruner={pruner.name} needs the vision tower's {missing}, which model={model_name} does not have "
        f"(its vision signals: {offer}){pruner.vision_hint()}"
    )


def _builder_vision_signals(cfg: DictConfig) -> frozenset[str] | None:
    """What the model config's builder module declares in ``VISION_SIGNALS``, before any weight loads."""
    import importlib

    module = str(cfg.model.get("_target_", "")).rpartition(".")[0]
    try:
        declared = getattr(importlib.import_module(module), "VISION_SIGNALS", None) if module else None
    except ImportError:
        return None  # Hydra reports the unknown target when it builds the model
    return frozenset(declared) if declared is not None else None


def _check_pruner_fits(pruner: Pruner | None, model: GCGModel, cfg: DictConfig) -> None:
    """Schedule the pruner once on the model's shape, so a budget it cannot meet (keep below one
    token, a PDrop lambda that empties a stage) is one line before the loop, not an error per image."""
    if pruner is None:
        return
    from altp.errors import UserError

    _check_vision_signals(pruner, model.name, frozenset(getattr(model, "vision_signals", frozenset())))
    shape = model.llm_shape
    info = ScheduleInfo(
        num_visual=model.num_visual,
        num_text=PAPER_TEXT_TOKENS,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        grid=model.grid,
    )
    try:
        pruner.schedule(info)
    except ValueError as err:
        raise UserError(
            f"pruner={pruner.name} keep={cfg.keep} on {model.num_visual} visual tokens: {err}"
        ) from None


def _progress_label(pruner: Pruner | None, cfg: DictConfig, choices: dict[str, str]) -> str:
    """What runs, for the progress bar: the unpruned model has no keep, PDrop with lambda_ ignores it."""
    if pruner is None:
        return f"{choices.get('pruner', 'none')} (unpruned)"
    name = choices.get("pruner", pruner.name)
    if not getattr(pruner, "uses_keep", True):  # see write_summary's keep_ignored
        return f"{name} (own schedule; keep={cfg.keep} unused)"
    return f"{name} keep={cfg.keep}"


#: What a run leaves in its directory before its first image: Hydra's log, the lock, the two folders.
_SKELETON = frozenset({"run.log", ".run.lock", "predictions", "records"})


def _is_skeleton(out_dir: Path) -> bool:
    """True when ``out_dir`` holds nothing a run wrote but its empty skeleton (or does not exist)."""
    if not out_dir.is_dir():
        return True
    for entry in out_dir.iterdir():
        if entry.name not in _SKELETON or (entry.is_dir() and any(entry.iterdir())):
            return False
    return True


def _remove_skeleton(out_dir: Path) -> None:
    """Remove a skeleton run directory, then its parents that this leaves empty, up to the first
    folder of a relative ``out_dir`` (``runs/``) and never outside it; an absolute one alone."""
    if not out_dir.is_dir():
        return
    for entry in out_dir.iterdir():
        entry.rmdir() if entry.is_dir() else entry.unlink()
    out_dir.rmdir()
    parents = out_dir.parents[: max(len(out_dir.parts) - 2, 0)] if not out_dir.is_absolute() else ()
    for parent in parents:
        if any(parent.iterdir()):
            break
        parent.rmdir()


def run(cfg: DictConfig, *, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Run inference, score, and write the run records; returns the flat metrics.

    The run holds a lock on its directory throughout (:func:`altp.run_dir.locked`): a
    second job given the same directory (``pruner=none`` at several keeps of one sweep)
    waits, then finds every image done and only scores. With several ranks
    (:mod:`altp.run.distributed`) rank 0 holds the lock for all of them, and every rank
    returns rank 0's metrics.

    Args:
        cfg: the composed Hydra config (see conf/config.yaml).
        choices: config-group choices (model/pruner/data names) for the records.
    """
    check_config(cfg)  # one line per bad value, before the run directory is made
    set_model_threads(cfg.get("threads", "auto"), int(cfg.get("num_workers", 0)))
    world = init_world(str(cfg.model.get("device", "cpu")),
                       rendezvous_timeout_min=float(cfg.get("rendezvous_timeout_min", 10)))
    if not world.is_main:
        return _run(cfg, choices=choices, world=world)
    from hydra.errors import InstantiationException  # a builder's error (missing weights), wrapped

    out_dir = Path(cfg.out_dir)
    try:
        with locked(out_dir):
            return _run(cfg, choices=choices, world=world)
    except (UserError, FileNotFoundError, GrandfFormatError, InstantiationException):
        # Errors found before the first image (missing GT or weights, a refused config) leave no
        # folder behind: Hydra made it for run.log before the runner could check anything. A
        # folder that holds anything else (a refused resume's, a failed image's) stays as it is.
        if _is_skeleton(out_dir):
            _remove_skeleton(out_dir)
        raise


def model_on_rank(cfg: DictConfig, world: World) -> GCGModel:
    """The model, on ``cuda:LOCAL_RANK`` for a rank of a CUDA run (the config, and so the fingerprint, unchanged)."""
    from hydra.utils import instantiate

    device = str(cfg.model.get("device", "cpu"))
    if world.distributed and device == "cuda":
        return instantiate(cfg.model, device=f"cuda:{world.local_rank}")
    return instantiate(cfg.model)


def split_on_ranks(cfg: DictConfig, world: World) -> GrandfSplit:
    """The run's split: rank 0 (re)generates a generated split before the others read it; its error is everyone's."""
    from altp.errors import UserError

    split, failure = None, None
    if world.is_main:
        try:
            split = resolve_split(cfg.data)
        except (GrandfFormatError, FileNotFoundError) as err:
            failure = str(err)
    failure = broadcast_object(world, failure)
    if failure is not None:
        raise UserError(failure)
    return split if split is not None else resolve_split(cfg.data)


def _plan(
    cfg: DictConfig, split: Any, samples: list[Any], out_dir: Path
) -> tuple[dict[str, dict], list[str]]:
    """Rank 0's decision: the fingerprint guard, ``.hydra/``, and (done records, to-do ids)."""
    guard_resume(out_dir, fingerprint(cfg, split))
    # Only now: a refused resume leaves the folder's .hydra/ as it was.
    write_hydra_files(out_dir, cfg)
    stale_images(samples, out_dir)  # a changed image file: its old prediction is deleted and run again
    plan = plan_resume(samples, out_dir / "predictions", out_dir / "records")
    log.info("%d images, %d already done, writing to %s", len(samples), len(plan.done), out_dir)
    if plan.retried:
        log.info(
            "retrying %d image(s) that failed before: %s",
            len(plan.retried),
            ", ".join(plan.retried[:5]),
        )
    return dict(plan.done), [s.image_id for s in plan.todo]


def _run(cfg: DictConfig, *, choices: dict[str, str] | None, world: World) -> dict[str, Any]:
    from hydra.utils import instantiate

    choices = dict(choices or {})
    out_dir = Path(cfg.out_dir)
    pred_dir, rec_dir = out_dir / "predictions", out_dir / "records"
    pred_dir.mkdir(parents=True, exist_ok=True)
    rec_dir.mkdir(parents=True, exist_ok=True)

    from altp.errors import UserError

    pruner: Pruner | None = instantiate(cfg.pruner)  # validates the pruner's own arguments
    # Before the model loads (minutes for the 7B ones): a pruner the model's vision tower cannot serve.
    _check_vision_signals(pruner, choices.get("model") or str(cfg.model.get("_target_", "?")),
                          _builder_vision_signals(cfg))  # fmt: skip
    split = split_on_ranks(cfg, world)
    samples = list(split)
    if cfg.get("max_images") is not None:
        samples = samples[: int(cfg.max_images)]
    model = model_on_rank(cfg, world)
    _check_pruner_fits(pruner, model, cfg)
    # After the model loads: a missing checkpoint is reported by its builder, not as a difference.
    # Rank 0 alone checks and decides; the others get its to-do list, or its error, before anyone writes.
    decision: tuple[str, Any] | None = None
    if world.is_main:
        try:
            decision = ("plan", _plan(cfg, split, samples, out_dir))
        except UserError as err:
            broadcast_object(world, ("error", str(err)))
            raise
    decision = broadcast_object(world, decision)
    assert decision is not None
    if decision[0] == "error":
        raise UserError(decision[1])
    done, todo_ids = decision[1]
    by_id = {s.image_id: s for s in samples}
    mine = rank_share([by_id[i] for i in todo_ids], world)
    desc = _progress_label(pruner, cfg, choices) + (f" rank {world.rank}" if world.distributed else "")
    with torch.inference_mode():
        ran = run_images(model, pruner, split, mine, pred_dir=pred_dir, rec_dir=rec_dir, seed=int(cfg.seed),
                         batch_size=int(cfg.get("batch_size", 1)), num_workers=int(cfg.get("num_workers", 0)),
                         continue_on_error=bool(cfg.continue_on_error), desc=desc,
                         batching=str(cfg.get("batching", "continuous")))  # fmt: skip
    barrier(world)  # every rank's files are on disk
    if not world.is_main:
        return broadcast_object(world)
    records = {**done, **ran}
    for image_id in todo_ids:  # what the other ranks wrote
        records.setdefault(image_id, read_record(rec_dir / f"{image_id}.json", image_id))

    scores = None
    if cfg.get("evaluate", True):
        from eval.gcg import evaluate

        scores = evaluate(
            pred_dir=pred_dir,
            gt_dir=Path(cfg.data.gt_dir),
            split=cfg.data.split,
            text_encoder=cfg.text_encoder,
            image_ids=[s.image_id for s in samples],
        )
    metrics = write_summary(
        out_dir,
        cfg,
        choices=choices,
        pruner_name="none" if pruner is None else pruner.name,
        records=[records[s.image_id] for s in samples],
        scores=scores,
        model=model,
        world_size=world.size,
        # A pruner whose schedule ignores keep says so (PDrop with lambda_); the Pruner interface
        # has no such attribute, so any other pruner uses keep.
        keep_ignored=pruner is not None and not getattr(pruner, "uses_keep", True),
    )
    (out_dir / FAILED_FILE).unlink(missing_ok=True)  # an earlier failure of this cell is over
    return broadcast_object(world, metrics)
