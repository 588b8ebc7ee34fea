"""The input pipeline: images decoded, preprocessed and prepared for the pruner, ahead of the model.

Everything a run does to an image before the model sees it depends on that image
alone: decoding (:meth:`altp.data.grandf.GrandfSplit.load_image`), the model's
preprocessing (``model.preprocess``), the pruner's image-only preparation
(``pruner.prepare``, e.g. ALTP's SLIC superpixels and densities) and, for the
record's object coverage, the GT objects mapped onto the token grid
(``gt_patches``, e.g. :func:`altp.run.inference.sample_gt_patches`). It runs in a
:class:`torch.utils.data.DataLoader` with ``num_workers`` processes, each with one
torch thread, prefetching ahead of the model, so on the critical path the model
only waits for what the workers have not finished yet (``input_wait_ms``).

Results come back in the order of the samples given, whatever the number of
workers: the same bytes with 0, 1 or 8 workers. An image that fails here (a
missing or undecodable file, an error in ``prepare``) comes back as a
:class:`LoadedImage` with ``error`` set, for the runner to record as it always did.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import multiprocessing.context
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from altp.data.grandf import GrandfSplit, ImageLoadError, Sample
from altp.models.base import ImageInputs
from altp.models.pixels import UnprocessableImageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from altp.models.base import GCGModel
    from altp.pruning.base import Pruner

__all__ = ["LoadedImage", "RemoteError", "error_name", "load_images"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class RemoteError(Exception):
    """An error raised in a worker whose own type cannot cross the process boundary.

    ``type_name`` is the original type's name, so the failed record reads as if it
    had been raised in the main process.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name, self.message = type_name, message

    def __str__(self) -> str:
        return self.message


@dataclass
class LoadedImage:
    """One image, ready for the model (or why it is not).

    Attributes:
        sample: the split's sample.
        inputs: ``model.preprocess(image)`` (None when ``error`` is set).
        prep: ``pruner.prepare(inputs.vision_image, model.grid)``, None without a pruner.
        error: what went wrong, None on success.
        gt_patches: what ``load_images``'s ``gt_patches`` returned for the sample (None without it).
        load_ms: decoding and preprocessing time in the worker, milliseconds.
        prep_ms: ``pruner.prepare``'s time in the worker, milliseconds.
        gt_ms: ``gt_patches``'s time in the worker, milliseconds.
        wait_ms: how long the model's loop waited for this image, milliseconds.
    """

    sample: Sample
    inputs: ImageInputs | None
    prep: Any
    error: BaseException | None
    gt_patches: Any = None
    load_ms: float = 0.0
    prep_ms: float = 0.0
    gt_ms: float = 0.0
    wait_ms: float = 0.0

    @property
    def load_failed(self) -> bool:
        """The image could not be read, or the model cannot take it (always a recorded failure, never a crash)."""
        return isinstance(self.error, ImageLoadError | UnprocessableImageError)


def _sendable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return RemoteError(type(err).__name__, str(err))
    return err


def error_name(err: BaseException) -> str:
    """The error's type name as a record writes it (the original type for a :class:`RemoteError`)."""
    return err.type_name if isinstance(err, RemoteError) else type(err).__name__


class _Images(Dataset):
    """Map-style dataset over ``samples``: item i is sample i loaded and prepared."""

    def __init__(
        self,
        split: GrandfSplit,
        samples: Sequence[Sample],
        preprocess: Callable[[Any], ImageInputs],
        prepare: Callable[..., Any] | None,
        grid: tuple[int, int],
        gt_patches: Callable[[Sample], Any] | None = None,
    ) -> None:
        self.split, self.samples, self.grid = split, list(samples), grid
        self.preprocess, self.prepare, self.gt_patches = preprocess, prepare, gt_patches

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> LoadedImage:
        if os.environ.get("ALTP_TEST_FAULT") == f"kill-worker@{index}" and torch.utils.data.get_worker_info():
            os.kill(os.getpid(), signal.SIGKILL)  # tests only: the OS kills an input worker at this image
        sample = self.samples[index]
        t0 = time.perf_counter()
        try:
            inputs = self.preprocess(self.split.load_image(sample))
        except Exception as err:
            return LoadedImage(sample=sample, inputs=None, prep=None, error=_sendable(err))
        t1 = time.perf_counter()
        prep = None
        if self.prepare is not None:
            try:
                prep = self.prepare(inputs.vision_image, self.grid)
            except Exception as err:
                return LoadedImage(
                    sample=sample,
                    inputs=None,
                    prep=None,
                    error=_sendable(err),
                    load_ms=(t1 - t0) * 1e3,
                )
        t2 = time.perf_counter()
        gt = None
        if self.gt_patches is not None:
            try:
                gt = self.gt_patches(sample)
            except Exception as err:
                return LoadedImage(sample=sample, inputs=None, prep=None, error=_sendable(err),
                                   load_ms=(t1 - t0) * 1e3, prep_ms=(t2 - t1) * 1e3)  # fmt: skip
        return LoadedImage(
            sample=sample,
            inputs=inputs,
            prep=prep,
            error=None,
            gt_patches=gt,
            load_ms=(t1 - t0) * 1e3,
            prep_ms=(t2 - t1) * 1e3 if self.prepare is not None else 0.0,
            gt_ms=(time.perf_counter() - t2) * 1e3 if self.gt_patches is not None else 0.0,
        )


