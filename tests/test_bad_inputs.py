"""A catalogue of bad inputs and damaged run directories, and what each one gets.

Every case runs in-process the way ``run.py`` / ``python -m eval.gcg`` do (the
runner inside :func:`altp.run.cli.one_line_errors`) and asserts:

* the exit code: 2 for a refusal, 0 where the input is handled (a recorded
  per-image failure, a re-run image, a converted image);
* a refusal is ONE line on stderr that names the thing to change (key, file,
  entry); nothing ends in a traceback (an unexpected exception fails the case);
* the outputs of the images that were fine are unchanged (bytes and mtime of a
  finished run directory the case starts from; the reference predictions for
  images run again).

Classes: config values, the command line (Hydra composition), GT files, image
files, prediction files (eval.gcg), resume states of a run directory. The model is
``glamm_tiny`` on an 8-image synthetic split; one finished run is shared (copied
per case), so the whole catalogue takes seconds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image

from altp.data.grandf import GrandfSplit
from altp.run.cli import check_overrides, one_line_errors
from altp.run.runner import run

ROOT = Path(__file__).resolve().parents[1]
N = 8
BASE = ("model=glamm_tiny", "data=synthetic", f"data.generate.n_images={N}", "pruner=fastv", "keep=0.25",
        "evaluate=false")  # fmt: skip


def _cfg(data_root: Path, out: Path, *overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*BASE, f"data.root={data_root}", f"out_dir={out}",
                                                        *overrides], return_hydra_config=hydra)  # fmt: skip


def _call(fn: Callable[[], Any], capsys) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``fn`` run as run.py runs the runner."""
    capsys.readouterr()
    try:
        with one_line_errors():
            fn()
    except SystemExit as exc:
        return int(exc.code), capsys.readouterr().err.strip().splitlines()
    return 0, capsys.readouterr().err.strip().splitlines()


def _refused(fn: Callable[[], Any], capsys, *needles: str) -> str:
    code, lines = _call(fn, capsys)
    assert code == 2 and len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file of a run directory's predictions/ and records/."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for sub in ("predictions", "records") for p in sorted((folder / sub).glob("*"))}  # fmt: skip


def _no_timings(path: Path) -> dict:
    return {**json.loads(path.read_text()), "timings": None}


# --------------------------------------------------------------------------- shared state


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("split")


