"""Training: one fold's loop (``fold``), the k-fold driver (``kfold``), run locks, DDP helpers, checkpoints."""

from medsg.train.exceptions import RunLocked, TrainingDiverged

__all__ = ["RunLocked", "TrainingDiverged"]
