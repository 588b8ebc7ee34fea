"""Throughput of the runner's own loop: images/s per pruner, keep, batch size, workers and ranks.

Runs :func:`altp.run.batches.run_images` -- the input pipeline (DataLoader workers decoding,
preprocessing and running ``pruner.prepare``), the batched model and the per-image
writes a real run does -- in this process, into a temporary folder, without scoring.
Per configuration: images/s over the timed images in steady state (the warm-up batch,
of other images, goes first through the same pipeline and the clock starts once it is
written: a 64-image run would otherwise charge the fill of the input pipeline, which a
run of thousands of images pays once, to 64 images), and per
image the mean of each stage from the records (input wait, vision, prefill, decode per
generated token, masks) and the peak memory (CUDA: peak allocated; CPU: the process's
peak RSS so far, which only grows). ``--ranks 1,2`` measures world sizes instead: one
``torchrun`` launch of this script per size, each rank one thread, its share of the
warm-up and timed images each: images/s over the slowest rank's time.

    .venv/bin/python scripts/bench_throughput.py --json results/throughput.json
    .venv/bin/python scripts/bench_throughput.py --pruners fastv,altp --batch-sizes 1,8 --workers 1 --repeats 3
    .venv/bin/python scripts/bench_throughput.py --pruners fastv,altp --batch-sizes 1,8 --batching static,continuous
    .venv/bin/python scripts/bench_throughput.py --pruners fastv --batch-sizes 8 --ranks 1,2
    .venv/bin/python scripts/bench_throughput.py --model glamm_full_random --data synthetic \\
        --set model.device=cuda model.max_new_tokens=32 --images 32   # what scripts/gpu_check.sh runs

Ratios (batch b over batch 1, ALTP over FastV at the same batch size, r ranks over 1)
are printed under the table; timing targets live here, not in the tests. On a shared
machine (a VM whose neighbours come and go) one timing can be 10-20 % off: ``--repeats
N`` times every configuration N times, round-robin over all of them (pruners included),
and keeps each one's median run; the ratios also give the median of the per-round ratios (two
configurations of one round ran minutes apart, so a slow spell falls on both).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from altp._device import synchronize  # noqa: E402
from altp.models.generate import DECODE_COUNTS  # noqa: E402
from altp.provenance import git_sha  # noqa: E402
from altp.run.batches import run_images  # noqa: E402
from altp.run.distributed import World, barrier, init_world, rank_share  # noqa: E402

STAGES = ("input_wait_ms", "vision_ms", "prefill_ms", "decode_ms_per_token", "mask_ms")


def _csv(kind: type) -> Any:
    return lambda text: [kind(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="glamm_shapes", help="conf/model/ name (default glamm_shapes)")
    ap.add_argument("--data", default="shapes_val", help="conf/data/ name (default shapes_val; synthetic: generated)")
    ap.add_argument("--data-root", default=None, help="data.root override (where a generated split lives)")
    ap.add_argument("--images", type=int, default=64, help="first N images of the split (default 64)")
    ap.add_argument("--pruners", type=_csv(str), default=["none", "fastv", "pdrop", "altp"])
    ap.add_argument("--keeps", type=_csv(float), default=[0.1])
    ap.add_argument("--batch-sizes", type=_csv(int), default=[1, 4, 8, 16])
    ap.add_argument("--workers", type=_csv(int), default=[1], help="num_workers values (default 1)")
    ap.add_argument("--batching", type=_csv(str), default=["continuous"],
                    help="batching modes to compare: continuous, static (default continuous)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the model's process (default 1)")
    ap.add_argument("--ranks", type=_csv(int), default=None,
                    help="world sizes to measure with torchrun, one thread per rank (e.g. 1,2)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="warm-up batches per rank before the clock starts, of images after the timed ones, "
                         "through the same input pipeline (default 1)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="time every configuration N times, round-robin over the batch sizes and worker counts "
                         "of a pruner, and report the run with the median images/s (default 1)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra Hydra overrides (model.device=cuda model.dtype=bfloat16 ...)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _compose(args: argparse.Namespace, pruner: str = "none", keep: float = 0.1) -> Any:
    from hydra import compose, initialize_config_dir

    overrides = [f"model={args.model}", f"data={args.data}", f"pruner={pruner}", f"keep={keep}", *args.set]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.data == "synthetic" and not any(s.startswith("data.generate.n_images") for s in args.set):
        # the timed images, then the warm-up batches' (other images than the timed ones)
        warm = args.warmup * max(args.batch_sizes) * max(args.ranks or [int(os.environ.get("WORLD_SIZE", 1))])
        overrides.append(f"data.generate.n_images={args.images + warm}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_peak_allocated_mb"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss_mb"


def _stage_means(records: list[dict]) -> dict[str, float]:
    ok = [r for r in records if r.get("error") is None]
    mean = lambda key: sum(r["timings"].get(key, 0.0) for r in ok) / max(len(ok), 1)  # noqa: E731
    tokens = sum(r["new_tokens"] for r in ok)
    out = {k: mean(k) for k in ("input_wait_ms", "vision_ms", "prefill_ms", "mask_ms", "prep_ms")}
    out["decode_ms_per_token"] = sum(r["timings"].get("decode_ms", 0.0) for r in ok) / max(tokens, 1)
    out["new_tokens"] = tokens / max(len(ok), 1)
    return out


def _slowest(world: World, seconds: float) -> float:
    """The largest of every rank's ``seconds`` (this rank's own when alone)."""
    if not world.distributed:
        return seconds
    import torch.distributed as dist

    every: list[Any] = [None] * world.size
    dist.all_gather_object(every, seconds)
    return max(every)


def measure(model: Any, pruner: Any, split: Any, samples: list, *, batch_size: int, workers: int,
            warm_samples: list | None = None, world: World | None = None,
            batching: str = "continuous") -> dict[str, Any]:  # fmt: skip
    """One configuration through :func:`altp.run.batches.run_images` on this rank's share of ``samples``.

    The warm-up images (this rank's share of ``warm_samples``, other images than ``samples``)
    go first through the same call, so the same input pipeline: the clock starts when they
    are written, with the model warmed up for this batch size and the workers already
    running ahead, as through most of a long run. Images/s = the timed images over the
    slowest rank's time from there to its last image written. Slot utilisation = the
    live row-steps of the decoding steps run from there over (batch size x those steps);
    ``answer_tokens``: min, median, 90th percentile and max of the timed images' answer lengths.
    """
    world = world or World()
    device = torch.device(model.device)
    warm = rank_share(list(warm_samples or []), world)
    timed = rank_share(samples, world)
    start = 0.0

    def start_after_warm_up(written: int) -> None:
        nonlocal start
        if written == len(warm):  # the warm-up is whole batches (_warm_up): this count is hit exactly
            synchronize(device)
            start = time.perf_counter()
            DECODE_COUNTS.reset()

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        folders = {"pred_dir": Path(tmp) / "predictions", "rec_dir": Path(tmp) / "records"}
        for d in folders.values():
            d.mkdir()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        barrier(world)
        start = time.perf_counter()  # (no warm-up images: from here)
        DECODE_COUNTS.reset()
        records = run_images(model, pruner, split, warm + timed, seed=0, batch_size=batch_size, num_workers=workers,
                             desc=f"{getattr(pruner, 'name', 'none')} b{batch_size}", on_written=start_after_warm_up,
                             batching=batching, **folders)  # fmt: skip
        synchronize(device)
        seconds = _slowest(world, time.perf_counter() - start)
        barrier(world)
    peak, kind = _peak_memory(device)
    ours = [records[s.image_id] for s in timed]
    lengths = sorted(int(r["new_tokens"]) for r in ours if r.get("error") is None)
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))] if lengths else 0  # noqa: E731
    counts = DECODE_COUNTS
    return {"images": len(samples), "warmup_images": len(warm_samples or []), "seconds": seconds,
            "images_per_s": len(samples) / seconds, **_stage_means(ours), "peak_memory_mb": peak,
            "peak_memory_kind": kind, "slot_utilisation": counts.row_steps / max(batch_size * counts.steps, 1),
            "decode_steps": counts.steps,
            "answer_tokens": {"min": pick(0.0), "median": pick(0.5), "p90": pick(0.9), "max": pick(1.0)}}  # fmt: skip


def _warm_up(extra: list, batches: int, batch_size: int, world: World) -> list:
    """``batches`` whole batches per rank of the split's images after the timed ones (fewer if it is short)."""
    per_round = batch_size * world.size
    n = min(batches * per_round, len(extra) // per_round * per_round)
    if n < batches * per_round:
        print(f"warning: the split has {len(extra)} images beyond the timed ones, "
              f"so {n // per_round} warm-up batch(es) instead of {batches}", file=sys.stderr)  # fmt: skip
    return extra[:n]


def bench(args: argparse.Namespace, world: World | None = None) -> list[dict[str, Any]]:
    """Every (pruner, keep, batch size, workers) of ``args`` on one model; rows in that order."""
    world = world or World()
    from hydra.utils import instantiate

    import altp.pruners  # noqa: F401  (registers the built-in pruners)
    from altp.run.runner import model_on_rank, split_on_ranks

    torch.set_num_threads(args.threads)
    base = _compose(args)
    split = split_on_ranks(base, world)  # as a run: rank 0 generates a generated split first
    every = list(split)
    samples, extra = every[: args.images], every[args.images :]
    model = model_on_rank(base, world)  # as a run: cuda:LOCAL_RANK on each rank of a CUDA run
    cells = [(name, keep) for name in args.pruners for keep in (args.keeps if name != "none" else args.keeps[:1])]
    pruners = {cell: instantiate(_compose(args, *cell).pruner) for cell in cells}
    configs = [(cell, b, w, m) for cell in cells for b in args.batch_sizes for w in args.workers
               for m in (args.batching if b > 1 else args.batching[:1])]  # batch 1: the modes are the same
    runs: dict[Any, list[dict[str, Any]]] = {c: [] for c in configs}
    # Round-robin over every configuration: a slow spell of a shared machine falls on them alike.
    for _ in range(max(1, args.repeats)):
        for config in configs:
            cell, batch_size, workers, mode = config
            runs[config].append(measure(model, pruners[cell], split, samples, batch_size=batch_size, workers=workers,
                                        warm_samples=_warm_up(extra, args.warmup, batch_size, world), world=world,
                                        batching=mode))  # fmt: skip
            if world.is_main:  # each timing as it comes (the table under them has the medians)
                print(_line({**_config_row(*cell, batch_size, workers, world, mode), **runs[config][-1]}), flush=True)
    rows = []
    for ((name, keep), batch_size, workers, mode), timed in runs.items():
        ranked = sorted(timed, key=lambda r: r["images_per_s"])
        row = _config_row(name, keep, batch_size, workers, world, mode)
        row.update(ranked[(len(ranked) - 1) // 2])  # the median run (the lower one of an even count)
        row["images_per_s_runs"] = [r["images_per_s"] for r in timed]
        rows.append(row)
    return rows


def _config_row(name: str, keep: float, batch_size: int, workers: int, world: World,
                batching: str = "continuous") -> dict[str, Any]:  # fmt: skip
    return {"pruner": name, "keep": keep if name != "none" else 1.0, "batch_size": batch_size,
            "batching": batching if batch_size > 1 else "-", "workers": workers, "ranks": world.size}  # fmt: skip


def _ranks(args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Each world size of ``--ranks`` as one torchrun launch of this script (one thread per rank)."""
    rows = []
    for size in args.ranks:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={size}",
                   str(Path(__file__).resolve()), *_without(argv, "--ranks", "--json", "--threads"), "--threads", "1",
                   "--rank-worker", "--json", str(out)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            subprocess.run(cmd, check=True, env=env, cwd=ROOT)
            rows += json.loads(out.read_text())["rows"]
    return rows


def _without(argv: list[str], *options: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        if any(a.startswith(f"{o}=") for o in options):
            continue
        out.append(a)
    return out


HEADER = (f"{'pruner':<7} {'keep':>5} {'batch':>5} {'mode':>6} {'wrk':>3} {'rk':>2} {'img/s':>7} {'slots':>5} "
          f"{'answer len':>14} {'wait':>7} {'vision':>7} {'prefill':>8} {'dec/tok':>8} {'masks':>7} {'prep':>7} "
          f"{'peak MB':>8}")  # fmt: skip


def _line(row: dict[str, Any]) -> str:
    a = row.get("answer_tokens") or {}
    lens = f"{a.get('min', 0)}/{a.get('median', 0)}/{a.get('p90', 0)}/{a.get('max', 0)}"
    mode = {"continuous": "cont", "static": "static"}.get(row.get("batching", "-"), "-")
    return (f"{row['pruner']:<7} {row['keep']:>5} {row['batch_size']:>5} {mode:>6} {row['workers']:>3} "
            f"{row['ranks']:>2} {row['images_per_s']:>7.2f} {row.get('slot_utilisation', 0.0):>5.2f} {lens:>14} "
            f"{row['input_wait_ms']:>7.1f} {row['vision_ms']:>7.1f} "
            f"{row['prefill_ms']:>8.1f} {row['decode_ms_per_token']:>8.2f} {row['mask_ms']:>7.1f} "
            f"{row['prep_ms']:>7.1f} {row['peak_memory_mb']:>8.0f}")  # fmt: skip


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """The ratios the acceptance targets name, for whatever the rows hold."""
    key = lambda r: (r["pruner"], r["keep"], r["batch_size"], r.get("batching", "-"), r["workers"], r["ranks"])  # noqa: E731
    by = {key(r): r["images_per_s"] for r in rows}
    runs = {key(r): r.get("images_per_s_runs") or [] for r in rows}

    def paired(a: tuple, b: tuple) -> str:
        """The median of the per-round ratios (round i of both ran minutes apart), when there are several."""
        pairs = sorted(x / y for x, y in zip(runs[a], runs[b], strict=False) if y)
        return f" (per round: median {pairs[(len(pairs) - 1) // 2]:.2f}x, {pairs[0]:.2f}-{pairs[-1]:.2f}x)" \
            if len(pairs) > 1 else ""  # fmt: skip

    out = []
    for (p, k, b, m, w, n), ips in by.items():
        if b != 1 and (p, k, 1, "-", w, n) in by:
            one = (p, k, 1, "-", w, n)
            out.append(f"{p} keep={k} workers={w} ranks={n}: batch {b} {m} / batch 1 = "
                       f"{ips / by[one]:.2f}x{paired((p, k, b, m, w, n), one)}")  # fmt: skip
        if m == "continuous" and (p, k, b, "static", w, n) in by:
            st = (p, k, b, "static", w, n)
            out.append(f"{p} keep={k} batch={b} workers={w} ranks={n}: continuous / static = "
                       f"{ips / by[st]:.2f}x{paired((p, k, b, m, w, n), st)}")  # fmt: skip
        if p == "altp" and ("fastv", k, b, m, w, n) in by:
            fv = ("fastv", k, b, m, w, n)
            out.append(f"keep={k} batch={b} {m} workers={w} ranks={n}: altp / fastv = "
                       f"{ips / by[fv]:.2f}x{paired((p, k, b, m, w, n), fv)}")  # fmt: skip
        if n != 1 and (p, k, b, m, w, 1) in by:
            out.append(f"{p} keep={k} batch={b} {m} workers={w}: {n} ranks / 1 rank = {ips / by[(p, k, b, m, w, 1)]:.2f}x")
    return out


def _machine(cuda: bool) -> str:
    """What ran the benchmark, in words: the GPU, or the CPU model and the cores this process may use."""
    if cuda:
        return torch.cuda.get_device_name()
    name = "unknown CPU"
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    world = init_world(next((s.split("=", 1)[1] for s in args.set if s.startswith("model.device=")), "cpu")) \
        if args.rank_worker else World()  # fmt: skip
    if world.is_main:
        print(HEADER, flush=True)
    rows = _ranks(args, argv) if args.ranks else bench(args, world)
    if not world.is_main:
        return rows
    device = rows and ("cuda" if "cuda" in rows[0]["peak_memory_kind"] else "cpu")
    info = {"model": args.model, "data": args.data, "images": args.images, "threads": args.threads,
            "overrides": args.set, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "machine": _machine(device == "cuda"), "measured": time.strftime("%Y-%m-%d", time.gmtime()),
            "git_sha": git_sha(), "command": " ".join(["scripts/bench_throughput.py", *argv]),
            "torch": torch.__version__, "rows": rows}  # fmt: skip
    if not args.rank_worker:
        print("\n" + HEADER)
        for row in rows:
            print(_line(row))
        for line in ratios(rows):
            print(line)
        info["ratios"] = ratios(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