@pytest.fixture(scope="module")
def finished(data_root: Path, tmp_path_factory) -> Path:
    """A finished run every case starts from (copied, never modified)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = _cfg(data_root, out)
    run(cfg, choices={"model": "glamm_tiny", "data": "synthetic", "pruner": "fastv"})
    assert len(list((out / "predictions").glob("*.json"))) == N
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)  # copy2 keeps mtimes: an untouched file keeps its mtime
    return out


@pytest.fixture(scope="module")
def ids(finished: Path) -> list[str]:
    """Image ids by file name."""
    return [p.stem for p in sorted((finished / "predictions").glob("*.json"))]


@pytest.fixture(scope="module")
def order(data_root: Path, finished: Path) -> list[str]:
    """Image ids in split order."""
    return [s.image_id for s in GrandfSplit(data_root / "annotations", "val", data_root / "images")]


# --------------------------------------------------------------------------- config values


CONFIG_CASES = [
    ("keep=1.5", "keep must be in (0, 1]"),
    ("keep=0", "keep must be in (0, 1]"),
    ("keep=nan", "keep must be in (0, 1]"),
    ("keep=abc", "keep must be a number in (0, 1]"),
    ("keep=0.001", "keep=0.001 keeps 0 of 576 visual tokens; use keep >= 0.001736"),
    ("seed=abc", "seed must be an integer >= 0"),
    ("seed=-1", "seed must be an integer >= 0"),
    ("seed=1.5", "seed must be an integer >= 0"),
    ("max_images=0", "max_images must be an integer >= 1 or null"),
    ("max_images=-1", "max_images must be an integer >= 1 or null"),  # used to score all but the last image
    ("max_images=abc", "max_images must be an integer >= 1 or null"),
    ("continue_on_error=maybe", "continue_on_error must be true or false"),
    ("evaluate=2", "evaluate must be true or false"),
    ("batch_size=0", "batch_size must be an integer >= 1"),
    ("batch_size=1.5", "batch_size must be an integer >= 1"),
    ("batch_size=abc", "batch_size must be an integer >= 1"),
    ("batching=dynamic", "batching must be one of continuous, static, got 'dynamic'"),
    ("num_workers=-1", "num_workers must be an integer >= 0"),
    ("num_workers=two", "num_workers must be an integer >= 0"),
    ("pruner.layer=40", "pruning layer 40 >= num_layers 32"),
    ("pruner=pdrop pruner.lambda_=0.01 pruner.layers=[2,8,16]", "leaves 0 visual tokens at layer 16; raise lambda_"),
    ("evaluate=true text_encoder=/nonexistent", "text_encoder", "/nonexistent"),
]


@pytest.mark.parametrize(("overrides", "needle"), [c[:2] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value_is_refused_before_any_image(overrides, needle, data_root, run_copy, capsys) -> None:
    before = _state(run_copy)
    cfg = _cfg(data_root, run_copy, *overrides.split())
    _refused(lambda: run(cfg), capsys, needle)
    assert _state(run_copy) == before


def test_text_encoder_folder_without_a_model_is_refused(data_root, run_copy, tmp_path, capsys) -> None:
    (tmp_path / "enc").mkdir()
    cfg = _cfg(data_root, run_copy, "evaluate=true", f"text_encoder={tmp_path / 'enc'}")
    _refused(lambda: run(cfg), capsys, "text_encoder=", "has no config.json")


def test_out_dir_below_a_file_is_refused(data_root, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    cfg = _cfg(data_root, tmp_path / "file" / "run")
    _refused(lambda: run(cfg), capsys, "out_dir=", "lies below", "is a file, not a folder")


# --------------------------------------------------------------------------- the command line (before Hydra)


CLI_CASES = [
    (["pruner=nope"], "unknown pruner 'nope'; choose one of: altp"),
    (["model=nope"], "unknown model 'nope'"),
    (["pruner.alphaa=3"], "pruner.alphaa"),
    (["keep=[0.1"], "cannot parse override 'keep=[0.1'"),
    (["pruner=fastv,altp"], "add -m (--multirun)"),
    (["-m", "keep=0.1,2"], "keep must be in (0, 1]"),
    (["seed=abc"], "seed must be an integer >= 0"),
    (["+foo=${oops}"], "Interpolation key 'oops' not found"),
    (["max_images=-1"], "max_images must be an integer >= 1 or null"),
    (["batch_size=0"], "batch_size must be an integer >= 1"),
    (["-m", "num_workers=0,-2"], "num_workers must be an integer >= 0"),
]


@pytest.mark.parametrize(("argv", "needle"), CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_bad_command_line_is_one_line_before_hydra_starts(argv, needle, data_root, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    args = ["model=glamm_tiny", "data=synthetic", f"data.root={data_root}", f"out_dir={out}", *argv]
    _refused(lambda: check_overrides(args), capsys, needle)
    assert not out.exists()


def test_out_dir_below_a_file_is_refused_before_hydra_makes_it(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    _refused(lambda: check_overrides(["model=glamm_tiny", f"out_dir={tmp_path}/file/run"]), capsys,
             "lies below", "is a file")  # fmt: skip
    assert (tmp_path / "file").read_text() == "x"


def test_good_command_line_passes(data_root, tmp_path, capsys) -> None:
    argv = ["-m", "model=glamm_tiny", "data=synthetic", "keep=0.1,0.25", f"out_dir={tmp_path}/x"]
    assert _call(lambda: check_overrides(argv), capsys) == (0, [])


# --------------------------------------------------------------------------- GT files


def _edit(name: str, fn: Callable[[dict], Any]) -> Callable[[Path], None]:
    def apply(gt: Path) -> None:
        path = gt / f"val_gcg_coco_{name}_gt.json"
        data = json.loads(path.read_text())
        fn(data)
        path.write_text(json.dumps(data))

    return apply


def _write(name: str, raw: bytes) -> Callable[[Path], None]:
    return lambda gt: (gt / f"val_gcg_coco_{name}_gt.json").write_bytes(raw)


def _set(d: dict, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for key in head:
        d = d[int(key)] if isinstance(d, list) else d[key]
    d[int(last) if isinstance(d, list) else last] = value


def _dup_mask_id(d: dict) -> None:
    d["annotations"][1]["id"] = d["annotations"][0]["id"]


def _dup_image(d: dict) -> None:
    d["images"].append(dict(d["images"][0]))


def _empty(d: dict) -> None:
    d["images"], d["annotations"] = [], []


def _polygon(d: dict) -> None:
    d["annotations"][0]["segmentation"] = [[10.0, 10.0, 50.0, 10.0, 50.0, 50.0]]


def _drop_mask(d: dict) -> None:
    del d["annotations"][0]


GT_CASES = {
    "not UTF-8": (_write("caption", '{"images": [], "annotations": [], "x": "é"}'.encode("latin-1")),
                  "val_gcg_coco_caption_gt.json: not UTF-8"),
    "corrupt JSON": (_write("mask", b'{"images": ['), "val_gcg_coco_mask_gt.json: corrupt JSON"),
    "JSON array": (_write("caption", b"[]"), "expected a JSON object"),
    "images null": (_edit("caption", lambda d: _set(d, "images", None)), "'images' must be a list"),
    "non-integer height": (_edit("caption", lambda d: _set(d, "images.0.height", 12.5)),
                           "height must be a positive integer, got 12.5"),
    "height string": (_edit("caption", lambda d: _set(d, "images.0.height", "400")),
                      "height must be a positive integer, got '400'"),
    "float image id": (_edit("caption", lambda d: _set(d, "images.0.id", 1.5)), "image id 1.5 must be a string"),
    "duplicate image id": (_edit("caption", _dup_image), "duplicate image ids"),
    "duplicate mask annotation id": (_edit("mask", _dup_mask_id), "duplicate mask annotation ids 1"),
    "polygon segmentation": (_edit("mask", _polygon), "mask annotation 1", "a polygon"),
    "undecodable RLE": (_edit("mask", lambda d: _set(d, "annotations.0.segmentation.counts", "zzzz")),
                        "mask annotation 1", "counts does not decode"),
    "RLE of another size": (_edit("mask", lambda d: _set(d, "annotations.0.segmentation.size", [4, 4])),
                            "counts does not decode"),
    "caption not a string": (_edit("caption", lambda d: _set(d, "annotations.0.caption", None)),
                             "caption must be a string"),
    "labels not strings": (_edit("caption", lambda d: _set(d, "annotations.0.labels", [1])),
                           "labels a list of strings"),
    "category 2": (_edit("mask", lambda d: _set(d, "annotations.0.category_id", 2)), "category_id is 2"),
    "empty split": (lambda gt: (_edit("caption", _empty)(gt), _edit("mask", _empty)(gt)),
                    "the split has no images"),
    "labels != masks": (_edit("mask", _drop_mask), "labels count != masks count"),
    "missing GT file": (lambda gt: (gt / "val_gcg_coco_mask_gt.json").unlink(), "missing GT file"),
}


@pytest.mark.parametrize("case", list(GT_CASES))
def test_bad_gt_file_is_refused_naming_file_and_entry(case, data_root, run_copy, tmp_path, capsys) -> None:
    mutate, *needles = GT_CASES[case]
    gt = tmp_path / "gt"
    shutil.copytree(data_root / "annotations", gt)
    mutate(gt)
    before = _state(run_copy)
    cfg = _cfg(data_root, run_copy, "~data.generate", f"data.gt_dir={gt}")
    line = _refused(lambda: run(cfg), capsys, *needles)
    assert str(gt) in line or "missing" in line
    assert _state(run_copy) == before


EARLY_ERRORS = {  # errors found before the first image: (overrides, text of the one line)
    "missing GT folder": (lambda tmp: ("~data.generate", f"data.gt_dir={tmp / 'no_gt'}"), "no_gt"),
    "missing weights": (lambda tmp: ("model=glamm", f"model.checkpoint_dir={tmp / 'no_ckpt'}"), "no_ckpt"),
}


@pytest.mark.parametrize("case", list(EARLY_ERRORS))
def test_early_error_leaves_no_run_folder(case, data_root, tmp_path, capsys, monkeypatch) -> None:
    overrides, needle = EARLY_ERRORS[case]
    monkeypatch.chdir(tmp_path)
    out = Path("runs/m/d/fastv/keep0.25")  # relative, as the default runs/<model>/<data>/<cell>
    out.mkdir(parents=True)
    (out / "run.log").write_text("")  # what Hydra leaves before the runner starts
    (tmp_path / "runs" / "other").mkdir()  # a sibling run's folder stays
    _refused(lambda: run(_cfg(data_root, out, *overrides(tmp_path))), capsys, needle)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other"]
    # An absolute out_dir: the run folder goes, its parents (maybe the user's) stay.
    absolute = tmp_path / "abs" / "keep0.25"
    absolute.mkdir(parents=True)
    _refused(lambda: run(_cfg(data_root, absolute, *overrides(tmp_path))), capsys, needle)
    assert (tmp_path / "abs").is_dir() and not absolute.exists()


def test_early_error_leaves_a_started_run_folder_alone(data_root, run_copy, tmp_path, capsys) -> None:
    before = sorted(p.name for p in run_copy.iterdir())
    _refused(lambda: run(_cfg(data_root, run_copy, "~data.generate", f"data.gt_dir={tmp_path / 'no_gt'}")),
             capsys, "no_gt")  # fmt: skip
    assert sorted(p.name for p in run_copy.iterdir()) == before


# --------------------------------------------------------------------------- image files


def _sixteen_bit(path: Path) -> None:
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 256 + 100).save(path, format="PNG")  # high byte = the 8-bit grey value


IMAGE_CASES: dict[int, tuple[str, Callable[[Path], None], str | None]] = {
    1: ("truncated JPEG", lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot decode"),
    2: ("not an image", lambda p: p.write_text("hello"), "cannot decode"),
    3: ("missing file", lambda p: p.unlink(), "not found"),
    4: ("other size", lambda p: Image.open(p).resize((40, 30)).save(p, format="JPEG"), "but the GT says"),
    5: ("16-bit PNG", _sixteen_bit, None),
    6: ("float TIFF", lambda p: Image.fromarray(np.zeros((Image.open(p).height, Image.open(p).width),
                                                          np.float32)).save(p, format="TIFF"),
        "has no defined 8-bit range"),
    7: ("RGBA PNG", lambda p: Image.open(p).convert("RGBA").save(p, format="PNG"), None),
}


@pytest.fixture(scope="module")
def image_run(data_root: Path, finished: Path, tmp_path_factory) -> tuple[Path, Path, dict]:
    """One run over a copy of the images with images 1-7 damaged or in other modes."""
    base = tmp_path_factory.mktemp("images")
    images = base / "images"
    shutil.copytree(data_root / "images", images)
    split = GrandfSplit(data_root / "annotations", "val", images)
    for k, (_, mutate, _) in IMAGE_CASES.items():
        mutate(split[k].image_path)
    cfg = _cfg(data_root, base / "run", f"data.image_dir={images}")
    metrics: dict = {}
    with one_line_errors():
        metrics.update(run(cfg))
    return base / "run", images, metrics


@pytest.mark.parametrize("k", list(IMAGE_CASES), ids=[c[0] for c in IMAGE_CASES.values()])
def test_bad_image_is_a_recorded_failure_or_converted(k, image_run, finished, order) -> None:
    out, _, metrics = image_run
    _, _, needle = IMAGE_CASES[k]
    rec = json.loads((out / "records" / f"{order[k]}.json").read_text())
    if needle is None:  # converted correctly, not a failure
        assert rec["error"] is None and order[k] not in metrics["failed_images"]
    else:
        assert needle in rec["error"] and order[k] in metrics["failed_images"]
        pred = json.loads((out / "predictions" / f"{order[k]}.json").read_text())
        assert pred["caption"] == "" and pred["pred_masks"] == []
    # The images that were fine (0, and 7: RGBA of the very pixels) predict exactly as before.
    for fine in (0, 7):
        assert (out / "predictions" / f"{order[fine]}.json").read_bytes() == (
            finished / "predictions" / f"{order[fine]}.json").read_bytes()


def test_sixteen_bit_png_loads_as_its_grey_not_white(image_run, data_root) -> None:
    _, images, _ = image_run
    split = GrandfSplit(data_root / "annotations", "val", images)
    got = np.asarray(split.load_image(split[5]))
    want = np.asarray(Image.open(data_root / "images" / split[5].file_name).convert("L"))
    assert got.shape == (*want.shape, 3) and (got == want[..., None]).all()  # oracle: the 8-bit grey
    assert got.mean() < 250


def test_fixing_image_dir_reruns_exactly_the_failed_images(image_run, finished, data_root, tmp_path,
                                                           order) -> None:  # fmt: skip
    out0, _, metrics = image_run
    out = tmp_path / "run"
    shutil.copytree(out0, out)
    failed = sorted(metrics["failed_images"])
    assert len(failed) == 5 and metrics["n_failed"] == 5
    before = _state(out)
    cfg = _cfg(data_root, out)  # the original image_dir
    fixed = run(cfg)
    assert fixed["n_failed"] == 0 and fixed["failed_images"] == []
    after = _state(out)
    changed = sorted(Path(k).stem for k in after if after[k] != before.get(k))
    # Each failed image's record and prediction, and those of the two converted ones (16-bit and
    # RGBA PNG): their predictions came from other files than the original JPEGs. Nothing else.
    assert changed == sorted((failed + [order[5], order[7]]) * 2)
    for image_id in failed:
        assert (out / "predictions" / f"{image_id}.json").read_bytes() == (
            finished / "predictions" / f"{image_id}.json").read_bytes()


# --------------------------------------------------------------------------- prediction files (eval.gcg)


@pytest.fixture
def pred_copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "preds"
    shutil.copytree(finished / "predictions", out)
    return out


def _pred_edit(fn: Callable[[dict], Any]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        fn(data)
        path.write_text(json.dumps(data))

    return apply


def _with_mask(data: dict, mask: Any) -> None:
    data["pred_masks"] = [mask]
    data["phrases"] = ["x"]


PRED_CASES = {
    "truncated JSON": (lambda p: p.write_bytes(p.read_bytes()[:20]), "corrupt JSON"),
    "not UTF-8": (lambda p: p.write_bytes(b'{"caption": "\xe9"}'), "not UTF-8"),
    "missing phrases": (_pred_edit(lambda d: d.pop("phrases")), "missing key(s) ['phrases']"),
    "undecodable RLE": (_pred_edit(lambda d: _with_mask(d, {"size": [400, 736], "counts": "zzzz"})),
                        "pred_masks[0]: counts does not decode"),
    "RLE with too few runs": (_pred_edit(lambda d: _with_mask(d, {"size": [400, 736], "counts": "52"})),
                              "pred_masks[0]: counts does not decode"),
    "polygon mask": (_pred_edit(lambda d: _with_mask(d, [[1, 2, 3, 4, 5, 6]])), "'pred_masks' must be a list of RLE"),
    "image_id of another image": (_pred_edit(lambda d: d.update(image_id="sa_00000000")),
                                  "its image_id is 'sa_00000000'"),
}


@pytest.fixture
def shared_meteor(monkeypatch, meteor) -> None:
    """eval.gcg.main starts a METEOR process per call; the cases share the session's one."""
    import eval.gcg

    monkeypatch.setattr(eval.gcg, "Meteor", lambda: meteor)


