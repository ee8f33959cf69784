"""train.distill_teachers: one network per fold taught by other runs' fold models, never by a model that saw the
fold's test images; the teachers shape training, resume with it and never reach the student's weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import PACKAGE_RECIPE
from torch import nn

from medsg.core.errors import ConfigError
from medsg.demo import make_synthetic_busi
from medsg.deploy.package import export_package
from medsg.report.protocol import recipe
from medsg.train.distill import DistillTrainer, distill_loss, teacher_members, teacher_probabilities
from medsg.train.fold import FoldTrainer, trainer_class
from medsg.train.state import load_training_checkpoint
from medsg.workflows.experiment import run_experiment

FOLDS = [0, 1]


def test_distill_loss_is_zero_at_the_soft_target_and_pulls_the_student_to_it():
    target = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    for temperature in (1.0, 2.0, 4.0):
        at_target = torch.log(target) * temperature  # softmax(z / T) == target
        assert distill_loss(at_target, target, temperature) < 1e-6
    student = torch.zeros(2, 3, requires_grad=True)
    before = distill_loss(student, target, 2.0)
    assert before > 0.1
    before.backward()
    with torch.no_grad():
        moved = student - 1.0 * student.grad
    assert distill_loss(moved, target, 2.0) < before
    assert (moved.argmax(dim=1) == target.argmax(dim=1)).all()  # a step down the gradient favours the target


def test_teacher_probabilities_average_the_teachers_softened_outputs():
    class Fixed(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    a, b = Fixed([2.0, 0.0, 0.0]), Fixed([0.0, 0.0, 4.0])
    images = torch.zeros(3, 1)
    got = teacher_probabilities([a, b], images, 2.0)
    want = (torch.softmax(torch.tensor([1.0, 0, 0]), 0) + torch.softmax(torch.tensor([0, 0, 2.0]), 0)) / 2
    assert got.shape == (3, 3) and torch.allclose(got, want.expand(3, -1))
    assert torch.allclose(got.sum(dim=1), torch.ones(3))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, make_config):
    """A tiny synthetic BUSI, one teacher run (folds 0 and 1, and its final model) and its package."""
    out = tmp_path_factory.mktemp("distill")
    root = make_synthetic_busi(out / "data", n_per_class=4, size=40, seed=3)
    cfg = make_config(root, out, PACKAGE_RECIPE | {"experiment.name": "teacher", "experiment.seed": 1})
    run = run_experiment(cfg, folds=[*FOLDS, "all"], quiet=True)
    package = export_package(run, out / "teacher_package")
    return root, out, run, package


def _student(make_config, teacher, name: str, teachers, **extra):
    root, out, _, _ = teacher
    keys = {
        "experiment.name": name,
        "experiment.report_dir": str(out / "reports" / name),
        "experiment.seed": 0,
        "train.distill_teachers": [str(t) for t in teachers],
    }
    return make_config(root, out, PACKAGE_RECIPE | keys | extra)


def test_configs_without_teachers_keep_their_hash_and_teachers_compare_as_folders(tmp_path, monkeypatch):
    """Runs saved before distillation existed resume and hash as before; a teacher named relative or absolute is
    the same teacher; a weight or temperature without teachers is refused."""
    from medsg.config import config_from_dict, config_hash, resolved_config, result_diff

    raw = {
        "experiment": {"name": "x"},
        "model": {"name": "sgformer_tiny"},
        "data": {"adapter": "busi", "root": "."},
    }
    new = resolved_config(config_from_dict(raw, check_paths=False))
    old = {**new, "train": {k: v for k, v in new["train"].items() if not k.startswith("distill")}}
    assert result_diff(old, new) == [] and config_hash(old) == config_hash(new)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t").mkdir()
    relative = resolved_config(config_from_dict(raw, ["train.distill_teachers=[t]"], check_paths=False))
    absolute = resolved_config(
        config_from_dict(raw, [f"train.distill_teachers=[{tmp_path / 't'}]"], check_paths=False)
    )
    assert result_diff(relative, absolute) == [] and result_diff(old, relative)
    assert config_hash(old) != config_hash(relative)
    with pytest.raises(ConfigError, match="distill_weight / distill_temperature are set but .*empty"):
        config_from_dict(raw, ["train.distill_weight=0.7"], check_paths=False)


def test_teachers_select_the_distill_trainer_and_refuse_what_it_cannot_do(make_config, teacher):
    _, _, run, _ = teacher
    assert trainer_class(_student(make_config, teacher, "s", [run])) is DistillTrainer
    assert trainer_class(_student(make_config, teacher, "s", [])) is FoldTrainer
    with pytest.raises(ConfigError, match="mask_loss_weight and train.distill_teachers are both set"):
        trainer_class(_student(make_config, teacher, "s", [run], **{"train.mask_loss_weight": 1.0}))
    with pytest.raises(ConfigError, match="does not learn from teachers"):
        trainer_class(
            _student(make_config, teacher, "s", [run], **{"train.trainer": "medsg.train.final.FinalTrainer"})
        )
    with pytest.raises(ConfigError, match=r"train.distill_teachers\[1\]: model folder not found: .*nowhere"):
        _student(make_config, teacher, "s", [run, run.parent / "nowhere"])


@pytest.mark.e2e
def test_a_distilled_fold_learns_from_its_teachers_resumes_exactly_and_holds_only_the_student(
    make_config, teacher, interrupt_after_first_epoch
):
    """Taught by a run folder and by a package: the same teachers, so the same student; unlike the same seed
    without teachers. Killed after epoch 1 and resumed, the student is bitwise the one trained in one go."""
    _, out, run, package = teacher
    by_run = run_experiment(_student(make_config, teacher, "by_run", [run]), folds=FOLDS, quiet=True)
    by_package = run_experiment(_student(make_config, teacher, "by_pkg", [package]), folds=FOLDS, quiet=True)
    plain = run_experiment(_student(make_config, teacher, "plain", []), folds=FOLDS, quiet=True)

    def probs(folder, fold=0):
        frame = pd.read_csv(folder / f"fold_{fold}" / "predictions.csv", dtype={"id": str})
        return frame.filter(like="p_").to_numpy()

    for fold in FOLDS:  # the package's float16 teachers round a little differently from the run's float32
        np.testing.assert_allclose(probs(by_run, fold), probs(by_package, fold), atol=5e-3)
    assert np.abs(probs(by_run) - probs(plain)).max() > 1e-3  # the teachers changed what was learned

    killed = _student(make_config, teacher, "killed", [run])
    interrupt_after_first_epoch(lambda: run_experiment(killed, folds=[0], quiet=True))
    resumed = run_experiment(_student(make_config, teacher, "killed", [run]), folds=[0], quiet=True)
    np.testing.assert_array_equal(probs(resumed), probs(by_run))
    a, b = (json.loads((f / "fold_0" / "metrics.json").read_text()) for f in (by_run, resumed))
    assert a["balanced_accuracy"] == b["balanced_accuracy"] and a["best_epoch"] == b["best_epoch"]

    plain_keys = set(load_training_checkpoint(plain / "fold_0" / "checkpoint_best.pt")["state_dict"])
    assert set(load_training_checkpoint(by_run / "fold_0" / "checkpoint_best.pt")["state_dict"]) == plain_keys

    rows = {r["item"]: r["value"] for r in recipe(_student(make_config, teacher, "by_run", [run]))}
    assert (
        "KL to the teachers' mean softmax at T = 2" in rows["loss"] and "0.5 x (cross-entropy" in rows["loss"]
    )
    assert any(k.startswith("teachers") for k in rows)
    record = json.loads((by_run / "fold_0" / "teachers.json").read_text())
    assert [t["member"] for t in record["teachers"]] == ["0"] and len(
        record["teachers"][0]["sha256"][0]
    ) == 64


@pytest.mark.e2e
def test_a_fold_resumes_only_under_the_teachers_it_started_with(
    make_config, teacher, tmp_path, interrupt_after_first_epoch
):
    """Other teacher weights at the same path would teach other targets: the resume is refused, naming them."""
    import shutil

    _, _, run, _ = teacher
    moved = shutil.copytree(run, tmp_path / "teacher_copy")
    killed = _student(make_config, teacher, "changed", [moved])
    interrupt_after_first_epoch(lambda: run_experiment(killed, folds=[0], quiet=True))
    record = Path(killed.experiment.output_dir) / killed.experiment.name / "fold_0" / "teachers.json"
    started_with = record.read_text()
    shutil.copyfile(moved / "fold_1" / "checkpoint_best.pt", moved / "fold_0" / "checkpoint_best.pt")
    with pytest.raises(ConfigError, match=r"train.distill_teachers \[0\] differ from those the fold started"):
        run_experiment(_student(make_config, teacher, "changed", [moved]), folds=[0], quiet=True)
    assert record.read_text() == started_with  # the file the message points to still names the originals


@pytest.mark.e2e
def test_a_teacher_tested_on_other_images_is_refused(make_config, teacher, tmp_path):
    """A teacher from another split may have trained on this fold's test images: refused before training."""
    root, _, _, _ = teacher
    other = make_config(
        root,
        tmp_path,
        PACKAGE_RECIPE | {"experiment.name": "other", "splits.seed": 5, "train.epochs": 1},
    )
    other_run = run_experiment(other, folds=[0], quiet=True)
    student = _student(make_config, teacher, "student", [other_run])
    with pytest.raises(
        ConfigError, match=r"fold 0 of .*other was not tested on this run's fold 0 test images"
    ):
        run_experiment(student, folds=[0], quiet=True)


