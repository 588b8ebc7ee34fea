"""metrics.json is a function of the config and the records: resumed runs write the same file.

Pruner hyper-parameters come from the pruner config group as the user set it;
what a pruner solves per image (PDrop's lambda, its stage counts) lives in the
records and is aggregated without the runner knowing any pruner. Old records
(written before that) still land in the cells they always did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from altp.run.runner import run
from eval.run_records import RunRecord, is_default, load_pruner_defaults

ROOT = Path(__file__).resolve().parents[1]


def _run(data_root: Path, out: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=glamm_tiny", "model.max_new_tokens=6", "data=synthetic", f"data.root={data_root}",
            "data.generate.n_images=2", "evaluate=false", f"out_dir={out}", *overrides,
        ])  # fmt: skip
    return run(cfg, choices={"model": "glamm_tiny", "data": "synthetic", "pruner": cfg.pruner.name})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def _without_stamp(path: Path) -> dict:
    m = json.loads(path.read_text())
    assert m.pop("finished_at")
    return m


@pytest.mark.parametrize("overrides", [("pruner=pdrop", "keep=0.25"), ("pruner=altp", "keep=0.1")])
def test_fully_resumed_run_writes_the_same_metrics(overrides, data_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    _run(data_root, out, *overrides)
    fresh = _without_stamp(out / "metrics.json")
    (out / "metrics.json").unlink()
    _run(data_root, out, *overrides)  # every image done: no inference, no schedule() call
    assert _without_stamp(out / "metrics.json") == fresh


def test_pdrop_hparams_are_the_config_and_solved_values_come_from_records(
    data_root: Path, tmp_path: Path
):
    solved = _run(data_root, tmp_path / "solved", "pruner=pdrop", "keep=0.25")
    hp = {k: v for k, v in solved.items() if k.startswith("pruner.")}
    assert hp == {
        "pruner.layers": None,
        "pruner.lambda_": None,
        "pruner.match_layer": 2,
        "pruner.score": "own",
        "pruner.renumber": True,
    }
    recs = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "solved" / "records").glob("*.json"))
    ]
    lams = [r["extras"]["lambda"] for r in recs]
    assert solved["extras.lambda.mean"] == pytest.approx(sum(lams) / 2)
    assert (solved["extras.lambda.min"], solved["extras.lambda.max"]) == (min(lams), max(lams))
    want = sorted({(tuple(r["stage_layers"]), tuple(r["kept_per_stage"])) for r in recs})
    got = sorted(
        (tuple(s["stage_layers"]), tuple(s["kept_per_stage"])) for s in solved["stage_schedules"]
    )
    assert got == want and sum(s["n_images"] for s in solved["stage_schedules"]) == 2

    upstream = _run(
        data_root,
        tmp_path / "upstream",
        "pruner=pdrop",
        "keep=0.25",
        "pruner.lambda_=0.5",
        "pruner.layers=[8,16,24]",
    )
    assert (upstream["pruner.lambda_"], upstream["pruner.layers"]) == (0.5, [8, 16, 24])
    assert upstream["extras.lambda.mean"] == 0.5
    assert upstream["stage_schedules"] == [
        {"stage_layers": [8, 16, 24], "kept_per_stage": [288, 144, 72], "n_images": 2}
    ]
    # lambda_ fixes the schedule: the metrics say keep was ignored and what was kept per stage.
    assert upstream["keep_ignored"] is True and "keep_ignored" not in solved
    assert upstream["kept_fraction_per_stage"] == [0.5, 0.25, 0.125]
    assert solved["kept_fraction_per_stage"][0] > 0.25  # PDrop's first stage keeps more, at equal FLOPs


def test_summary_line_names_each_flops_convention_and_a_fixed_schedule(capsys):
    from altp.run.summary import print_metrics

    m = {"model": "m", "data": "d", "pruner": "fastv", "keep": 0.1, "ap50": 0.5,
         "flops_ratio": 0.331, "flops_ratio_paper": 0.309, "mean_kept_tokens": 57.0, "n_images": 3}  # fmt: skip
    print_metrics(m)
    line = capsys.readouterr().out
    assert "FLOPs%(paper) 30.9" in line and "FLOPs%(prompt) 33.1" in line and "keep=0.1" in line
    print_metrics({**m, "pruner": "pdrop", "keep_ignored": True, "kept_fraction_per_stage": [0.5, 0.25, 0.125]})
    assert "keep=0.5>0.25>0.125 (schedule fixed by the pruner, not keep)" in capsys.readouterr().out


def test_region_pruner_metrics_carry_realised_regions(data_root: Path, tmp_path: Path):
    m = _run(data_root, tmp_path / "altp", "pruner=altp", "keep=0.1")
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "altp" / "records").glob("*.json"))]
    regions = [r["extras"]["regions"] for r in recs]
    assert all(r["extras"]["slic_segments"] >= n >= 1 for r, n in zip(recs, regions, strict=True))
    assert m["extras.regions.mean"] == pytest.approx(sum(regions) / len(regions))
    assert m["extras.regions.min"] == min(regions)
    assert m["single_region_share"] == sum(n == 1 for n in regions) / len(regions)
    assert m["pruner.enforce_connectivity"] is False  # the configs' choice (conf/pruner/altp.yaml)


def test_unpruned_run_has_no_pruner_keys(data_root: Path, tmp_path: Path):
    m = _run(data_root, tmp_path / "none", "pruner=none")
    assert not [k for k in m if k.startswith(("pruner.", "extras."))]
    assert m["stage_schedules"] == [{"stage_layers": [], "kept_per_stage": [], "n_images": 2}]


def _record(**metrics) -> RunRecord:
    base = {
        "model": "glamm_shapes",
        "data": "shapes_val",
        "split": "val",
        "pruner": "pdrop",
        "keep": 0.5,
    }
    return RunRecord(path=Path("x"), metrics={**base, **metrics}, finished=0.0)


def test_old_pdrop_records_keep_their_cell_and_default_status():
    defaults = load_pruner_defaults(ROOT / "conf")
    assert defaults["pdrop"] == {
        "layers": None,
        "lambda_": None,
        "match_layer": 2,
        "score": "own",
        "renumber": True,
    }
    old = _record(
        **{
            "pruner.match_layer": 2,
            "pruner.layers_arg": None,
            "pruner.lambda_": None,
            "pruner.lambda": 0.683,
            "pruner.layers": [2, 4, 6],
            "pruner.kept_per_stage": [393, 268, 183],
            "pruner.lambda_solved": True,
        }
    )  # as the committed study wrote it
    new = _record(**{"pruner.layers": None, "pruner.lambda_": None, "pruner.match_layer": 2})
    assert old.cell == new.cell and is_default(old, defaults) and is_default(new, defaults)
    upstream = _record(
        **{"pruner.layers": [8, 16, 24], "pruner.lambda_": 0.5, "pruner.match_layer": 2}
    )
    assert upstream.cell != new.cell and not is_default(upstream, defaults)
    only_lambda = _record(**{"pruner.layers": None, "pruner.lambda_": 0.5, "pruner.match_layer": 2})
    assert not is_default(only_lambda, defaults)  # a null default is a setting like any other
