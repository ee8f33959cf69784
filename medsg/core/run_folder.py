"""The run folder's layout, in one place: nnU-Net-style ``<output_dir>/<experiment>/fold_K/``.

Every module that reads or writes a run folder names its files through ``RunFolder`` and ``FoldFolder``, so
the layout (and the meaning of "finished") cannot drift between training, reports, packages and reproduce.

    <run>/config.yaml            the resolved config, with provenance
    <run>/fold_K/                one cross-validation fold; fold_all/ is the final model on every image
    <run>/fold_K/DONE            written last: the fold's predictions and metrics are complete
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medsg.core.io import atomic_write_text

CONFIG_FILE = "config.yaml"
DONE_FILE = "DONE"
ALL = "all"  # the final model's fold name: fold_all/


@dataclass(frozen=True)
class FoldFolder:
    """``<run>/fold_<name>``: one fold's files."""

    path: Path
    name: int | str

    @property
    def done(self) -> bool:
        """Finished: DONE is written after the predictions, metrics and calibration."""
        return (self.path / DONE_FILE).is_file()

    def mark_done(self, text: str) -> None:
        atomic_write_text(self.path / DONE_FILE, text)

    @property
    def predictions(self) -> Path:
        """Test-fold predictions (``id, y_true, y_pred, p_<class>``)."""
        return self.path / "predictions.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    def checkpoint(self, which: str = "best") -> Path:
        """``checkpoint_best.pt`` (the selected weights) or ``checkpoint_last.pt`` (resume state)."""
        return self.path / f"checkpoint_{which}.pt"

    def file(self, name: str) -> Path:
        """Any other file of the fold (calibration.json, val_predictions.csv, ...)."""
        return self.path / name


@dataclass(frozen=True)
class RunFolder:
    """``<output_dir>/<experiment>``: its config and its folds."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    def file(self, name: str) -> Path:
        """A run-level file (summary.json, protocol.json, splits.json, manifest.csv, audit.json, ...)."""
        return self.path / name

    def fold(self, fold: int | str) -> FoldFolder:
        """``fold_<k>``, or ``fold_all`` for the final model."""
        return FoldFolder(self.path / f"fold_{fold}", fold)

    @property
    def final(self) -> FoldFolder:
        return self.fold(ALL)

    @property
    def has_trained(self) -> bool:
        """Some fold has trained (a checkpoint or DONE): its config and data are then fixed for the run."""
        return any(self.path.glob(f"fold_*/{DONE_FILE}")) or any(self.path.glob("fold_*/checkpoint_*.pt"))

    def pending(self, folds: Iterable[int | str]) -> list[int | str]:
        """The folds of ``folds`` not DONE yet (``all`` names the final model), in order."""
        return [f for f in folds if not self.fold(f).done]

    def folds(self, k: int) -> list[FoldFolder]:
        """The k cross-validation folds, in order (whether or not they exist yet)."""
        return [self.fold(f) for f in range(k)]

    def folds_on_disk(self) -> list[FoldFolder]:
        """The numbered fold folders present, in order (for a run folder whose config is unknown)."""
        names = [d.name[5:] for d in self.path.glob("fold_*") if d.is_dir()]
        return [self.fold(k) for k in sorted(int(n) for n in names if n.isdigit())]

    def finished(self, k: int) -> bool:
        """Every cross-validation fold is DONE."""
        return all(f.done for f in self.folds(k))
