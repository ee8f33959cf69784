"""Exceptions a user can cause. Each message names the file or key at fault and says what to do."""


class MedsgError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(MedsgError, ValueError):
    """A configuration key is unknown, mistyped or missing."""


class DataError(MedsgError, ValueError):
    """A dataset folder, manifest, image or split file is missing or malformed."""


class CheckpointError(MedsgError, ValueError):
    """A checkpoint cannot be loaded safely or does not match the model."""


class InputSizeError(MedsgError, ValueError):
    """The model cannot serve this input size."""


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


class ReportRefused(MedsgError, RuntimeError):
    """Writing a report would replace another run's report (or a complete one by a partial run)."""
