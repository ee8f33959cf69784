"""Training: one fold's loop (``fold``), the k-fold driver (``kfold``), run locks, DDP helpers, checkpoints.

The training errors (``TrainingDiverged``, ``RunLocked``) live in ``medsg.core.errors`` with the other user errors.
"""
