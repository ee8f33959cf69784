"""What the report reads from a run folder or a committed report folder, as one plain record.

``aggregate`` builds it and uses ``protocol`` to describe it; it lives here so that ``protocol`` can take it
without importing ``aggregate`` back (a cycle the import contracts forbid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsg.config import Config


@dataclass
class RunData:
    """Everything the report needs from a run folder; only folds with a DONE marker are included."""

    run_dir: Path
    config: Config | None  # None: a folder without config.yaml (its protocol lines say unknown)
    class_names: list[str]
    folds: list[int]
    missing: list[int]
    oof: pd.DataFrame
    fold_meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    histories: dict[int, pd.DataFrame] = field(default_factory=dict)
    calibrated: pd.DataFrame | None = None  # the OOF rows after each fold's temperature, in ``oof`` order
    calibration: dict[int, dict[str, Any]] = field(default_factory=dict)  # each fold's calibration.json
    # each fold's val_predictions.csv, where present (operating-point thresholds are fixed on them)
    val: dict[int, pd.DataFrame] = field(default_factory=dict)
    # a seed ensemble's ensemble.json (``medsg.report.ensemble``): its members, method and protocol lines
    ensemble: dict[str, Any] | None = None

    def probs(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        """(n, C) float64 class probabilities of ``frame`` (default: all pooled OOF rows), in class order."""
        frame = self.oof if frame is None else frame
        return frame[[f"p_{c}" for c in self.class_names]].to_numpy(dtype=np.float64)