def _gcg(capsys, *argv: str) -> tuple[int, list[str]]:
    from eval.gcg import main

    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", list(PRED_CASES))
def test_bad_prediction_file_is_one_line_exit_2(case, pred_copy, data_root, ids, capsys, shared_meteor,
                                                tmp_path) -> None:  # fmt: skip
    mutate, needle = PRED_CASES[case]
    target = pred_copy / f"{ids[3]}.json"
    mutate(target)
    code, lines = _gcg(capsys, "--pred-dir", str(pred_copy), "--gt-dir", str(data_root / "annotations"),
                       "--split", "val", "--text-encoder", "minilm", "--json", str(tmp_path / "m.json"))
    assert code == 2 and len(lines) == 1 and needle in lines[0] and target.name in lines[0], lines
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(("what", "needle"), [("missing", "does not exist; check --pred-dir"),
                                              ("empty", "holds no prediction for any of the 8 images")])
def test_wrong_prediction_folder_is_one_line_exit_2(what, needle, tmp_path, data_root, capsys,
                                                    shared_meteor) -> None:  # fmt: skip
    folder = tmp_path / "preds"
    if what == "empty":
        folder.mkdir()
    code, lines = _gcg(capsys, "--pred-dir", str(folder), "--gt-dir", str(data_root / "annotations"),
                       "--split", "val", "--text-encoder", "minilm")
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines


