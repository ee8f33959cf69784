"""Training errors a user can act on; subclasses of ``MedsgError`` so the CLI prints one line."""

from __future__ import annotations

from medsg.errors import MedsgError


class TrainingDiverged(MedsgError, RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""

    def __init__(self, fold: int, epoch: int, step: int, lr: float, loss: float) -> None:
        super().__init__(
            f"training diverged in fold {fold}, epoch {epoch}, step {step}: loss is {loss} at lr {lr:.3g}. "
            "The last good checkpoint_last.pt is kept; lower train.lr or set train.grad_clip (e.g. 1.0), "
            "then re-run to resume."
        )
        self.fold, self.epoch, self.step, self.lr = fold, epoch, step, lr


class RunLocked(MedsgError, RuntimeError):
    """Another live process is training in the same run folder."""