def _init_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers run beside the model: they must not compete for its cores
    if sys.platform.startswith("linux"):
        # Die with the parent: a worker of a killed run would otherwise block forever on its
        # full result pipe (it holds the read end too) and keep the run's stdout open.
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the line above
            os._exit(1)


def _as_is(item: Any) -> Any:
    return item


_F_SETPIPE_SZ = 1031  # linux/fcntl.h


@functools.cache
def _pipe_max_size() -> int:
    """The largest pipe an unprivileged process may ask for (``/proc/sys/fs/pipe-max-size``); 0 if unknown."""
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        return 0


class _WidePipeFork(multiprocessing.context.ForkContext):
    """The fork context, with its queues' pipes widened to the system's maximum (1 MiB by default).

    A worker's result (a few hundred KB of uint8 pixels) then crosses in one write instead
    of 64 KiB chunks, each of which needed the worker's feeder thread to wake up while
    the model kept the other core busy: measured on the 2-core VM, the model's wait per
    glamm_shapes image fell from ~6 to ~1.3 ms. Where the pipe cannot be widened
    (another OS, a lower limit) it stays as it is.
    """

    def Queue(self, maxsize: int = 0) -> Any:  # noqa: N802  (multiprocessing's name)
        queue = super().Queue(maxsize)
        if size := _pipe_max_size():
            import fcntl  # Linux only, like this class

            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(queue._reader.fileno(), _F_SETPIPE_SZ, size)  # pyright: ignore[reportAttributeAccessIssue]
        return queue


def load_images(
    model: GCGModel,
    pruner: Pruner | None,
    split: GrandfSplit,
    samples: Sequence[Sample],
    *,
    num_workers: int,
    lookahead: int = 2,
    gt_patches: Callable[[Sample], Any] | None = None,
) -> Iterator[LoadedImage]:
    """Load, preprocess and prepare ``samples`` in ``num_workers`` processes; yields them in order.

    Args:
        model: the model adapter (``preprocess``, ``grid``).
        pruner: the pruner (``prepare``), or None unpruned.
        split: the split the samples belong to.
        samples: the images to load, in the order they are yielded.
        num_workers: worker processes (0: in this process, on demand).
        lookahead: images kept in flight ahead of the consumer, in total over the workers
            (the runner passes two batches' worth).
        gt_patches: sample -> what the record needs of its GT (the runner passes
            :func:`altp.run.inference.sample_gt_patches`), or None.

    Yields:
        :class:`LoadedImage` per sample, ``wait_ms`` set to how long this generator's
        consumer waited for it.
    """
    dataset = _Images(split, samples, model.preprocess, None if pruner is None else pruner.prepare, model.grid,
                      gt_patches)
    options: dict[str, Any] = {}
    if num_workers > 0:
        options = {
            "worker_init_fn": _init_worker,
            "prefetch_factor": max(2, math.ceil(lookahead / num_workers)),
            # fork: the workers share the loaded model's preprocessing instead of unpickling it.
            "multiprocessing_context": (_WidePipeFork() if sys.platform.startswith("linux")
                                        else "fork" if sys.platform != "win32" else None),  # fmt: skip
        }
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_as_is,
                        **options)  # fmt: skip
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        item.wait_ms = (time.perf_counter() - t0) * 1e3
        yield item
