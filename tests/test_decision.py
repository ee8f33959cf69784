"""The prior-shift decision rule: the fit, the report's two rows and warning, predict and evaluate's use."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import balanced_accuracy_score

from medsg.calibration import (
    PRIOR_KEY,
    apply_prior_shift,
    apply_temperature,
    decide,
    fit_floor_strength,
    fit_prior_strength,
    prior_shift_record,
)
from medsg.report import write_report
from medsg.report.aggregate import build_summary, load_run
from medsg.report.decision import rule_probs

CLASSES = ["benign", "malignant", "normal"]
PRIOR = np.array([0.7, 0.2, 0.1])


SEPARATION = 1.2  # weak enough that the balanced argmax is below the majority class's accuracy (0.7)


def balanced_model(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with PRIOR and the probabilities a perfectly class-balanced model gives them: the true
    posterior divided by the prior (renormalised), so a shift of strength 1 recovers the posterior.

    Features are N(SEPARATION * onehot(y), I), so the likelihood of class c is proportional to
    exp(SEPARATION * z_c)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=PRIOR)
    z = rng.normal(size=(n, 3)) + SEPARATION * np.eye(3)[y]
    likelihood = np.exp(SEPARATION * z)
    posterior = likelihood * PRIOR
    posterior /= posterior.sum(axis=1, keepdims=True)
    balanced = posterior / PRIOR
    return y, balanced / balanced.sum(axis=1, keepdims=True)


def test_fit_recovers_the_logit_adjustment_and_raises_accuracy():
    y, probs = balanced_model(20000, seed=0)
    strength = fit_prior_strength(y, probs, PRIOR)
    assert strength == pytest.approx(1.0, abs=0.05)
    shifted = apply_prior_shift(probs, PRIOR, strength)
    assert (shifted.argmax(1) == y).mean() > (probs.argmax(1) == y).mean() + 0.05
    assert (probs.argmax(1) == y).mean() < PRIOR.max() < (shifted.argmax(1) == y).mean()
    np.testing.assert_allclose(shifted.sum(axis=1), 1.0)


def test_record_fits_on_validation_and_a_uniform_prior_is_not_fitted():
    y, probs = balanced_model(600, seed=1)
    labels = np.repeat([0, 1, 2], (70, 20, 10))
    record = prior_shift_record(y, probs, labels, CLASSES)
    assert record["fitted"] and record["val_nll_after"] < record["val_nll_before"]
    np.testing.assert_allclose(record["class_prior"], PRIOR)
    flat = prior_shift_record(y, probs, np.array([0, 1, 2]), CLASSES)
    assert not flat["fitted"] and flat["strength"] == 0.0 and "uniform" in flat["reason"]
    none = prior_shift_record(None, None, labels, CLASSES, strength=0.8, reason="final model")
    assert none == {
        "class_prior": record["class_prior"],
        "n_train": 100,
        "strength": 0.8,
        "fitted": False,
        "reason": "final model",
    }
    final = prior_shift_record(None, None, labels, CLASSES, strength=0.8, floor_strength=0.35)
    assert final["floor_strength"] == 0.35


def test_majority_floor_keeps_accuracy_at_the_majority_share_and_beats_prior_on_balanced_accuracy():
    val_y, val_probs = balanced_model(3000, seed=3)
    fit = fit_floor_strength(val_y, val_probs, PRIOR)
    majority = np.bincount(val_y).max() / len(val_y)
    assert fit["floor_met"] and fit["val_majority_share"] == pytest.approx(majority)
    assert fit["val_accuracy_floor"] >= majority
    prior_s = fit_prior_strength(val_y, val_probs, PRIOR)
    assert 0.0 < fit["floor_strength"] < prior_s  # a partial shift: between the balanced and prior rules
    # on fresh test data the floor rule keeps most of its accuracy and keeps more balanced accuracy than prior
    y, probs = balanced_model(20000, seed=4)

    def scores(s):
        pred = apply_prior_shift(probs, PRIOR, s).argmax(1)
        return (pred == y).mean(), np.mean([(pred[y == c] == c).mean() for c in range(3)])

    (floor_acc, floor_bal), (prior_acc, prior_bal), (bal_acc, _) = map(
        scores, (fit["floor_strength"], prior_s, 0)
    )
    assert floor_acc > PRIOR.max() - 0.02 and floor_acc > bal_acc
    assert floor_bal > prior_bal


def test_majority_floor_out_of_reach_takes_the_most_accurate_strength():
    rng = np.random.default_rng(5)
    y = rng.choice(3, size=500, p=PRIOR)
    noise = rng.dirichlet(np.ones(3), size=500)  # a model that knows nothing
    fit = fit_floor_strength(y, noise, [1 / 3, 1 / 3, 1 / 3 + 1e-9])
    assert not fit["floor_met"]
    accs = [
        (apply_prior_shift(noise, [1 / 3, 1 / 3, 1 / 3 + 1e-9], s).argmax(1) == y).mean() for s in (0, 1, 3)
    ]
    assert fit["val_accuracy_floor"] >= max(accs)
    with pytest.raises(ValueError, match="zero predictions"):
        fit_floor_strength([], noise[:0], PRIOR)


def test_decide_balanced_is_identity_and_prior_needs_a_record():
    _, probs = balanced_model(50, seed=2)
    assert decide(probs, {}, "balanced") is probs
    with pytest.raises(ValueError, match="no prior shift"):
        decide(probs, {}, "prior")
    with pytest.raises(ValueError, match="eval.decision"):
        decide(probs, {}, "uniform")
    record = {PRIOR_KEY: {"class_prior": PRIOR.tolist(), "strength": 1.0}}
    np.testing.assert_allclose(decide(probs, record, "prior"), apply_prior_shift(probs, PRIOR, 1.0))
    with pytest.raises(ValueError, match="no majority_floor strength"):
        decide(probs, record, "majority_floor")  # a record from before that rule existed
    record[PRIOR_KEY]["floor_strength"] = 0.4
    np.testing.assert_allclose(decide(probs, record, "majority_floor"), apply_prior_shift(probs, PRIOR, 0.4))


def _run_with_prior_shift(root, decision: str):
    """A 2-fold run folder whose models are class-balanced (below the majority baseline in accuracy), with
    the calibration files a current fold writes."""
    run = root / "runs" / "exp"
    config = {
        "experiment": {"name": "exp", "seed": 0},
        "data": {"adapter": "busi", "root": "/data/busi"},
        "splits": {"k": 2, "seed": 0, "grouping": "group", "inner_val_fraction": 0.15},
        "model": {"name": "sgformer_tiny", "pretrained": None},
        "train": {"selection": "inner_val", "epochs": 3},
        "eval": {"decision": decision, "bootstrap": 100},
    }
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for fold in (0, 1):
        y, probs = balanced_model(400, seed=10 + fold)
        val_y, val_probs = balanced_model(150, seed=20 + fold)
        folder = run / f"fold_{fold}"
        folder.mkdir()
        ids = [f"f{fold}_{i}" for i in range(len(y))]

        def frame(ids, y, probs, fold=fold):
            out = pd.DataFrame({"id": ids, "fold": fold, "y_true": y, "y_pred": probs.argmax(1)})
            for c, name in enumerate(CLASSES):
                out[f"p_{name}"] = probs[:, c]
            return out

        frame(ids, y, probs).to_csv(folder / "predictions.csv", index=False)
        frame(ids, y, apply_temperature(probs, 1.0)).to_csv(
            folder / "calibrated_predictions.csv", index=False
        )
        frame([f"v{fold}_{i}" for i in range(150)], val_y, val_probs).to_csv(
            folder / "val_predictions.csv", index=False
        )
        labels = np.repeat([0, 1, 2], (700, 200, 100))
        record = {
            "temperature": 1.0,
            "fitted": True,
            PRIOR_KEY: prior_shift_record(val_y, val_probs, labels, CLASSES),
        }
        (folder / "calibration.json").write_text(json.dumps(record))
        (folder / "metrics.json").write_text(json.dumps({"best_epoch": 2, "selection": "inner_val"}))
        (folder / "DONE").write_text("")
    return run


def test_report_shows_both_rules_and_the_headline_follows_eval_decision(tmp_path):
    run = _run_with_prior_shift(tmp_path, "prior")
    summary = build_summary(load_run(run), n_bootstrap=100)
    rows = {r["rule"]: r for r in summary["decision"]["rows"]}
    assert summary["decision"]["headline"] == "prior" and rows["prior"]["headline"]
    assert rows["balanced"]["below_majority_baseline"] and not rows["prior"]["below_majority_baseline"]
    assert summary["pooled"]["accuracy"] == pytest.approx(rows["prior"]["accuracy"]["point"])
    assert rows["prior"]["accuracy"]["point"] > summary["baseline"]["accuracy"]
    balanced = build_summary(load_run(_run_with_prior_shift(tmp_path / "b", "balanced")), n_bootstrap=100)
    assert balanced["pooled"]["accuracy"] == pytest.approx(rows["balanced"]["accuracy"]["point"])
    floor = build_summary(load_run(_run_with_prior_shift(tmp_path / "f", "majority_floor")), n_bootstrap=100)
    assert [r["rule"] for r in floor["decision"]["rows"]] == ["balanced", "prior", "majority_floor"]
    floor_row = floor["decision"]["rows"][2]
    assert floor["decision"]["headline"] == "majority_floor" and floor_row["headline"]
    assert floor["pooled"]["accuracy"] == pytest.approx(floor_row["accuracy"]["point"])
    assert floor_row["balanced_accuracy"]["point"] > rows["prior"]["balanced_accuracy"]["point"]
    assert all(0 < f["floor_strength"] < f["strength"] for f in floor["decision"]["per_fold"])


def test_report_below_the_baseline_says_so_in_its_first_lines(tmp_path):
    run = _run_with_prior_shift(tmp_path, "balanced")
    html_path = write_report(run, tmp_path / "report", n_bootstrap=100)
    head = (tmp_path / "report" / "report.md").read_text().splitlines()[:4]
    assert any("below the majority-class baseline" in line for line in head), head
    assert "Under the prior rule its accuracy is" in "\n".join(head)
    assert "below the majority-class baseline" in html_path.read_text()[:3000]
    assert "## Decision rule" in (tmp_path / "report" / "report.md").read_text()
    # the files a reader needs to recompute the prior rule
    records = json.loads((tmp_path / "report" / "calibration.json").read_text())
    assert set(records) == {"0", "1"} and PRIOR_KEY in records["0"]
    assert len(pd.read_csv(tmp_path / "report" / "val_predictions.csv")) == 300
    # headline above the baseline, the other rule's row below it: still said first
    prior = write_report(
        _run_with_prior_shift(tmp_path / "p", "prior"), tmp_path / "p_report", n_bootstrap=100
    )
    head = (tmp_path / "p_report" / "report.md").read_text().splitlines()[:4]
    assert any("Under the balanced rule (in the Decision rule table) accuracy is" in line for line in head), (
        head
    )
    assert "below the majority-class baseline" in prior.read_text()[:3000]


def test_report_without_prior_shifts_falls_back_and_says_why(tmp_path):
    run = _run_with_prior_shift(tmp_path, "prior")
    for fold in (0, 1):
        path = run / f"fold_{fold}" / "calibration.json"
        record = json.loads(path.read_text())
        del record[PRIOR_KEY]
        path.write_text(json.dumps(record))
    summary = build_summary(load_run(run), n_bootstrap=100)
    assert summary["decision"]["headline"] == "balanced"
    assert [r["rule"] for r in summary["decision"]["rows"]] == ["balanced"]
    assert any("no prior shift" in note for note in summary["notes"])


def test_no_warning_when_no_shown_accuracy_is_below_the_baseline():
    from medsg.report.decision import headline_warning

    def row(rule, acc, headline):
        return {
            "rule": rule,
            "headline": headline,
            "accuracy": {"point": acc},
            "below_majority_baseline": acc < 0.6,
        }

    summary = {"pooled": {"accuracy": 0.7}, "baseline": {"accuracy": 0.6}}
    both_fine = summary | {
        "decision": {"headline": "prior", "rows": [row("balanced", 0.65, False), row("prior", 0.7, True)]}
    }
    assert headline_warning(both_fine) == ""
    one_below = summary | {
        "decision": {"headline": "prior", "rows": [row("balanced", 0.5, False), row("prior", 0.7, True)]}
    }
    assert headline_warning(one_below).startswith("Under the balanced rule")


def test_a_bundle_refuses_a_rule_its_members_cannot_apply(tmp_path):
    from types import SimpleNamespace

    from medsg.core.errors import DataError
    from medsg.deploy.package import Member, ModelBundle

    old = Member(
        "0",
        "fold",
        tmp_path / "w.safetensors",
        1.0,
        {PRIOR_KEY: {"class_prior": [0.7, 0.2, 0.1], "strength": 1.0}},
    )
    config = SimpleNamespace(eval=SimpleNamespace(decision="majority_floor"))
    bundle = ModelBundle(tmp_path, "package", "sgformer_tiny", CLASSES, None, [old], config)
    with pytest.raises(DataError, match="majority_floor strength"):
        bundle.check_decision([old])
    config.eval.decision = "prior"
    assert bundle.check_decision([old]) == "prior"


def test_subgroups_are_scored_under_the_headline_rule(tmp_path):
    run = _run_with_prior_shift(tmp_path, "prior")
    ids = [f"f{fold}_{i}" for fold in (0, 1) for i in range(400)]
    sex = ["female" if i % 2 else "male" for i in range(len(ids))]
    pd.DataFrame({"id": ids, "sex": sex}).to_csv(run / "manifest.csv", index=False)
    data = load_run(run)
    summary = build_summary(data, n_bootstrap=20)
    assert "(prior, as in the per-class table)" in summary["subgroups"]["text"]
    female = next(r for r in summary["subgroups"]["rows"] if r["value"] == "female")
    rows = (data.oof["id"].map(dict(zip(ids, sex, strict=True))) == "female").to_numpy()
    y = data.oof["y_true"].to_numpy()[rows]
    headline = rule_probs(data)["prior"][rows].argmax(1)
    raw = data.probs()[rows].argmax(1)
    assert female["balanced_accuracy"]["point"] == pytest.approx(balanced_accuracy_score(y, headline))
    assert balanced_accuracy_score(y, headline) != pytest.approx(balanced_accuracy_score(y, raw))