def test_unknown_text_encoder_in_eval_is_one_line(pred_copy, data_root, capsys) -> None:
    code, lines = _gcg(capsys, "--pred-dir", str(pred_copy), "--gt-dir", str(data_root / "annotations"),
                       "--split", "val", "--text-encoder", "/nonexistent")
    assert code == 2 and len(lines) == 1 and "/nonexistent" in lines[0]


# --------------------------------------------------------------------------- resume states


def _first(folder: Path, sub: str) -> Path:
    return sorted((folder / sub).glob("*.json"))[2]


RERUN_CASES: dict[str, Callable[[Path], Path]] = {
    "truncated prediction": lambda d: _truncate(_first(d, "predictions")),
    "truncated record": lambda d: _truncate(_first(d, "records")),
    "record missing": lambda d: _unlink(_first(d, "records")),
    "prediction missing (torn write)": lambda d: _unlink(_first(d, "predictions")),
    "record of another image": lambda d: _rewrite(_first(d, "records"), image_id="sa_00000000"),
    "record without its fields": lambda d: _rewrite(_first(d, "records"), drop="timings"),
    "prediction naming another image": lambda d: _rewrite(_first(d, "predictions"), image_id="sa_00000000"),
    "prediction with an undecodable mask": lambda d: _rewrite(
        _first(d, "predictions"), pred_masks=[{"size": [1, 1], "counts": "zz"}], phrases=["x"]),
    "failed record (retried)": lambda d: _rewrite(_first(d, "records"), error="ImageLoadError: was broken"),
}


