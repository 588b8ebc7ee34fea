"""The loop: images from the input pipeline through the model in batches, each written as it finishes.

:func:`run_images` is what a run (:mod:`altp.run.runner`, on every rank) and the
throughput benchmark (``scripts/bench_throughput.py``) both call. Images come from
:func:`altp.run.pipeline.load_images` (decoded, preprocessed and prepared in worker
processes, in order) and go through the model ``batch_size`` at a time. By default
(``batching=continuous``) the model's stream keeps ``batch_size`` answers decoding and a
finished one's slot takes the next image (:meth:`altp.models.base.GCGModel.predict_stream`);
each image's record and prediction are written atomically, record first, as soon as it
finishes, so a killed run loses at most the images in flight. With ``batching=static``
they are grouped ``batch_size`` at a time through the model's batched API
(:func:`altp.run.inference.predict_batch`) and written in sample order.

Per image, ``timings`` gain what the loop measured: ``input_wait_ms`` (how long the
model waited for the pipeline, the batch's wait shared over its images),
``load_ms``, ``prep_ms`` and ``gt_ms`` (decoding + preprocessing, ``pruner.prepare``
and the GT objects on the token grid, for the object coverage, in the worker: off the
critical path when ``num_workers`` > 0) and ``wall_ms`` (static: the batch's
wait, model and record-building time shared over its images; not the file writes that
follow, ~1-2 ms per image with their fsyncs, so 1000 / ``wall_ms`` slightly overstates the
loop's images per second: ``scripts/bench_throughput.py`` keeps its own clock; continuous:
the loop's time since the previous image was written).

An image that fails to load is a failed record, always. Any other error stops the
run, unless ``continue_on_error``: then a failed batch (continuous: the images the
stream held) is run again one image at a time, so only the images that fail alone
are recorded as failed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from altp.data.grandf import GrandfSplit, Sample
from altp.run.inference import (
    empty_prediction,
    failed_record,
    image_record,
    image_seed,
    predict_batch,
    sample_gt_patches,
    write_image,
)
from altp.run.pipeline import LoadedImage, error_name, load_images

if TYPE_CHECKING:  # pragma: no cover - typing only
    from altp.models.base import GCGModel, GCGPrediction
    from altp.pruning.base import Pruner

__all__ = ["InjectedFault", "run_images"]

log = logging.getLogger(__name__)


class InjectedFault(BaseException):
    """Raised by ``ALTP_TEST_FAULT=raise@k`` (tests only); not an Exception, so nothing swallows it."""


def fault_point(where: str, index: int) -> None:
    """Test-only fault injection, read from ``ALTP_TEST_FAULT=<action>[-torn]@<k>``.

    At the k-th image (0-based) this process writes, ``raise`` raises :class:`InjectedFault`
    and ``kill`` SIGKILLs the process: before the image's files are written, or with
    ``-torn`` after its record is written and before its prediction. Images of a batch
    are written one by one, so the fault lands at the same image whatever the batch size
    (with several ranks, at each rank's k-th image). Resume tests interrupt a run at an
    exact image this way instead of racing a timer. Unset in normal use. (``kill-worker@k``
    is the input pipeline's: :mod:`altp.run.pipeline`.)
    """
    spec = os.environ.get("ALTP_TEST_FAULT")
    if not spec:
        return
    action, _, at = spec.partition("@")
    if action not in ("raise", "kill", "raise-torn", "kill-torn") or int(at) != index or action.endswith("-torn") != (where == "torn"):
        return
    if action.removesuffix("-torn") == "raise":
        raise InjectedFault(f"ALTP_TEST_FAULT={spec}")
    os.kill(os.getpid(), signal.SIGKILL)


def _batches(items: Iterable[LoadedImage], size: int) -> Iterator[list[LoadedImage]]:
    """Consecutive groups of ``size`` items (the last one shorter)."""
    batch: list[LoadedImage] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _predict(
    model: GCGModel, pruner: Pruner | None, items: list[LoadedImage], seed: int, continue_on_error: bool
) -> Sequence[GCGPrediction | Exception]:
    """One output per item: its ``GCGPrediction``, or the exception it failed with (``continue_on_error``)."""
    if not items:
        return []
    seeds = [image_seed(seed, it.sample.image_id) for it in items]
    inputs = [it.inputs for it in items if it.inputs is not None]  # all of them: the loop passes ready items
    try:
        return predict_batch(model, pruner, inputs, [it.prep for it in items], seeds)
    except Exception as err:
        if not continue_on_error:
            raise
        if len(items) == 1:
            return [err]
        log.warning("a batch of %d images failed (%s); running them one at a time", len(items), err)
        return [
            out for it in items for out in _predict(model, pruner, [it], seed, continue_on_error)
        ]


def _result(it: LoadedImage, out: GCGPrediction | BaseException, wait_ms: float) -> tuple[dict, dict]:
    """One image's (prediction fields, record): its prediction's, or a failed record for an exception."""
    if isinstance(out, BaseException):
        log.warning("image %s failed: %s", it.sample.image_id, out)
        return empty_prediction(), failed_record(it.sample, out, type_name=error_name(out))
    timings = {"input_wait_ms": wait_ms, "load_ms": it.load_ms, "prep_ms": it.prep_ms, "gt_ms": it.gt_ms}
    return image_record(it.sample, out, it.gt_patches, timings)


def _write(pred_dir: Path, rec_dir: Path, it: LoadedImage, pred: dict, record: dict, index: int,
           records: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    """Write the ``index``-th image of this process (fault points around it) and keep its record as read back."""
    fault_point("before", index)
    write_image(pred_dir, rec_dir, it.sample.image_id, pred, record, torn=lambda: fault_point("torn", index))
    records[it.sample.image_id] = json.loads(json.dumps(record))  # as a resumed run reads it back


def run_images(
    model: GCGModel,
    pruner: Pruner | None,
    split: GrandfSplit,
    samples: list[Sample],
    *,
    pred_dir: Path,
    rec_dir: Path,
    seed: int,
    batch_size: int = 1,
    num_workers: int = 0,
    continue_on_error: bool = False,
    desc: str = "run",
    on_written: Callable[[int], None] | None = None,
    batching: str = "continuous",
) -> dict[str, dict[str, Any]]:
    """Run ``samples`` through the model, writing each image's record and prediction.

    Args:
        model: the model adapter.
        pruner: the pruner, or None unpruned.
        split: the split the samples belong to.
        samples: the images to run, in the order their files are written.
        pred_dir: where predictions go.
        rec_dir: where records go.
        seed: the run's base seed (per image: :func:`altp.run.inference.image_seed`).
        batch_size: images per call of the model's batched API.
        num_workers: input-pipeline worker processes (0: in this process).
        continue_on_error: record a model error on an image as a failed image and go on.
        desc: the progress bar's label.
        on_written: called after each batch's files are written (each image's, continuous), with the
            number of images written so far (``scripts/bench_throughput.py`` starts its clock after the warm-up).
        batching: ``continuous`` (a finished image's slot takes the next one: images are written
            as they finish, not in sample order) or ``static`` (batches of ``batch_size`` consecutive
            images, each batch decoding until its longest answer ends). At ``batch_size`` 1 both
            run the static path.

    Returns:
        image id -> its record as it reads back from disk, for every sample.
    """
    from tqdm import tqdm

    records: dict[str, dict[str, Any]] = {}
    written = 0
    bar = tqdm(total=len(samples), desc=desc, unit="img")
    loaded = load_images(model, pruner, split, samples, num_workers=num_workers, lookahead=2 * batch_size,
                         gt_patches=partial(sample_gt_patches, model, split))  # fmt: skip
    if batching not in ("continuous", "static"):
        raise ValueError(f"batching must be continuous or static, got {batching!r}")
    try:  # the bar ends its line before an error's message is printed
        if batching == "continuous" and batch_size > 1:  # one slot: a static batch of one is the same, cheaper
            for n in _run_continuous(model, pruner, loaded, pred_dir=pred_dir, rec_dir=rec_dir, seed=seed,
                                     slots=batch_size, continue_on_error=continue_on_error, records=records):  # fmt: skip
                bar.update(1)
                if on_written is not None:
                    on_written(n)
            return records
        for batch in _batches(loaded, batch_size):
            t0 = time.perf_counter()
            for it in batch:
                if it.error is not None and not it.load_failed and not continue_on_error:
                    raise it.error
            ready = [it for it in batch if it.error is None]
            outs = dict(zip((id(it) for it in ready), _predict(model, pruner, ready, seed, continue_on_error),
                            strict=True))  # fmt: skip
            wait_ms = sum(it.wait_ms for it in batch) / len(batch)  # the batch's arrival, shared over its images
            results = [(it, *_result(it, it.error if it.error is not None else outs[id(it)], wait_ms))
                       for it in batch]  # fmt: skip
            wall_ms = wait_ms + (time.perf_counter() - t0) * 1e3 / len(batch)
            for it, pred, record in results:
                if record["error"] is None:
                    record["timings"]["wall_ms"] = wall_ms
                _write(pred_dir, rec_dir, it, pred, record, written, records)
                written += 1
                bar.update(1)
            if on_written is not None:
                on_written(written)
    finally:
        bar.close()
    return records


def _run_continuous(
    model: GCGModel,
    pruner: Pruner | None,
    loaded: Iterable[LoadedImage],
    *,
    pred_dir: Path,
    rec_dir: Path,
    seed: int,
    slots: int,
    continue_on_error: bool,
    records: dict[str, dict[str, Any]],
) -> Iterator[int]:
    """The continuous loop (:meth:`altp.models.base.GCGModel.predict_stream`): writes each image as it
    finishes and yields the count written so far.

    An image that failed to load is written when the stream reaches it. With ``continue_on_error``,
    an error out of the stream runs the images it held one at a time (those that fail alone are
    recorded as failed) and a new stream goes on with the rest. ``wall_ms`` of an image is the
    loop's time since the previous image was written, so the images' ``wall_ms`` sum to the loop's.
    """
    source = iter(loaded)
    in_flight: dict[int, LoadedImage] = {}
    written = 0
    last = time.perf_counter()

    def write(it: LoadedImage, out: GCGPrediction | BaseException) -> int:
        nonlocal written, last
        pred, record = _result(it, out, it.wait_ms)
        if record["error"] is None:
            now = time.perf_counter()
            record["timings"]["wall_ms"] = (now - last) * 1e3
            last = now
        _write(pred_dir, rec_dir, it, pred, record, written, records)
        written += 1
        return written

    failed_loads: list[LoadedImage] = []

    def write_failed_loads() -> Iterator[int]:
        while failed_loads:
            it = failed_loads.pop(0)
            yield write(it, cast(BaseException, it.error))

    def work() -> Iterator[tuple[int, Any, Any, int]]:
        for it in source:
            if it.error is not None:
                if not it.load_failed and not continue_on_error:
                    raise it.error
                failed_loads.append(it)  # written by the loop below, in its turn
                continue
            key = id(it)
            in_flight[key] = it
            assert it.inputs is not None  # loaded without error
            yield key, it.inputs, it.prep, image_seed(seed, it.sample.image_id)

    while True:
        try:
            for key, out in model.predict_stream(work(), pruner=pruner, slots=slots):
                yield from write_failed_loads()
                yield write(in_flight.pop(key), out)
            yield from write_failed_loads()
            return
        except Exception as err:
            if not continue_on_error:
                raise
            held = list(in_flight.values())
            in_flight.clear()
            log.warning("the stream failed (%s); running its %d images one at a time", err, len(held))
            for it in held:
                yield write(it, _predict(model, pruner, [it], seed, True)[0])