@pytest.mark.e2e
def test_the_final_model_is_taught_by_the_teachers_final_models(make_config, teacher, tmp_path, caplog):
    """--fold all has no test fold: each teacher's final model (trained on every image) teaches it, and a
    teacher without one is refused by name."""
    root, _, run, package = teacher
    with caplog.at_level("INFO", logger="medsg.train.distill"):
        student = run_experiment(
            _student(make_config, teacher, "final", [run, package]), folds=["all"], quiet=True
        )
    assert (student / "fold_all" / "DONE").is_file()
    taught = [r.getMessage() for r in caplog.records if "teacher" in r.getMessage()]
    assert len(taught) == 2 and all(m.endswith("(member all)") for m in taught), taught
    folds_only = make_config(
        root, tmp_path, PACKAGE_RECIPE | {"experiment.name": "folds_only", "train.epochs": 1}
    )
    without_final = run_experiment(folds_only, folds=[0], quiet=True)
    with pytest.raises(ConfigError, match=r"distill_teachers\[0\]: .*folds_only has no final model"):
        run_experiment(_student(make_config, teacher, "final2", [without_final]), folds=["all"], quiet=True)
    # every fold's teachers are checked before the first fold trains: fold 1's absence stops fold 0 too
    with pytest.raises(ConfigError, match=r"distill_teachers\[0\]: .*folds_only has no fold 1 model"):
        run_experiment(_student(make_config, teacher, "early", [without_final]), folds=FOLDS, quiet=True)
    assert not (teacher[1] / "runs" / "early" / "fold_0").exists()


def test_a_teacher_of_other_classes_or_input_is_refused_by_name(monkeypatch):
    from types import SimpleNamespace

    from medsg.train.distill import _check_input

    norm = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    prep = SimpleNamespace(img_size=64, mean=norm[0], std=norm[1])
    bundle = SimpleNamespace(source="t", class_names=["a", "b"], preprocessing=prep)
    _check_input(bundle, "train.distill_teachers[0]", 64, norm)  # the same input
    monkeypatch.setattr("medsg.train.distill._load_teacher", lambda source, where: bundle)
    with pytest.raises(ConfigError, match=r"distill_teachers\[0\]: t predicts \['a', 'b'\].*same order"):
        teacher_members(["t"], 0, set(), ["b", "a"])
    with pytest.raises(ConfigError, match="reads 64 px images.*this run 96 px"):
        _check_input(bundle, "train.distill_teachers[0]", 96, norm)
    with pytest.raises(ConfigError, match="std"):
        _check_input(bundle, "train.distill_teachers[0]", 64, (norm[0], (0.5, 0.5, 0.5)))