def _truncate(p: Path) -> str:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return p.stem


def _unlink(p: Path) -> str:
    p.unlink()
    return p.stem


def _rewrite(p: Path, drop: str | None = None, **fields: Any) -> str:
    data = json.loads(p.read_text())
    data.pop(drop, None)
    data.update(fields)
    p.write_text(json.dumps(data))
    return p.stem


@pytest.mark.parametrize("case", list(RERUN_CASES))
def test_damaged_image_is_run_again_and_nothing_else(case, data_root, finished, run_copy, capsys) -> None:
    image_id = RERUN_CASES[case](run_copy)
    before = _state(run_copy)
    cfg = _cfg(data_root, run_copy)
    code, _ = _call(lambda: run(cfg), capsys)
    assert code == 0
    after = _state(run_copy)
    changed = {Path(k).stem for k in after if after[k] != before.get(k)}
    assert changed == {image_id}  # only the damaged image was run again
    assert (run_copy / "predictions" / f"{image_id}.json").read_bytes() == (
        finished / "predictions" / f"{image_id}.json").read_bytes()
    assert _no_timings(run_copy / "records" / f"{image_id}.json") == _no_timings(
        finished / "records" / f"{image_id}.json")


def test_leftover_temp_files_are_removed_and_nothing_rerun(data_root, run_copy, capsys) -> None:
    (run_copy / "predictions" / ".sa_1.abc.tmp").write_text("{")
    (run_copy / "records" / ".sa_1.json.x.tmp").write_text("{")
    before = _state(run_copy)
    assert _call(lambda: run(_cfg(data_root, run_copy)), capsys)[0] == 0
    after = _state(run_copy)
    assert not list(run_copy.rglob(".*.tmp"))
    assert after == {k: v for k, v in before.items() if ".tmp" not in k}


def _corrupt_fingerprint(run_dir: Path, tmp: Path) -> tuple[str, ...]:
    (run_dir / "fingerprint.json").write_text('{"mod')
    return ()


def _old_fingerprint(run_dir: Path, tmp: Path) -> tuple[str, ...]:
    # What the first harness wrote (unversioned: model, pruner, keep, seed, data name and split; the
    # committed study's fingerprints were refreshed to today's version by scripts/refresh_fingerprints.py).
    fp = json.loads((run_dir / "fingerprint.json").read_text())
    old = {k: fp[k] for k in ("model", "pruner", "keep", "seed")}
    old["data"] = {k: fp["data"][k] for k in ("name", "split")}
    (run_dir / "fingerprint.json").write_text(json.dumps(old))
    return ()


def _no_fingerprint(run_dir: Path, tmp: Path) -> tuple[str, ...]:
    (run_dir / "fingerprint.json").unlink()
    return ()


def _edited_gt(run_dir: Path, tmp: Path, *, data_root: Path) -> tuple[str, ...]:
    gt = tmp / "gt"
    shutil.copytree(data_root / "annotations", gt)
    _edit("caption", lambda d: _set(d, "annotations.0.caption", "A different reference caption."))(gt)
    return (f"data.gt_dir={gt}",)  # same generation parameters, other GT contents


REFUSE_CASES: dict[str, tuple[Callable[..., tuple[str, ...]], tuple[str, ...]]] = {
    "corrupt fingerprint.json": (_corrupt_fingerprint, ("fingerprint.json is corrupt",)),
    "fingerprint of an older harness": (_old_fingerprint, ("older harness (fingerprint version 1",)),
    "predictions without a fingerprint": (_no_fingerprint,
                                          ("holds predictions and records but no fingerprint.json",)),
    "other pruner hyper-parameter": (lambda d, t: ("pruner.layer=3",), ("pruner.layer 2 -> 3",)),
    "other keep": (lambda d, t: ("keep=0.1",), ("keep 0.25 -> 0.1",)),
    "other seed": (lambda d, t: ("seed=1",), ("seed 0 -> 1",)),
    "other random weights": (lambda d, t: ("model.seed=1",), ("model.seed 0 -> 1",)),
    "other generation length": (lambda d, t: ("model.max_new_tokens=8",), ("model.max_new_tokens 32 -> 8",)),
    "regenerated split": (lambda d, t: (f"data.root={t}", f"data.generate.n_images={N + 1}"),
                          ("data.generate.n_images 8 -> 9", "data.gt_sha256")),
    "edited GT": (_edited_gt, ("data.gt_sha256.val_gcg_coco_caption_gt.json",)),
}


@pytest.mark.parametrize("case", list(REFUSE_CASES))
def test_resume_under_another_config_is_refused(case, data_root, run_copy, tmp_path, capsys) -> None:
    make, needles = REFUSE_CASES[case]
    kw = {"data_root": data_root} if make is _edited_gt else {}
    extra = make(run_copy, tmp_path / "other", **kw)
    before = _state(run_copy)
    fp = (run_copy / "fingerprint.json").read_bytes() if (run_copy / "fingerprint.json").exists() else None
    cfg = _cfg(data_root, run_copy, *extra)
    _refused(lambda: run(cfg), capsys, *needles, "out_dir=")
    assert _state(run_copy) == before
    now = (run_copy / "fingerprint.json").read_bytes() if (run_copy / "fingerprint.json").exists() else None
    assert now == fp


