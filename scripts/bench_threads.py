"""Per-image time of a bare ``run.py`` with the default threads against hand settings, idle and under load.

    python scripts/bench_threads.py --images 12 --repeats 3

Runs ``run.py max_images=N`` (the embedded default: glamm_shapes, shapes val, ALTP keep 0.1, one
input worker) in a fresh run directory per call, with the defaults (``threads=auto``, passive
OpenMP) and with ``OMP_NUM_THREADS=1`` and ``=2`` set by hand, round-robin, ``--repeats`` times
each; idle, then beside a second CPU-bound process (a busy loop). Prints the median
``time_per_image_s`` of each and the ratio of the defaults to the best hand setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"defaults": {}, "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}, "OMP_NUM_THREADS=2": {"OMP_NUM_THREADS": "2"}}


def _one(extra: dict[str, str], images: int, tmp: Path, k: int) -> float:
    env = {key: v for key, v in os.environ.items() if key not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(extra)
    out = tmp / f"run{k}"
    subprocess.run([sys.executable, "run.py", f"max_images={images}", f"out_dir={out}", "evaluate=false"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)  # fmt: skip
    return float(json.loads((out / "metrics.json").read_text())["time_per_image_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    k = 0
    with tempfile.TemporaryDirectory() as tmp:
        for condition in ("idle", "load"):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "load" else None
            try:
                times: dict[str, list[float]] = {name: [] for name in SETTINGS}
                for _ in range(args.repeats):
                    for name, extra in SETTINGS.items():
                        k += 1
                        times[name].append(_one(extra, args.images, Path(tmp), k))
            finally:
                if hog is not None:
                    hog.kill()
            med = {name: statistics.median(ts) for name, ts in times.items()}
            best = min(med[n] for n in SETTINGS if n != "defaults")
            cells = "  ".join(f"{n} {1e3 * m:.0f} ms" for n, m in med.items())
            print(f"{condition}: {cells}  defaults / best hand setting = {med['defaults'] / best:.2f}x "
                  f"(load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
