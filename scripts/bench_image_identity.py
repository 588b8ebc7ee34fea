"""Time the per-image identities of a resume (altp/run/image_identity.py) on a split of N files.

    python scripts/bench_image_identity.py --files 7500 --kb 150

Writes N files of random bytes into a temporary folder, then times ``stale_images`` three times:
the first run (every file hashed), a resume with nothing changed (a ``stat`` per file) and a
resume after one file changed. The first number is paid once per run directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from altp.data.grandf import Sample
from altp.run.image_identity import stale_images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--files", type=int, default=7500)
    ap.add_argument("--kb", type=int, default=150, help="size of each file, KiB (SA-1B JPEGs: 150-600)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        images, out = Path(tmp) / "images", Path(tmp) / "run"
        images.mkdir()
        (out / "records").mkdir(parents=True)
        (out / "predictions").mkdir()
        samples = []
        for i in range(args.files):
            path = images / f"sa_{i:08d}.jpg"
            path.write_bytes(os.urandom(args.kb * 1024))
            samples.append(Sample(image_id=path.stem, file_name=path.name, image_path=path, height=1, width=1,
                                  caption="", labels=()))
        os.sync()
        total_mb = args.files * args.kb / 1024
        for what in ("first run (hash every file)", "resume, nothing changed", "resume, one file changed"):
            if what.endswith("one file changed"):
                samples[7].image_path.write_bytes(os.urandom(args.kb * 1024))
            t0 = time.perf_counter()
            stale = stale_images(samples, out)
            dt = time.perf_counter() - t0
            print(f"{what:32s} {dt:7.2f} s  ({args.files} files, {total_mb:.0f} MB, {len(stale)} stale)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
