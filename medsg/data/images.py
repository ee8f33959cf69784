"""Any image file -> (H, W, 3) uint8 RGB by one documented rule, for the audit, the pipelines and the explanations.

One function reads pixels everywhere (``read_image``), so the audit accepts exactly what training reads and a
panel shows exactly what the model saw. The rules (the README's "Your own data" lists them for users):

* **Format by content, not by name.** DICOM (``DICM`` at byte 128, or a ``.dcm`` / ``.dicom`` file without the
  preamble) goes to ``medsg.data.dicom``. Everything else is opened by Pillow, restricted to PNG, JPEG, TIFF,
  BMP, GIF, WebP, JPEG 2000 and PNM (other Pillow plugins would, e.g., run Ghostscript on an EPS file). A file
  whose content disagrees with its suffix (a JPEG saved as ``.png``) loads, with a ``format_mismatch`` warning.
* **Orientation.** The EXIF (or TIFF) orientation tag is applied, as every viewer does: that is the image an
  annotator saw and drew a mask on.
* **8-bit modes** (1, L, P, PA, LA, RGB, RGBA, YCbCr, ...) -> Pillow's RGB conversion; alpha is dropped.
* **CMYK** -> RGB through the file's own ICC profile when it has one (LittleCMS), else Pillow's conversion.
* **Deeper grey** (16-bit ``I;16``, 32-bit ``I``, float ``F``) -> the 0.5-99.5 percentile window of the image,
  mapped to 0-255. Not the dtype's range: clinical exports store 10-12-bit data in 16 bits, which the dtype's
  range would show nearly black. DICOM without a window uses the same rule (``percentile_window``).
* **Grey is replicated to 3 channels**, since the pretrained backbones expect RGB.
* **Multi-frame files.** DICOM: the middle frame (see ``medsg.data.dicom``). Multi-page TIFF, animated GIF /
  PNG / WebP: the first frame, which viewers show. Both with a ``multi_frame`` warning naming the file. An MPO
  (a camera JPEG with an embedded preview) is one picture and loads silently.
* **Size.** More than ``MAX_PIXELS`` pixels per frame (Pillow's decompression-bomb limit, 89.5 MP, ~270 MB as
  RGB) is refused from the header, before any pixel is decoded. Refused rather than downscaled on read: only
  JPEG can be reduced while decoding (``draft``); every other format must be decoded in full first, which is the
  memory a bomb is built to exhaust, and at a 224-448 px model input nothing is lost by asking for a smaller
  export. A shorter side under ``MIN_SIDE`` px or a longer side over ``MAX_ASPECT`` times the shorter is refused
  as ``degenerate`` (a dot, a line, an icon: nothing a model can learn from).

Unusable files raise ``UnreadableImage`` (a ``DataError``) whose ``kind`` the audit reports and whose message
names the file, the reason and what to do. Usable files with something worth knowing carry ``Note``s, which the
audit reports as warnings and ``read_image`` logs once per file.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medsg.errors import DataError

log = logging.getLogger(__name__)

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

_BOMB_FILTER = ("ignore", None, Image.DecompressionBombWarning, None, 0)


def _quiet_bomb_warning() -> None:
    """medsg refuses over-sized images itself (MAX_PIXELS); Pillow's own warning would only repeat it.

    Checked on every decode, not only at import: a ``warnings.catch_warnings`` block around the import (test
    runners, notebooks) would otherwise drop the filter again.
    """
    if _BOMB_FILTER not in warnings.filters:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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


# --------------------------------------------------------------------------------------------- Pillow images
def _oriented(image: Image.Image) -> Image.Image:
    """The image as viewers show it (EXIF / TIFF orientation applied); unchanged if the EXIF is unreadable."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # a malformed EXIF block: the pixels are still fine
        return image


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK -> RGB through the embedded ICC profile when there is one (what print software does)."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken or non-CMYK profile: fall back to Pillow's conversion
            pass
    return image.convert("RGB")


def pil_to_array(image: Image.Image) -> np.ndarray:
    """An open Pillow image -> (H, W, 3) uint8 RGB by the module's rules (orientation, deep grey, CMYK)."""
    image = _oriented(image)
    mode = image.mode
    if mode in DEEP_MODES or mode.startswith("I;"):
        return grey_to_rgb(to_uint8(percentile_window(np.asarray(image))))
    if mode == "CMYK":
        image = _cmyk_to_rgb(image)
    elif mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as exc:
            raise UnreadableImage(
                getattr(image, "filename", "") or "image",
                "unsupported_mode",
                f"Pillow mode {mode} cannot be converted to RGB ({exc})",
                "save it as 8-bit RGB or grey, or 16-bit grey",
                size=image.size,
            ) from exc
    return np.array(image, dtype=np.uint8)


