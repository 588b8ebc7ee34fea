"""conf/ travels with the package: the wheel holds it, and the installed command runs away from the checkout.

The fast test builds the wheel (offline, from a copy of the sources) and reads it: every
config of ``conf/`` byte for byte under ``altp/conf/``, every module, the shipped weights and
tokenizers, and the ``altp-run`` entry point. The slow one installs that wheel, not
editable, into a fresh virtual environment that borrows this one's dependencies, and from
an empty folder runs ``altp-run --help`` and a one-image run on the tiny GLaMM, whose
prediction and record must equal the same run made from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from altp.configs import config_options

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("altp", "baselines", "eval")
# What building a wheel reads from a checkout.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "conf", *PACKAGES)
TINY_RUN = ("model=glamm_tiny", "data=synthetic", "max_images=1", "evaluate=false")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a clean copy (no stale build/ of the checkout)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=skip)
        else:
            shutil.copy2(path, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(out)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (whl,) = out.glob("altp_bench-*.whl")
    return whl


def _files(folder: Path, pattern: str = "*") -> list[Path]:
    return [p for p in folder.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts]


def test_wheel_holds_every_config_module_asset_and_the_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        configs = _files(ROOT / "conf", "*.yaml")
        assert len(configs) > 20
        for path in configs:
            packaged = f"altp/conf/{path.relative_to(ROOT / 'conf').as_posix()}"
            assert packaged in names, f"{packaged} missing from the wheel"
            assert zf.read(packaged) == path.read_bytes(), f"{packaged} differs from conf/"
        assert not {n for n in names if n.startswith("altp/conf/") and not n.endswith(".yaml")}
        for pkg in PACKAGES:
            for path in _files(ROOT / pkg, "*.py"):
                assert path.relative_to(ROOT).as_posix() in names, f"{path} missing from the wheel"
        for path in _files(ROOT / "altp" / "models" / "assets"):
            if path.suffix in (".json", ".safetensors", ".model"):
                assert path.relative_to(ROOT).as_posix() in names, f"{path} missing from the wheel"
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert "[console_scripts]" in text and "altp-run = altp.run.app:main" in text


def _venv_with_our_dependencies(where: Path) -> Path:
    """A fresh venv whose site-packages also sees this venv's (a plain path, so not our editable install)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_installed_command_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    python = _venv_with_our_dependencies(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ALTP_DATA_DIR"} | {"OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    where = subprocess.run([python, "-c", "import altp, altp.configs as c; print(altp.__file__); print(c.conf_dir())"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(tmp_path / "venv") for p in where), where

    command = tmp_path / "venv" / "bin" / "altp-run"
    helped = subprocess.run([command, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    for group in ("model", "pruner", "data"):  # the groups of the packaged conf/, as in the checkout
        assert f"{group}: {', '.join(config_options(group))}" in helped.stdout

    out = elsewhere / "run"
    ran = subprocess.run([command, *TINY_RUN, f"out_dir={out}"], cwd=elsewhere, env=env,
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert (out / "metrics.json").is_file() and (out / "run.log").is_file()

    # The same run from the checkout (editable install) writes the same prediction and record.
    from hydra import compose, initialize_config_dir

    from altp.run.runner import run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *TINY_RUN, f"data.root={elsewhere / 'data' / 'synthetic'}", f"out_dir={tmp_path / 'ref'}",
        ])  # fmt: skip
    run(cfg, choices={"model": "glamm_tiny", "data": "synthetic", "pruner": "altp"})
    (pred,) = (out / "predictions").glob("*.json")
    assert json.loads(pred.read_text()) == json.loads((tmp_path / "ref" / "predictions" / pred.name).read_text())
    strip = lambda rec: {k: v for k, v in rec.items() if k != "timings"}  # noqa: E731
    record = json.loads((out / "records" / pred.name).read_text())
    assert strip(record) == strip(json.loads((tmp_path / "ref" / "records" / pred.name).read_text()))
