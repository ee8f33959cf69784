"""Pixel primitives shared by every decoder: limits, the decoded-image record, windowing, and the errors.

``medsg.data.images`` (Pillow files) and ``medsg.data.dicom`` both build on this module, so neither imports
the other's internals: images dispatches to dicom, and dicom needs only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsg.core.errors import DataError

MAX_PIXELS = (
    89_478_485  # per frame: Pillow's default decompression-bomb limit (0.25 GiB at 3 bytes per pixel)
)
MIN_SIDE = 8  # px: a shorter side holds no usable image
MAX_ASPECT = 50  # longer side / shorter side
PERCENTILES = (0.5, 99.5)  # window for deep grey without a DICOM window
PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "GIF", "WEBP", "JPEG2000", "PPM")
DEEP_MODES = ("I", "F")  # plus every "I;..." mode (16-bit grey)
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "MPO": (".jpg", ".jpeg", ".mpo"),
    "TIFF": (".tif", ".tiff"),
    "BMP": (".bmp", ".dib"),
    "DIB": (".bmp", ".dib"),
    "GIF": (".gif",),
    "WEBP": (".webp",),
    "JPEG2000": (".jp2", ".j2k", ".jpx", ".jpf", ".j2c"),
    "PPM": (".ppm", ".pgm", ".pbm", ".pnm"),
    "DICOM": (".dcm", ".dicom", ".dic"),
}
_KNOWN_SUFFIXES = frozenset(s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes)


class UnreadableImage(DataError):
    """A file that cannot be used as an image. ``kind`` classifies it for the audit (``missing_file``,
    ``unreadable_file``, ``zero_byte``, ``not_image``, ``truncated``, ``corrupt``, ``too_large``, ``degenerate``,
    ``unsupported_mode``, ``no_pixel_data``, ``missing_decoder``, ``unsupported_transfer_syntax``)."""

    def __init__(
        self,
        path: str | Path,
        kind: str = "corrupt",
        reason: str = "",
        action: str = "",
        size: tuple[int, int] | None = None,
    ) -> None:
        # One positional argument (what pickling and torch's worker re-raise pass) is the whole message.
        super().__init__(f"{path}: {reason}; {action}" if reason else str(path))
        self.path, self.kind, self.reason, self.action, self.size = str(path), kind, reason, action, size

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.kind, self.reason, self.action, self.size))


@dataclass(frozen=True)
class Note:
    """Something worth knowing about a file that still loads: the audit reports it as a warning."""

    kind: str
    detail: str
    action: str


@dataclass
class DecodedImage:
    """Pixels ready for the model, plus what the file was and any notes about it."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    format: str  # PNG, JPEG, ..., DICOM
    mode: str  # Pillow mode, or DICOM photometric interpretation and bit depth
    frames: int = 1
    notes: list[Note] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


# --------------------------------------------------------------------------------------------- intensities
def window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped linearly from [low, high] to [0, 1], clipped; all zeros when the window is empty.

    float32 throughout: ample for 256 output levels, and half the memory of a large 16-bit image in float64.
    """
    values = np.asarray(values, dtype=np.float32)
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """[0, 1] by the image's own percentile window (min-max when that is empty): the rule for deep images
    without a window of their own. Robust to hot pixels and burned-in text, which a min-max window is not."""
    values = np.asarray(values, dtype=np.float32)
    flat = values.ravel()
    finite = flat[np.isfinite(flat)]
    if not finite.size:
        return np.zeros(values.shape, dtype=np.float32)
    sample = finite[:: max(1, finite.size // 1_000_000)]  # a strided sample keeps huge images fast
    low, high = np.percentile(sample, percentiles)
    if not high > low:
        low, high = float(finite.min()), float(finite.max())
    return window(values, low, high)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 0-255 (rounded)."""
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8, the grey level in every channel."""
    return np.repeat(grey[..., None], 3, axis=2)


# --------------------------------------------------------------------------------------------- checks
def check_dimensions(path: str | Path, width: int, height: int, frame: str = "") -> None:
    """Refuse, from the header, frames over the pixel budget and degenerate shapes."""
    short, long = sorted((int(width), int(height)))
    what = f"{width}x{height} px{frame}"
    if width * height > MAX_PIXELS:
        raise UnreadableImage(
            path,
            "too_large",
            f"{what} is over the {MAX_PIXELS:,} pixel budget (refused before decoding)",
            "export it smaller (the model sees 224-448 px); whole-slide images need tiling first",
            size=(width, height),
        )
    if short < MIN_SIDE or long > MAX_ASPECT * short:
        raise UnreadableImage(
            path,
            "degenerate",
            f"{what} is degenerate (a side under {MIN_SIDE} px or a side over {MAX_ASPECT}x the other)",
            "it holds no usable image: replace it with the full image or remove it from the data",
            size=(width, height),
        )


def suffix_note(path: Path, fmt: str) -> Note | None:
    """A ``format_mismatch`` note when the suffix names another known format than the content has."""
    suffix = path.suffix.lower()
    if suffix not in _KNOWN_SUFFIXES or suffix in FORMAT_SUFFIXES.get(fmt, ()):
        return None
    why = " (lossy compression under a lossless name)" if fmt in ("JPEG", "MPO") and suffix == ".png" else ""
    return Note(
        "format_mismatch",
        f"the file is {fmt} but named {suffix}{why}; it loads by its content",
        f"rename it to {FORMAT_SUFFIXES[fmt][0]} so other tools read it right",
    )