def _decode_pil(path: Path) -> DecodedImage:
    """Decode with Pillow (header checks first); raises UnidentifiedImageError for non-Pillow content."""
    size = None
    try:
        with Image.open(path, formats=PIL_FORMATS) as im:
            size = im.size
            check_dimensions(path, *im.size)
            fmt, mode = str(im.format), im.mode
            frames = int(getattr(im, "n_frames", 1) or 1)
            notes = [n for n in (suffix_note(path, fmt),) if n]
            if frames > 1 and fmt != "MPO":
                notes.append(
                    Note(
                        "multi_frame",
                        f"{frames} frames or pages; the first is used",
                        "export the frame you want as its own file to use another",
                    )
                )
            im.load()
            pixels = pil_to_array(im)
    except (UnidentifiedImageError, UnreadableImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # (warnings as errors)
        raise UnreadableImage(
            path, "too_large", f"over Pillow's decompression-bomb limit ({exc})", "export it smaller"
        ) from exc
    except MemoryError as exc:
        raise UnreadableImage(path, "too_large", "out of memory while decoding", "export it smaller") from exc
    except OSError as exc:
        kind = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        raise UnreadableImage(
            path, kind, f"cannot be decoded ({exc})", "re-export or re-download the file", size=size
        ) from exc
    except Exception as exc:  # a hostile file can make any decoder fail in any way
        raise UnreadableImage(
            path,
            "corrupt",
            f"cannot be decoded ({type(exc).__name__}: {exc})",
            "re-export or re-download the file",
            size=size,
        ) from exc
    return DecodedImage(pixels, fmt, mode, frames, notes)


# --------------------------------------------------------------------------------------------- entry points
def decode_image(path: str | Path) -> DecodedImage:
    """Decode one file by the module's rules; raise ``UnreadableImage`` naming the file, reason and remedy."""
    path = Path(path)
    if path.is_dir():
        raise UnreadableImage(
            path, "not_image", "a folder, not an image file", "list the image files instead"
        )
    if not path.is_file():
        raise UnreadableImage(
            path, "missing_file", "file not found", "restore it or remove its row from the data"
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as exc:  # permissions, a network drive gone, ...
        raise UnreadableImage(
            path, "unreadable_file", f"cannot be read ({exc.strerror or exc})", "check that it can be read"
        ) from exc
    if not head:
        raise UnreadableImage(path, "zero_byte", "the file is empty", "restore or re-export it")
    from medsg.data import dicom

    _quiet_bomb_warning()
    if dicom.has_dicom_magic(head):
        return dicom.decode_dicom(path)
    try:
        return _decode_pil(path)
    except UnidentifiedImageError as exc:
        if path.suffix.lower() in dicom.DICOM_SUFFIXES:  # DICOM without the 128-byte preamble (old exports)
            return dicom.decode_dicom(path, preamble=False)
        raise UnreadableImage(
            path,
            "not_image",
            "not an image medsg reads (PNG, JPEG, TIFF, BMP, GIF, WebP, JPEG 2000, PNM or DICOM)",
            "convert it to PNG, or remove it from the data",
        ) from exc


def read_mask(path: str | Path) -> np.ndarray:
    """One mask file -> bool (H, W), oriented like its image; any colour channel counts, alpha is ignored.

    Binarised at > 127 when the file holds values above 127 (0/255 masks, JPEG noise around them, 16-bit
    0/65535), else at > 0 (0/1 masks and small label values). Masks are read by Pillow only: a DICOM SEG is a
    different object (segments x frames), so it is named and refused rather than guessed at.
    """
    path = Path(path)
    action = "re-export the mask as PNG; the audit policy leaves it out and keeps the image"
    try:
        with Image.open(path, formats=PIL_FORMATS) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise UnreadableImage(
                    path, "too_large", f"mask of {im.size} px is over the pixel budget", action
                )
            im = _oriented(im)
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except UnreadableImage:
        raise
    except FileNotFoundError as exc:
        raise UnreadableImage(path, "missing_file", "mask file not found", action) from exc
    except UnidentifiedImageError as exc:
        raise UnreadableImage(
            path, "not_image", "not a mask image medsg reads (PNG, TIFF, BMP, ...)", action
        ) from exc
    except OSError as exc:
        kind = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        raise UnreadableImage(path, kind, f"mask cannot be decoded ({exc})", action) from exc
    except Exception as exc:
        raise UnreadableImage(
            path, "corrupt", f"mask cannot be decoded ({type(exc).__name__}: {exc})", action
        ) from exc
    if arr.dtype == bool:
        return arr
    if arr.ndim == 3:  # LA -> L, RGB(A) -> brightest colour channel
        arr = arr[..., 0] if arr.shape[-1] == 2 else arr[..., :3].max(axis=-1)
    return arr > (127 if arr.size and arr.max() > 127 else 0)


_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of any supported file (see the module docstring for every rule).

    The one reader of the audit, the MONAI pipelines (``medsg.data.transforms.LoadRGBImaged``) and the
    explanations. Each note (a JPEG named .png, a multi-frame file, ...) is logged as a warning once per file.
    """
    decoded = decode_image(path)
    for note in decoded.notes:
        key = (str(path), note.kind)
        with _logged_lock:
            if key in _logged:
                continue
            _logged.add(key)
        log.warning("%s: %s; %s", path, note.detail, note.action)
    return decoded.pixels
