"""medsg ensemble: seed ensembles from fabricated member report folders, and from the committed BUSI reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medsg import cli
from medsg.core.errors import ConfigError, DataError, ReportRefused
from medsg.report.aggregate import load_report_folder
from medsg.report.compare import compare_runs
from medsg.workflows.ensemble import write_ensemble_report
from medsg.workflows.reproduce import read_report

CLASSES = ["benign", "malignant", "normal"]
N_TEST, N_VAL = 30, 30  # per fold, 2 folds
REPO = Path(__file__).resolve().parents[1]


def _probs(y: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """0.6 on the true class, 0.2 elsewhere; 0.6 on the next class where ``wrong``."""
    pred = np.where(wrong, (y + 1) % 3, y)
    p = np.full((len(y), 3), 0.2)
    p[np.arange(len(y)), pred] = 0.6
    return p


def _frame(ids: list[str], fold: int, y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids, "fold": fold, "y_true": y, "y_pred": p.argmax(axis=1)})
    for c, name in enumerate(CLASSES):
        frame[f"p_{name}"] = p[:, c]
    return frame


def make_member(root: Path, seed: int, third: int, model: str = "mobilenetv3_small_100", **kw: float) -> Path:
    """A report folder of one seed: it misclassifies the ``third``-th third of every test and validation split
    (so three members with thirds 0, 1, 2 are each right on two thirds, and their average on all)."""
    out = root / f"member_seed{seed}"
    out.mkdir(parents=True)
    config = {
        "experiment": {"name": out.name, "seed": seed},
        "data": {"adapter": "busi", "root": "data"},
        "model": {"name": model},
        "splits": {"k": 2, "grouping": "group"},
        "eval": {"bootstrap": 200, "decision": "majority_floor"},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    oof, val, calibration = [], [], {}
    for fold in range(2):
        y = np.arange(N_TEST) % 3
        wrong = np.arange(N_TEST) // (N_TEST // 3) == third
        test = _frame([f"t{fold}_{i:02d}" for i in range(N_TEST)], fold, y, _probs(y, wrong))
        test["group"] = [f"g{fold}_{i // 2}" for i in range(N_TEST)]
        oof.append(test)
        p_val = _probs(y, wrong) * kw.get("val_scale", 1.0)
        val.append(
            _frame([f"v{fold}_{i:02d}" for i in range(N_VAL)], fold, y, p_val / p_val.sum(1, keepdims=True))
        )
        prior = {"class_prior": [0.5, 0.3, 0.2], "n_train": 100}
        calibration[str(fold)] = {
            "temperature": 1.0,
            "fitted": True,
            "prior_shift": prior | {"strength": 0.0},
        }
    pd.concat(oof).to_csv(out / "oof_predictions.csv", index=False)
    pd.concat(val).to_csv(out / "val_predictions.csv", index=False)
    (out / "calibration.json").write_text(json.dumps(calibration))
    return out


def _members(tmp_path: Path) -> list[Path]:
    return [make_member(tmp_path, seed, third) for seed, third in ((0, 0), (1, 1), (2, 2))]


def test_ensemble_averages_members_and_beats_each_of_them(tmp_path):
    members = _members(tmp_path)
    out = tmp_path / "reports" / "seeds"
    write_ensemble_report(members, out)
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"id": str})
    columns = [f"p_{c}" for c in CLASSES]
    want = np.mean(
        [pd.read_csv(m / "oof_predictions.csv").set_index("id").loc[oof["id"], columns] for m in members], 0
    )
    assert np.allclose(oof[columns].to_numpy(), want)
    summary = json.loads((out / "summary.json").read_text())
    rules = {row["rule"]: row for row in summary["decision"]["rows"]}
    assert rules["balanced"]["accuracy"]["point"] == pytest.approx(1.0)  # each member: 2/3
    member = json.loads(json.dumps(compare_runs([members[0], out])["comparisons"][0]))
    assert member["metrics"]["accuracy"]["difference"] > 0.3
    # the groups of the first member carry over, so the CIs resample them
    assert (
        oof["group"]
        == pd.read_csv(members[0] / "oof_predictions.csv").set_index("id").loc[oof["id"], "group"].to_numpy()
    ).all()
    ensemble = json.loads((out / "ensemble.json").read_text())
    assert [m["seed"] for m in ensemble["members"]] == [0, 1, 2]
    assert summary["experiment"] == "seeds"
    assert summary["protocol"]["experiment seed"].startswith("0, 1, 2")
    assert "3 runs of one recipe" in summary["protocol"]["ensemble"]
    # the members' commits, then whose environment the rest of the line describes (not the ensemble's own commit)
    assert summary["protocol"]["provenance"].startswith("members trained at ")
    assert "; the first member's environment: " in summary["protocol"]["provenance"]
    assert load_report_folder(out).ensemble["members"][2]["name"] == "member_seed2"


def test_ensemble_calibration_is_fitted_on_inner_validation_only(tmp_path):
    """Scaling the members' validation probabilities changes the refitted temperature; their test predictions
    do not enter any fit."""
    base = write_ensemble_report(_members(tmp_path / "a"), tmp_path / "a" / "out")
    records = json.loads((base.parent / "calibration.json").read_text())
    assert records["0"]["fitted_on"].startswith("the members' averaged inner validation")
    assert records["0"]["n_val"] == N_VAL and records["0"]["prior_shift"]["fitted"] is True
    other = [make_member(tmp_path / "b", s, t) for s, t in ((0, 0), (1, 1), (2, 2))]
    for member in other:  # the same validation predictions, other test predictions
        oof = pd.read_csv(member / "oof_predictions.csv")
        oof[[f"p_{c}" for c in CLASSES]] = 1 / 3
        oof.to_csv(member / "oof_predictions.csv", index=False)
    again = json.loads(
        (write_ensemble_report(other, tmp_path / "b" / "out").parent / "calibration.json").read_text()
    )
    for key in ("temperature",):
        assert again["0"][key] == pytest.approx(records["0"][key])
    assert again["0"]["prior_shift"]["strength"] == pytest.approx(records["0"]["prior_shift"]["strength"])


@pytest.mark.parametrize(
    "change, words",
    [
        ({"model": "resnet18"}, "model.name"),
        ({"seed": 0}, "share experiment.seed 0"),
        ({"val": True}, "inner validation images differ"),
        ({"fold": True}, "same outer folds"),
    ],
)
def test_ensemble_refuses_members_that_are_not_one_recipe(tmp_path, change, words):
    first = make_member(tmp_path, 0, 0)
    second = make_member(
        tmp_path / "x", change.get("seed", 1), 1, model=change.get("model", "mobilenetv3_small_100")
    )
    if change.get("val"):
        val = pd.read_csv(second / "val_predictions.csv")
        val.loc[0, "id"] = "another image"
        val.to_csv(second / "val_predictions.csv", index=False)
    if change.get("fold"):
        oof = pd.read_csv(second / "oof_predictions.csv")
        oof["fold"] = 1 - oof["fold"]
        oof.to_csv(second / "oof_predictions.csv", index=False)
    with pytest.raises(DataError, match=words):
        write_ensemble_report([first, second], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ensemble_refuses_a_member_without_calibration(tmp_path):
    first, second = make_member(tmp_path, 0, 0), make_member(tmp_path, 1, 1)
    (second / "calibration.json").unlink()
    with pytest.raises(DataError, match="calibration.json"):
        write_ensemble_report([first, second], tmp_path / "out")


def test_medsg_ensemble_command_and_reproduce_refusal(tmp_path, capsys):
    members = [str(m) for m in _members(tmp_path)]
    out = tmp_path / "ens"
    assert cli.main(["ensemble", *members, "--out", str(out)]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    assert "(one run each, averaged)" in (out / "report.md").read_text()
    assert json.loads((out / "made_by.json").read_text())["ensemble_of"] == [Path(m).name for m in members]
    with pytest.raises(ConfigError, match="seed ensemble"):
        read_report(out)
    # another ensemble's folder is not replaced without --force
    with pytest.raises(ReportRefused, match="another run"):
        write_ensemble_report([Path(m) for m in members[:2]], out)
    assert json.loads((out / "made_by.json").read_text())["ensemble_of"] == [Path(m).name for m in members]


COMMITTED = sorted(p.parent.name for p in (REPO / "reports").glob("*/ensemble.json"))


def _assert_close(mine, theirs, where: str = "") -> None:
    """Equal structure and strings, numbers to 1e-6 relative: the calibration fits run on whatever CPU runs the
    test, and their last digits follow its vector instructions (an AVX-512 and an AVX2 machine differ at ~1e-8)."""
    if isinstance(theirs, dict):
        assert isinstance(mine, dict) and set(mine) == set(theirs), where
        for key in theirs:
            _assert_close(mine[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(mine, list) and len(mine) == len(theirs), where
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float) and not isinstance(mine, bool):
        assert mine == pytest.approx(theirs, rel=1e-6, abs=1e-9, nan_ok=True), where
    else:
        assert mine == theirs, where


@pytest.mark.parametrize("name", COMMITTED)
def test_a_committed_seed_ensemble_is_recomputed_from_its_members(tmp_path, name):
    """Each committed ensemble report comes from its members' committed report folders, by the code here."""
    committed = REPO / "reports" / name
    members = [REPO / m["path"] for m in json.loads((committed / "ensemble.json").read_text())["members"]]
    write_ensemble_report(members, tmp_path / name)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / name / "oof_predictions.csv", dtype={"id": str}),
        pd.read_csv(committed / "oof_predictions.csv", dtype={"id": str}),
        rtol=1e-6,
    )
    for file in ("calibration.json", "summary.json"):
        mine, theirs = (json.loads((folder / file).read_text()) for folder in (tmp_path / name, committed))
        if file == "summary.json":
            mine, theirs = ({k: d[k] for k in ("bootstrap_ci", "decision")} for d in (mine, theirs))
        _assert_close(mine, theirs, file)


def test_the_seed_ensemble_report_is_committed():
    """The BUSI results (README, docs/results.md) cite it; a clone without it would skip the test above silently."""
    assert "busi_cpu_mobilenetv3_seeds" in COMMITTED


def test_ids_that_pandas_reads_as_missing_stay_ids(tmp_path):
    """Images named "NA", "null" or "None" are ids like any other, in test and validation predictions."""
    members = _members(tmp_path)
    names = {"v0_00": "NA", "v0_01": "null", "t0_00": "None", "t1_00": "nan"}
    for member in members:
        for file in ("oof_predictions.csv", "val_predictions.csv"):
            frame = pd.read_csv(member / file, dtype=str)
            frame["id"] = frame["id"].replace(names)
            frame.to_csv(member / file, index=False)
    run = load_report_folder(members[0])
    assert {"NA", "null"} <= set(run.val[0]["id"]) and len(run.val[0]) == N_VAL
    out = tmp_path / "seeds"
    write_ensemble_report(members, out)
    oof = pd.read_csv(out / "oof_predictions.csv", dtype=str, keep_default_na=False)
    assert {"None", "nan"} <= set(oof["id"]) and len(oof) == 2 * N_TEST