@pytest.mark.parametrize("change", ["max_images=3", "moved GT folder", "other image folder path"])
def test_what_does_not_change_predictions_resumes(change, data_root, run_copy, tmp_path, capsys) -> None:
    """The fingerprint is not over-strict: scoring fewer images or moved files resume, run nothing."""
    if change == "moved GT folder":
        shutil.copytree(data_root / "annotations", tmp_path / "gt")
        extra = (f"data.gt_dir={tmp_path / 'gt'}",)
    elif change == "other image folder path":
        shutil.copytree(data_root / "images", tmp_path / "img")
        extra = (f"data.image_dir={tmp_path / 'img'}",)
    else:
        extra = (change,)
    before = _state(run_copy)
    metrics: dict = {}
    code, _ = _call(lambda: metrics.update(run(_cfg(data_root, run_copy, *extra))), capsys)
    assert code == 0 and _state(run_copy) == before
    assert metrics["n_images"] == (3 if change.startswith("max_images") else N)


def test_retrained_weights_refuse_to_resume(data_root, tmp_path, capsys) -> None:
    """The shapes model's weights file changed in one value (same names and shapes): refused."""
    from safetensors.torch import load_file, save_file

    from altp.models.glamm_build import SHAPES_DIR

    weights = tmp_path / "weights"
    shutil.copytree(SHAPES_DIR, weights)
    args = ("model=glamm_shapes", f"model.weights={weights}", "max_images=1", "pruner=uniform")
    out = tmp_path / "run"
    assert _call(lambda: run(_cfg(data_root, out, *args)), capsys)[0] == 0
    state = load_file(str(weights / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name] + 1e-3  # "retrained": same keys and shapes, other values
    save_file(state, str(weights / "model.safetensors"))
    before = _state(out)
    _refused(lambda: run(_cfg(data_root, out, *args)), capsys, "weights.weights.model.safetensors.sha256")
    assert _state(out) == before


def _hydra_job(cfg) -> None:
    """What Hydra does before a job: set HydraConfig, hand the job the config without ``hydra``."""
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]


