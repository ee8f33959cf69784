"""Trained models as users receive them: bundles of a run folder or an exported package, prediction with
flags, external evaluation, and the training reference that flags unlike images."""
