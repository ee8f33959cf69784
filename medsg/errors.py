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
