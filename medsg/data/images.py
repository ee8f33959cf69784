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
* **16-bit colour** (PNG, TIFF) -> Pillow's RGB, which keeps each channel's high byte, with a ``deep_colour``
  warning naming the file: unlike deep grey it cannot be windowed, as Pillow has no 16-bit colour mode.
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
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medsg.data import dicom
from medsg.data.pixels import (
    DEEP_MODES,
    MAX_PIXELS,
    PIL_FORMATS,
    DecodedImage,
    Note,
    UnreadableImage,
    check_dimensions,
    grey_to_rgb,
    percentile_window,
    suffix_note,
    to_uint8,
)

log = logging.getLogger(__name__)


_BOMB_FILTER = ("ignore", None, Image.DecompressionBombWarning, None, 0)


def _quiet_bomb_warning() -> None:
    """medsg refuses over-sized images itself (MAX_PIXELS); Pillow's own warning would only repeat it.

    Checked on every decode, not only at import: a ``warnings.catch_warnings`` block around the import (test
    runners, notebooks) would otherwise drop the filter again.
    """
    if _BOMB_FILTER not in warnings.filters:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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
            rawmodes = [str(tile[3]) for tile in im.tile]
            if mode in ("RGB", "RGBA") and any(";16" in r for r in rawmodes):
                grey = any(r.startswith("LA;16") for r in rawmodes)  # 16-bit grey + alpha opens as RGBA
                notes.append(  # Pillow has no 16-bit colour mode: it keeps each channel's high byte
                    Note(
                        "deep_colour",
                        f"16-bit {'grey with alpha' if grey else 'colour'}, read as the high byte of each "
                        "channel: data stored in fewer than 16 bits (10-12-bit exports) look dark",
                        "drop the alpha channel (16-bit grey is windowed by percentile)"
                        if grey
                        else "export it as 8-bit colour, or as 16-bit grey, which medsg windows by percentile",
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
