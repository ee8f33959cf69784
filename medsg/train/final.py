"""The final model (``medsg run CONFIG --fold all``): every image, a fixed number of epochs, no selection.

As nnU-Net's ``all`` fold: once cross-validation has measured the recipe, one more model is trained on all the
data for deployment. It has no validation split, so nothing can be selected or calibrated on it:

* it stops after a fixed number of epochs, decided before it starts and recorded in ``fold_all/final.json``:
  the median of the epochs the cross-validation folds selected (when every fold is finished and selection was
  on the inner validation split), else the schedule length ``train.epochs``. The learning-rate schedule is the
  folds' own (``train.epochs`` long), so at its last epoch the model is where the folds were when selected;
* its temperature is the median of the folds' temperatures (``medsg.calibration``);
* it has no test fold: its own performance is not measured. The cross-validated metrics describe the fold
  models, and the model card says so.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from medsg.calibration import CALIBRATION_FILE, PRIOR_KEY, median_temperature, prior_shift_record
from medsg.config import Config
from medsg.core.io import atomic_write_text, read_json
from medsg.core.run_folder import ALL, RunFolder
from medsg.train.fold import FoldTrainer

log = logging.getLogger(__name__)

FINAL_FILE = "final.json"


def final_plan(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """How long the final model trains and which temperature it gets, from the finished CV folds.

    Read from ``fold_all/final.json`` when it exists, so a resumed final model keeps the plan it started with.
    """
    run = RunFolder(run_dir)
    saved = read_json(run.final.file(FINAL_FILE), default={})
    if saved:
        return saved
    k, schedule = cfg.splits.k, cfg.train.epochs
    done = run.finished(k)
    selected = [read_json(f.metrics, default={}).get("best_epoch") for f in run.folds(k) if done]
    if done and cfg.train.selection == "inner_val" and all(isinstance(e, int) for e in selected):
        epochs = max(1, math.floor(float(np.median(selected)) + 0.5))
        rule = f"median of the epochs selected in the {k} cross-validation folds ({selected})"
    else:
        epochs = schedule
        why = "selection is last_epoch" if done else "not every cross-validation fold is finished"
        rule = f"the schedule length train.epochs ({why})"
    records = [read_json(f.file(CALIBRATION_FILE), default={}) for f in run.folds(k) if done]
    temps = [float(r["temperature"]) for r in records if r.get("temperature") is not None]
    shifts = [r.get(PRIOR_KEY, {}) for r in records]
    strengths = [float(r["strength"]) for r in shifts if r.get("fitted")]
    # a uniform training prior records floor s = 0 unfitted: still the fold's rule, so it counts
    floors = [float(r["floor_strength"]) for r in shifts if "floor_strength" in r]
    temperature = median_temperature(temps)
    t_rule = (
        f"median of the {len(temps)} cross-validation folds' temperatures {[round(t, 4) for t in temps]}"
        if temps
        else "1.0: no fold temperature available (uncalibrated)"
    )
    prior, prior_rule = _fold_median(
        strengths, "prior-shift strengths", (0.0, "0.0: no fold fitted a prior shift")
    )
    floor, floor_rule = _fold_median(
        floors,
        "majority_floor strengths",
        (None, "none: no fold fitted a majority_floor strength, so the final model cannot apply that rule"),
    )
    return {
        "epochs": int(epochs),
        "epochs_rule": rule,
        "schedule_epochs": schedule,
        "temperature": temperature,
        "temperature_rule": t_rule,
        "prior_strength": prior,
        "prior_strength_rule": prior_rule,
        "floor_strength": floor,
        "floor_strength_rule": floor_rule,
    }


def _fold_median(values: list[float], what: str, empty: tuple[float | None, str]) -> tuple[float | None, str]:
    """(the median of the folds' prior-shift ``values``, how it was made), or ``empty`` (a value and why)
    when there are none."""
    if not values:
        return empty
    return float(np.median(values)), (
        f"median of the {len(values)} cross-validation folds' {what} {[round(v, 4) for v in values]}"
    )


class FinalTrainer(FoldTrainer):
    """Trains on every image for ``plan["epochs"]`` epochs of the ``train.epochs`` schedule; no test fold.

    ``cfg`` must select ``last_epoch`` (there is no validation split to select on); ``run_final`` passes such
    a copy. ``test`` is replaced by writing the plan, the temperature and the DONE marker.
    """

    def __init__(self, *args: Any, plan: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.max_epochs = int(plan["epochs"])

    def run(self) -> dict[str, Any]:
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            atomic_write_text(self.fold_dir / FINAL_FILE, json.dumps(self.plan, indent=2) + "\n")
        return super().run()

    def test(self) -> dict[str, Any]:
        """No test fold: record what was trained, the temperature, and mark the model finished."""
        result = {
            **self.plan,
            "fold": ALL,
            "epochs_trained": self.epoch,
            "n_train": len(self.data.train),
            "selection": "none: weights after the last epoch (no validation split)",
        }
        if self.dist.is_main:
            atomic_write_text(self.fold_dir / FINAL_FILE, json.dumps(result, indent=2) + "\n")
            calibration = {
                "temperature": self.plan["temperature"],
                "fitted": False,
                "reason": self.plan["temperature_rule"],
                "fold": ALL,
                # a plan written before the decision rule existed has no strength: no shift
                PRIOR_KEY: prior_shift_record(
                    None,
                    None,
                    self.data.train_labels,
                    self.data.class_names,
                    strength=self.plan.get("prior_strength", 0.0),
                    reason=(
                        self.plan.get("prior_strength_rule", "0.0: planned before prior shifts existed")
                        + "; majority_floor strength: "
                        + self.plan.get("floor_strength_rule", "none: planned before that rule existed")
                    ),
                    floor_strength=self.plan.get("floor_strength"),
                ),
            }
            atomic_write_text(self.fold_dir / CALIBRATION_FILE, json.dumps(calibration, indent=2) + "\n")
            self.folder.mark_done("final model (all images) finished\n")
        log.info(
            "final model: %d images, %d epochs (%s), temperature %.3f",
            len(self.data.train),
            self.epoch,
            self.plan["epochs_rule"],
            self.plan["temperature"],
        )
        return result