def test_refused_resume_leaves_hydra_overrides_alone(data_root, run_copy, capsys) -> None:
    hydra_dir = run_copy / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "overrides.yaml").write_text("- the command that made this folder\n")
    try:
        bad = _cfg(data_root, run_copy, "pruner.layer=3", hydra=True)
        _hydra_job(bad)
        _refused(lambda: run(bad), capsys, "pruner.layer 2 -> 3")
        assert (hydra_dir / "overrides.yaml").read_text() == "- the command that made this folder\n"
        good = _cfg(data_root, run_copy, hydra=True)
        _hydra_job(good)
        assert _call(lambda: run(good), capsys)[0] == 0
        assert "pruner=fastv" in (hydra_dir / "overrides.yaml").read_text()  # an accepted run records itself
        assert (hydra_dir / "config.yaml").is_file() and (hydra_dir / "hydra.yaml").is_file()
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow
def test_run_py_refused_resume_leaves_hydra_overrides_alone(data_root, run_copy) -> None:
    """Through run.py: Hydra itself writes no .hydra/ before main() any more."""
    import subprocess
    import sys

    (run_copy / ".hydra").mkdir()
    (run_copy / ".hydra" / "overrides.yaml").write_text("- original\n")
    proc = subprocess.run([sys.executable, "run.py", *BASE, f"data.root={data_root}", f"out_dir={run_copy}",
                           "pruner.layer=3"], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "pruner.layer 2 -> 3" in proc.stderr.strip().splitlines()[-1]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (run_copy / ".hydra" / "overrides.yaml").read_text() == "- original\n"


def test_fully_resumed_pdrop_run_writes_the_same_metrics(data_root, tmp_path, capsys) -> None:
    """State that depended on call order: a resumed run never calls schedule(), same metrics.json."""
    out = tmp_path / "pdrop"
    args = ("pruner=pdrop", "max_images=2")
    fresh, resumed = {}, {}
    assert _call(lambda: fresh.update(run(_cfg(data_root, out, *args))), capsys)[0] == 0
    assert _call(lambda: resumed.update(run(_cfg(data_root, out, *args))), capsys)[0] == 0
    fresh.pop("finished_at"), resumed.pop("finished_at")
    assert resumed == fresh and "extras.lambda.mean" in fresh and "pruner.lambda_" in fresh


def test_unpruned_cell_is_one_directory_whatever_the_keep(data_root) -> None:
    """Wasted GPU time: pruner=none at every keep of a sweep shares none/keep1.0."""
    dirs = set()
    try:
        for keep in ("0.1", "0.25", "0.5"):
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose(config_name="config", overrides=["model=glamm_tiny", "pruner=none", f"keep={keep}"],
                              return_hydra_config=True)  # fmt: skip
            HydraConfig.instance().set_config(cfg)
            dirs.add(cfg.out_dir)
    finally:
        HydraConfig.instance().cfg = None
    assert dirs == {"runs/glamm_tiny/shapes_val/none/keep1.0"}


# --------------------------------------------------------------------------- images a model cannot take


def _degenerate_split(data_root: Path, folder: Path, k: int, width: int, height: int) -> tuple[Path, Path]:
    """A copy of the split whose k-th image (and its GT entries) is ``width x height``: (gt_dir, image_dir)."""
    from pycocotools import mask as mask_utils

    gt, images = folder / "gt", folder / "images"
    shutil.copytree(data_root / "annotations", gt)
    shutil.copytree(data_root / "images", images)
    sample = GrandfSplit(gt, "val", images)[k]
    Image.new("RGB", (width, height), (120, 60, 30)).save(sample.image_path)
    blob = np.zeros((height, width), np.uint8, order="F")
    blob[:, : max(1, width // 2)] = 1
    rle = mask_utils.encode(blob)
    rle = {"size": [height, width], "counts": rle["counts"].decode()}  # pyright: ignore[reportIndexIssue]

    def edit(d: dict) -> None:
        for img in d["images"]:
            if str(img["id"]) == sample.image_id:
                img.update(height=height, width=width)
        for ann in d["annotations"]:
            if str(ann["image_id"]) == sample.image_id and "segmentation" in ann:
                ann["segmentation"] = rle

    _edit("caption", edit)(gt)
    _edit("mask", edit)(gt)
    return gt, images


@pytest.mark.parametrize(("model", "width", "height", "needle"), [
    ("glamm_tiny", 4000, 2, "SAM's resize makes it 256x0 px"),  # the SAM side below one pixel
    ("glamm_tiny", 30000, 1, "CLIP's resize makes it"),  # the CLIP resize too large to hold
    ("omg_llava_tiny", 30000, 1, "padding to a square makes it 30000x30000 px"),
])
@pytest.mark.parametrize("workers", [0, 1])
def test_image_a_model_cannot_take_is_a_recorded_failure(model, width, height, needle, workers, data_root, finished,
                                                         tmp_path, capsys) -> None:  # fmt: skip
    gt, images = _degenerate_split(data_root, tmp_path, 1, width, height)
    order = [s.image_id for s in GrandfSplit(gt, "val", images)]
    cfg = _cfg(data_root, tmp_path / "run", f"model={model}", "~data.generate", f"data.gt_dir={gt}",
               f"data.image_dir={images}", "max_images=3", f"num_workers={workers}")  # fmt: skip
    metrics: dict = {}
    code, _ = _call(lambda: metrics.update(run(cfg)), capsys)
    assert code == 0 and metrics["failed_images"] == [order[1]]
    rec = json.loads((tmp_path / "run" / "records" / f"{order[1]}.json").read_text())
    assert rec["error"].startswith("UnprocessableImageError: ") and needle in rec["error"], rec["error"]
    assert "aspect ratio" in rec["error"]


# --------------------------------------------------------------------------- the machine fails mid-run


def _preds(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "predictions").glob("*.json"))}


def _machine_failure(fn: Callable[[], Any], capsys, *needles: str) -> str:
    code, lines = _call(fn, capsys)
    lines = [ln for ln in lines if ln.startswith(("error:", "Traceback"))]  # the progress bar shares stderr
    assert code == 1 and len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_killed_input_worker_is_one_line_and_the_run_resumes(data_root, finished, tmp_path, monkeypatch,
                                                             capsys) -> None:  # fmt: skip
    out = tmp_path / "run"
    monkeypatch.setenv("ALTP_TEST_FAULT", "kill-worker@3")
    _machine_failure(lambda: run(_cfg(data_root, out, "num_workers=1")), capsys,
                     "input-pipeline worker died", "killed by signal", "rerun the same command")  # fmt: skip
    written = _preds(out)
    assert 0 < len(written) < N and all(finished.joinpath("predictions", k).read_bytes() == v
                                        for k, v in written.items())  # fmt: skip
    monkeypatch.delenv("ALTP_TEST_FAULT")
    assert _call(lambda: run(_cfg(data_root, out, "num_workers=1")), capsys)[0] == 0
    assert _preds(out) == _preds(finished)


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not permitted), unmounted with what is below it."""
    import subprocess

    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        for sub in ("records", "predictions"):  # a read-only bind a failed case left behind
            subprocess.run(["umount", str(mnt / "run" / sub)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _after_writes(monkeypatch, k: int, action: Callable[[], None]) -> None:
    """Call ``action`` once ``k`` images are written (the disk fills, the folder turns read-only)."""
    import altp.run.batches as batches

    real, count = batches.write_image, [0]

    def write_image(*args: Any, **kwargs: Any) -> None:
        if count[0] == k:
            action()
        count[0] += 1
        real(*args, **kwargs)

    monkeypatch.setattr(batches, "write_image", write_image)


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_full_or_read_only_disk_is_one_line_and_the_run_resumes(fault, small_fs, data_root, finished,
                                                                monkeypatch, capsys) -> None:  # fmt: skip
    import subprocess

    out, filler = small_fs / "run", small_fs / "filler"

    def fill() -> None:
        with open(filler, "wb", buffering=0) as fh, pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)

    def read_only() -> None:  # the run's folders turn read-only (its open lock file keeps the fs itself busy)
        for sub in ("records", "predictions"):
            subprocess.run(["mount", "--bind", str(out / sub), str(out / sub)], check=True)
            subprocess.run(["mount", "-o", "remount,ro,bind", str(out / sub)], check=True)

    _after_writes(monkeypatch, 3, fill if fault == "disk full" else read_only)
    needles = ("No space left on device", "free some space") if fault == "disk full" else (
        "Read-only file system", "make it writable again")
    line = _machine_failure(lambda: run(_cfg(data_root, out, "num_workers=0")), capsys, *needles,
                            f"cannot write {out}", "rerun the same command")  # fmt: skip
    assert "[Errno" in line
    written = _preds(out)
    assert len(written) == 3 and all(finished.joinpath("predictions", k).read_bytes() == v
                                     for k, v in written.items())  # fmt: skip
    monkeypatch.undo()
    if fault == "disk full":
        filler.unlink()
    else:
        for sub in ("records", "predictions"):
            subprocess.run(["umount", str(out / sub)], check=True)
    assert _call(lambda: run(_cfg(data_root, out, "num_workers=0")), capsys)[0] == 0
    assert _preds(out) == _preds(finished)


# --------------------------------------------------------------------------- report tools over damaged records


def _tool(tool: str, results: Path, out: Path) -> list[str]:
    if tool == "tables":
        import importlib.util

        spec = importlib.util.spec_from_file_location("make_tables", ROOT / "scripts" / "make_tables.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return [module.main, "--results", str(results), "--out", str(out), "--paper", "none"]
    if tool == "figures":
        from altp.viz.__main__ import main as viz_main

        return [viz_main, "figures", str(results), "--out", str(out)]
    from altp.report.__main__ import main as report_main

    return [report_main, str(results), "--out", str(out), "--text-encoder", "none"]


def _scored_results(tmp_path: Path) -> Path:
    """A results folder with one scored run record (the committed study's FastV cell at keep 0.1)."""
    results = tmp_path / "results"
    cell = ROOT / "results/shapes/glamm_shapes/shapes_val/fastv/keep0.1"
    shutil.copytree(cell, results / "fastv")
    return results


@pytest.mark.parametrize("tool", ["tables", "figures", "report"])
def test_report_tools_name_the_torn_metrics_file(tool, tmp_path, capsys) -> None:
    results = _scored_results(tmp_path)
    torn = results / "fastv" / "metrics.json"
    torn.write_bytes(torn.read_bytes()[:200])
    main, *argv = _tool(tool, results, tmp_path / "out")
    capsys.readouterr()
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(torn) in lines[0] and "not readable JSON" in lines[0], lines


def test_figures_over_runs_without_scores_say_so_and_write_nothing(finished, tmp_path, capsys) -> None:
    results = tmp_path / "results"
    shutil.copytree(finished, results / "run")
    assert json.loads((results / "run" / "metrics.json").read_text()).get("meteor") is None  # evaluate=false
    main, *argv = _tool("figures", results, tmp_path / "figs")
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert "no run of glamm_tiny synthetic" in err and "evaluate=false" in err
    written = sorted(p.name for p in (tmp_path / "figs").glob("*")) if (tmp_path / "figs").exists() else []
    assert not any("metrics" in n or "pareto" in n for n in written), written
    assert code == (0 if written else 2)


# --------------------------------------------------------------------------- ranks that never come


@pytest.mark.parametrize("slurm", [True, False], ids=["sbatch without srun", "a rank that never started"])
def test_rank_whose_peers_never_join_gives_up_in_one_line(slurm, data_root, tmp_path, monkeypatch, capsys) -> None:
    import os
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env.update({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": "1"} if slurm else
               {"RANK": "0", "WORLD_SIZE": "2"})  # fmt: skip
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    monkeypatch.setattr(os, "environ", env)
    cfg = _cfg(data_root, tmp_path / "run", "rendezvous_timeout_min=0.05")  # 3 s
    t0 = time.perf_counter()
    line = _machine_failure(lambda: run(cfg), capsys, "rank 0 of 2: the other ranks did not join", "within 0.05 min",
                            "started without srun" if slurm else "a rank that died or never started")  # fmt: skip
    assert time.perf_counter() - t0 < 60 and "rendezvous_timeout_min" in line
    import torch.distributed as dist

    assert not dist.is_initialized()


# --------------------------------------------------------------------------- images changed under the same name


@pytest.mark.parametrize("keep_stat", [False, True], ids=["new mtime", "old mtime restored"])
def test_changed_image_file_reruns_that_image_only(keep_stat, data_root, finished, tmp_path, order, capsys) -> None:
    import os

    images = tmp_path / "images"
    shutil.copytree(data_root / "images", images)
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    assert (run_dir / "image_identities.json").is_file()
    target = GrandfSplit(data_root / "annotations", "val", images)[2].image_path
    st = target.stat()
    Image.open(target).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target, format="JPEG")
    if keep_stat:  # the mtime says nothing changed: the new size does
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = _state(run_dir)
    metrics: dict = {}
    code, _ = _call(lambda: metrics.update(run(_cfg(data_root, run_dir, f"data.image_dir={images}"))), capsys)
    assert code == 0 and metrics["n_failed"] == 0
    after = _state(run_dir)
    changed = {Path(k).stem for k in after if after[k] != before.get(k)}
    assert changed == {order[2]}
    # The resume after that runs nothing.
    again = _state(run_dir)
    assert _call(lambda: run(_cfg(data_root, run_dir, f"data.image_dir={images}")), capsys)[0] == 0
    assert _state(run_dir) == again


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize(("setting", "env", "workers", "want"), [
    ("auto", None, 1, "cores - 1"), ("auto", None, 0, "cores"), ("auto", "3", 1, 3), (2, "3", 1, 2), (1, None, 0, 1)])
def test_model_threads_leave_the_workers_their_cores(setting, env, workers, want, monkeypatch) -> None:
    import torch

    from altp.run.threads import available_cores, set_model_threads

    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    before = torch.get_num_threads()
    try:
        expected = {"cores - 1": max(1, available_cores() - 1), "cores": available_cores()}.get(str(want), want)
        assert set_model_threads(setting, workers) == expected == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_threads_value_is_checked_and_recorded(data_root, finished, tmp_path, capsys) -> None:
    _refused(lambda: run(_cfg(data_root, tmp_path / "x", "threads=0")), capsys, "threads must be auto or an integer")
    out = tmp_path / "run"
    assert _call(lambda: run(_cfg(data_root, out, "threads=1", "max_images=1")), capsys)[0] == 0
    assert json.loads((out / "run.json").read_text())["throughput"]["threads"] == 1
