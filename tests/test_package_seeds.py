"""A seed ensemble as a package: two runs of one recipe exported together predict as their averaged report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from synthetic import PACKAGE_RECIPE, member_raw_probs

from medsg.core.errors import DataError
from medsg.demo import make_synthetic_busi
from medsg.deploy.package import PACKAGE_FILE, export_package, load_package
from medsg.deploy.predict import InputItem, predict_items
from medsg.workflows.ensemble import write_ensemble_report
from medsg.workflows.experiment import run_experiment


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, make_config):
    out = tmp_path_factory.mktemp("seeds")
    root = make_synthetic_busi(out / "data", n_per_class=4, size=40, seed=3)
    runs = []
    for seed in (0, 1):
        cfg = make_config(
            root, out, PACKAGE_RECIPE | {"experiment.name": f"s{seed}", "experiment.seed": seed}
        )
        runs.append(run_experiment(cfg, folds=[0, 1], quiet=True, report=False))  # one report folder
    package = export_package(runs[0], out / "package", seeds=[runs[1]], name="seeds2")
    return runs, package, out


@pytest.mark.e2e
def test_seed_package_averages_each_folds_networks_under_the_ensembles_calibration(seeds):
    runs, package, out = seeds
    meta = json.loads((package / PACKAGE_FILE).read_text())
    assert meta["experiment"] == "seeds2" and [m["seed"] for m in meta["ensemble"]["members"]] == [0, 1]
    assert all(isinstance(m["weights"], list) and len(m["weights"]) == 2 for m in meta["members"])
    report = write_ensemble_report(runs, out / "report" / "seeds2").parent
    calibration = json.loads((report / "calibration.json").read_text())
    bundle = load_package(package)
    manifest = pd.read_csv(runs[0] / "manifest.csv", dtype=str, keep_default_na=False).set_index("id")
    cols = [f"p_{c}" for c in bundle.class_names]
    for member in bundle.select("folds"):
        assert member.temperature == pytest.approx(calibration[member.name]["temperature"])
        frames = [pd.read_csv(r / f"fold_{member.name}" / "predictions.csv", dtype={"id": str}) for r in runs]
        ids = frames[0]["id"]
        want = np.mean([f.set_index("id").loc[ids, cols].to_numpy() for f in frames], axis=0)
        np.testing.assert_allclose(
            member_raw_probs(bundle, member, list(manifest.loc[ids, "path"])), want, atol=1e-5
        )
    # the package's CV evidence is the ensemble's report, and predict applies each fold's refitted rule
    cv = json.loads((package / "cv" / "summary.json").read_text())
    assert cv["bootstrap_ci"] == json.loads((report / "summary.json").read_text())["bootstrap_ci"]
    paths = list(manifest["path"])[:4]
    result = predict_items(
        bundle, [InputItem(str(i), p) for i, p in enumerate(paths)], out / "pred", collect=True
    )
    decision = bundle.decision
    want = np.mean(
        [m.calibrated(member_raw_probs(bundle, m, paths), decision) for m in bundle.select("folds")], axis=0
    )
    np.testing.assert_allclose(np.stack(result.probs), want, atol=1e-6)
    card = (package / "MODEL_CARD.md").read_text()
    assert "seeds2" in card and "2 folds x 2 seeds = 4 networks" in card


@pytest.mark.e2e
def test_seed_package_refuses_final_models_and_other_recipes(seeds, make_config):
    runs, _, out = seeds
    with pytest.raises(DataError, match="folds only"):
        export_package(runs[0], out / "nope", models="all", seeds=[runs[1]])
    with pytest.raises(DataError, match="share experiment.seed"):
        export_package(runs[0], out / "nope", seeds=[runs[0]])
    assert not (out / "nope").exists()
