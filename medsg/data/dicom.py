"""DICOM files: pixels to model input by a documented rule, and a header id (patient, study) for grouping.

**Pixels -> RGB** (DICOM PS3.3 C.7.6.3 and C.11, in the order a viewer applies them):

1. One frame is decoded, by pydicom (native, RLE, deflate) or the plugins of the ``dicom`` extra
   (``pip install 'medsg[dicom]'``: python-gdcm for JPEG baseline / extended / lossless and JPEG-LS,
   pylibjpeg + pylibjpeg-openjpeg for JPEG 2000 and HTJ2K, pylibjpeg-rle). YBR_FULL / YBR_FULL_422 become RGB
   in pydicom, YBR_RCT / YBR_ICT in the JPEG 2000 decoder.
2. **Multi-frame files** (ultrasound cine loops, enhanced CT / MR, RT dose) give their **middle frame**, with a
   ``multi_frame`` warning naming the file. Why one frame and not every frame as a sample: a manifest row is a
   file, and so is every prediction, fold assignment and report entry; the frames of a loop are near copies of
   one acquisition that would add little independent evidence while weighting long loops over short ones.
   Why the middle: the first frames of a loop are often the probe settling, and the middle slice of a volume
   shows its centre. Only that frame is decoded, so a long loop costs no more memory than one image.
3. **PALETTE COLOR** -> RGB through the palette (8- or 16-bit entries).
4. **Grey**: the modality LUT (Rescale Slope / Intercept, or a Modality LUT), then the VOI: the first VOI LUT
   of the file if it has one, else its first window (Window Center / Width with its VOI LUT Function: LINEAR,
   LINEAR_EXACT or SIGMOID). Without either, 8-bit-or-less data without a rescale is taken as it is (0 to
   2^BitsStored - 1) and anything deeper gets the image's 0.5-99.5 percentile window
   (``medsg.data.images.percentile_window``). Enhanced multi-frame files carry rescale and window in their
   functional groups; those of the chosen frame are used.
5. **MONOCHROME1** is inverted to display like MONOCHROME2 (low values white).
6. Grey is replicated to 3 channels; RGB deeper than 8 bits gets one percentile window over all channels.

Unusable files are named with the reason: no pixel data (a report, plan or waveform), truncated pixel data,
a transfer syntax pydicom cannot decode, or a missing decoder (the message names the extra to install).

**Privacy.** Only the pixel module and, for grouping, one named header element are read. No header value ever
goes into a message, a log line or a file: a grouping id is stored only as a salted hash (``salted_hash``),
and pydicom's own warnings and log lines, which can quote header values (a birth date it finds malformed, a
name in an unknown character set), are silenced, as is pydicom's value validation on reading.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import hmac
import logging
import secrets
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsg.data.pixels import (
    DecodedImage,
    Note,
    UnreadableImage,
    check_dimensions,
    grey_to_rgb,
    percentile_window,
    suffix_note,
    to_uint8,
    window,
)

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
GROUPING_PREFIX = "dicom:"
EXTRA_HINT = "pip install 'medsg[dicom]'"
PIXEL_KEYWORDS = (
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "BurnedInAnnotation",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "Modality",
)
_FRAME_VALUES = (  # functional group sequence -> the elements it carries per frame
    ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
)
_CONVERT_HINT = (
    "convert it to an uncompressed transfer syntax (e.g. `gdcmconv --raw in.dcm out.dcm` or DCMTK's "
    "`dcmdjpeg`)"
)

_PYDICOM_WARNINGS = r"pydicom(\.|$)"  # warnings raised inside pydicom's modules


def _pydicom() -> Any:
    """pydicom, configured so that reading a header can never print a header value.

    Its value validation is off (its warnings quote the invalid value: a malformed birth date, say), its logger
    is silenced, and warnings raised in its modules are ignored. Checked on every use, since a
    ``warnings.catch_warnings`` block around the first use would drop the filter again.
    """
    import pydicom
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    quiet = logging.getLogger("pydicom")
    if quiet.level != logging.CRITICAL + 1:
        quiet.setLevel(logging.CRITICAL + 1)
    if not any(getattr(f[3], "pattern", f[3]) == _PYDICOM_WARNINGS for f in warnings.filters):
        warnings.filterwarnings("ignore", module=_PYDICOM_WARNINGS)
    return pydicom


def has_dicom_magic(head: bytes) -> bool:
    """Whether the first 132 bytes of a file are a DICOM preamble (``DICM`` at byte 128)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def looks_like_dicom(path: str | Path) -> bool:
    """A DICOM preamble, or a DICOM suffix (old exports lack the preamble)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            return has_dicom_magic(handle.read(132))
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- header
def _read_header(path: Path, preamble: bool) -> Any:
    """The pixel-module elements (nothing else) of ``path``; pixel data is not read."""
    pydicom = _pydicom()
    try:
        # Without the preamble every tag is parsed (values stay unconverted) to tell DICOM from junk.
        tags = list(PIXEL_KEYWORDS) if preamble else None
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=tags)
    except Exception as exc:
        kind = "truncated" if isinstance(exc, EOFError) or "end of file" in str(exc).lower() else "corrupt"
        raise UnreadableImage(
            path,
            kind if preamble else "not_image",
            f"the DICOM header cannot be read ({type(exc).__name__})"
            if preamble
            else "neither an image format medsg reads nor a DICOM file",
            "re-export the file from the source system" if preamble else "convert it to PNG or remove it",
        ) from exc
    tags = list(ds.keys())  # tags only: no value is converted
    if not preamble and not any(tag.group == 0x0008 for tag in tags):  # every real DICOM file has group 8
        raise UnreadableImage(
            path, "not_image", "neither an image format medsg reads nor a DICOM file", "convert it to PNG"
        )
    return ds


def _int(ds: Any, keyword: str, default: int | None = None) -> int | None:
    """An integer header value, ``default`` when absent, empty or malformed."""
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return default


def _first_float(value: Any) -> float | None:
    """The first number of a (possibly multi-valued) DS element, None when absent or malformed."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _frame_header(ds: Any, index: int) -> Any:
    """``ds`` with the rescale and window of frame ``index`` from enhanced multi-frame functional groups."""
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])  # after the shared group, so it wins
    if not groups:
        return ds
    out = copy.copy(ds)
    for group in groups:
        for sequence, keywords in _FRAME_VALUES:
            items = group.get(sequence)
            if items:
                for keyword in keywords:
                    if keyword in items[0]:
                        setattr(out, keyword, items[0][keyword].value)
    return out


# --------------------------------------------------------------------------------------------- decoding
def _decode_error(path: Path, exc: Exception, syntax: str) -> UnreadableImage:
    """Classify a decoder failure (pydicom messages name lengths and syntaxes, never header values)."""
    text = " ".join(str(exc).split())
    lower = text.lower()
    if "no 'pixel data'" in lower or "no pixel data" in lower:
        return UnreadableImage(
            path, "no_pixel_data", "a DICOM file without pixel data", "remove it from the data"
        )
    if any(s in lower for s in ("reshape", "truncat", "shorter", "end of file", "expected length", "buffer")):
        return UnreadableImage(
            path,
            "truncated",
            f"the pixel data is shorter than its header says ({text[:200]})",
            "re-export or re-copy the file (an interrupted transfer?)",
        )
    if "does not support" in lower:  # e.g. 12-bit JPEG Extended: only a GPL plugin decodes it
        return UnreadableImage(
            path,
            "unsupported_transfer_syntax",
            f"no installed decoder handles this {syntax} file ({text[:300]})",
            f"{_CONVERT_HINT}; pylibjpeg-libjpeg decodes 12-bit JPEG but is GPL-3.0, so medsg does not "
            "install it",
        )
    return UnreadableImage(
        path, "corrupt", f"the DICOM pixel data cannot be decoded ({text[:300]})", "re-export the file"
    )


def _check_decoder(path: Path, syntax: Any) -> None:
    """Refuse, before decoding, a transfer syntax pydicom cannot decode or whose plugins are missing."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnreadableImage(
            path,
            "unsupported_transfer_syntax",
            f"transfer syntax {getattr(syntax, 'name', syntax)} ({syntax}) cannot be decoded by pydicom",
            _CONVERT_HINT,
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise UnreadableImage(
            path,
            "missing_decoder",
            f"decoding {syntax.name} needs a plugin that is not installed ({missing})",
            f"install the DICOM decoders: {EXTRA_HINT}",
        )


def _full_dataset(path: Path) -> Any:
    """The whole dataset, for what pixel_array cannot stream (deflate, no file meta)."""
    pydicom = _pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little in (True, None)
            else ExplicitVRBigEndian
        )
        ds.file_meta = meta
    return ds


def _decode_frame(path: Path, header: Any, index: int | None) -> np.ndarray:
    """One decoded frame (rows, columns[, samples]); only that frame's bytes are read where possible."""
    from pydicom.pixels import pixel_array
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        _check_decoder(path, syntax)
    name = getattr(syntax, "name", "DICOM")
    try:
        if syntax is not None and syntax != DeflatedExplicitVRLittleEndian:
            return pixel_array(str(path), index=index)
        return pixel_array(_full_dataset(path), index=index)
    except UnreadableImage:
        raise
    except MemoryError as exc:
        raise UnreadableImage(path, "too_large", "out of memory while decoding", "export it smaller") from exc
    except Exception as exc:
        raise _decode_error(path, exc, name) from exc


def _voi(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """[0, 1] by the file's VOI LUT or window; None when it has neither (or only malformed ones)."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        try:
            from pydicom.pixels import apply_voi

            lut = np.asarray(sequence[0].LUTData, dtype=np.float64)
            return window(apply_voi(values, ds, index=0), float(lut.min()), float(lut.max()))
        except Exception:  # a malformed LUT: try the window, then the percentile rule
            pass
    center, width = _first_float(ds.get("WindowCenter")), _first_float(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return window(x, center - width / 2, center + width / 2)
    if width < 1:  # LINEAR needs a width of at least 1
        return None
    if width == 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)  # PS3.3 C.11.2.1.2.1


def _palette_to_rgb(frame: np.ndarray, ds: Any) -> np.ndarray:
    """PALETTE COLOR indices -> uint8 RGB; 16-bit palette entries are scaled down."""
    from pydicom.pixels import apply_color_lut

    rgb = np.asarray(apply_color_lut(frame, ds))
    if rgb.dtype == np.uint8:
        return rgb
    if rgb.size and rgb.max() <= 255:  # 16-bit entries holding 8-bit values (a common export quirk)
        return rgb.astype(np.uint8)
    return to_uint8(rgb / 65535.0)


def _grey_to_unit(frame: np.ndarray, ds: Any) -> np.ndarray:
    """Grey frame -> [0, 1]: modality LUT, then VOI LUT or window, else as stored (<= 8 bits) or percentiles."""
    from pydicom.pixels import apply_modality_lut

    rescaled = "ModalityLUTSequence" in ds or (
        _first_float(ds.get("RescaleSlope")) not in (None, 1.0)
        or _first_float(ds.get("RescaleIntercept")) not in (None, 0.0)
    )
    values = apply_modality_lut(frame, ds) if rescaled else frame
    unit = _voi(values, ds)
    if unit is not None:
        return unit
    bits = _int(ds, "BitsStored", 8) or 8
    if not rescaled and bits <= 8 and frame.dtype.kind == "u":
        return window(frame, 0.0, float(2**bits - 1))
    return percentile_window(values)


def frame_to_rgb(frame: np.ndarray, ds: Any) -> np.ndarray:
    """One decoded frame -> (H, W, 3) uint8 RGB by the module's rule (palette, grey pipeline, MONOCHROME1)."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(frame, ds)
    if frame.ndim == 3:  # RGB (YBR already converted by the decoder or pydicom)
        colour = frame[..., :3]
        return colour.astype(np.uint8) if colour.dtype == np.uint8 else to_uint8(percentile_window(colour))
    unit = _grey_to_unit(frame, ds)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return grey_to_rgb(to_uint8(unit))


def decode_dicom(path: str | Path, preamble: bool = True) -> DecodedImage:
    """Decode a DICOM file to RGB (module rule); ``preamble=False`` for files without the ``DICM`` marker."""
    path = Path(path)
    header = _read_header(path, preamble)
    rows, columns = _int(header, "Rows"), _int(header, "Columns")
    if not rows or not columns:
        modality = str(header.get("Modality", "") or "").strip()
        what = f" (modality {modality})" if modality.isalnum() and len(modality) <= 16 else ""
        raise UnreadableImage(
            path,
            "no_pixel_data",
            f"a DICOM file without an image{what}: a report, plan, waveform or index holds no pixels",
            "remove it from the data",
        )
    frames = max(1, _int(header, "NumberOfFrames", 1) or 1)
    check_dimensions(path, columns, rows, f" per frame, {frames} frames" if frames > 1 else "")
    index = frames // 2
    notes = [n for n in (suffix_note(path, "DICOM"),) if n]
    if frames > 1:
        notes.append(
            Note(
                "multi_frame",
                f"{frames} frames; frame {index + 1} (the middle one) is used",
                "export the frame you want as its own file to use another",
            )
        )
    if str(header.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        notes.append(
            Note(
                "burned_in_annotation",
                "the header says text is burned into the pixels (it may identify the patient)",
                "de-identify the pixels before sharing panels or review pages that show this image",
            )
        )
    frame = _decode_frame(path, header, index if frames > 1 else None)
    samples = _int(header, "SamplesPerPixel", 1) or 1
    if frame.ndim == (2 if samples == 1 else 3) + 1:  # every frame came back: keep the chosen one
        frame = frame[min(index, len(frame) - 1)]
    pixels = frame_to_rgb(frame, _frame_header(header, index))
    if pixels.shape[:2] != (rows, columns):
        raise UnreadableImage(
            path,
            "corrupt",
            f"decoded {pixels.shape[:2]} but the header says {(rows, columns)}",
            "re-export it",
        )
    photometric = str(header.get("PhotometricInterpretation", "") or "?").strip()
    bits = _int(header, "BitsStored")
    return DecodedImage(pixels, "DICOM", f"{photometric} {bits}-bit", frames, notes)


# --------------------------------------------------------------------------------------------- grouping
def grouping_keyword(grouping: str) -> str | None:
    """``"dicom:PatientID"`` -> ``"PatientID"``; None for any other grouping (a manifest column)."""
    return grouping[len(GROUPING_PREFIX) :] if grouping.startswith(GROUPING_PREFIX) else None


def check_keyword(keyword: str) -> str:
    """Raise ValueError unless ``keyword`` names a DICOM element that can hold an id (not a sequence)."""
    from pydicom.datadict import dictionary_VR, keyword_dict

    if keyword not in keyword_dict:
        match = difflib.get_close_matches(keyword, list(keyword_dict), n=1, cutoff=0.75)
        hint = f" - did you mean {GROUPING_PREFIX}{match[0]}?" if match else ""
        raise ValueError(
            f"unknown DICOM keyword {keyword!r} (e.g. {GROUPING_PREFIX}PatientID or "
            f"{GROUPING_PREFIX}StudyInstanceUID){hint}"
        )
    if dictionary_VR(keyword_dict[keyword]) in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        raise ValueError(f"DICOM keyword {keyword!r} holds binary data or a sequence, not an id")
    return keyword


def header_value(path: str | Path, keyword: str) -> str | None:
    """The text of one header element of a DICOM file; None for non-DICOM files and absent or empty values."""
    if not looks_like_dicom(path):
        return None
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=[keyword])
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = "\\".join(str(v) for v in value)
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return text.strip() or None


def new_salt() -> str:
    """A fresh random salt (128 bits, hex)."""
    return secrets.token_hex(16)


def salted_hash(value: str, salt: str) -> str:
    """HMAC-SHA256 of ``value`` keyed by ``salt``, 16 hex digits: equal values give equal groups, and the
    value cannot be read back without guessing it."""
    return hmac.new(salt.encode(), value.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]


def hashed_header_ids(paths: Sequence[str], keyword: str, salt: str) -> list[str]:
    """Salted hashes of ``keyword`` for each file ("" where it is absent: the row becomes its own group)."""
    values = (header_value(p, keyword) for p in paths)
    return [salted_hash(v, salt) if v else "" for v in values]


def add_header_groups(manifest: Any, grouping: str, salt: str) -> Any:
    """``manifest`` plus a column named ``grouping`` (``dicom:PatientID``) holding each file's salted id hash.

    Rows without the element (a PNG, an empty PatientID) get an empty cell, which the split treats as a group
    of its own. Only counts and file names are logged, never a header value.
    """
    keyword = grouping_keyword(grouping)
    if keyword is None:
        raise ValueError(f"{grouping!r} is not a DICOM grouping (dicom:<Keyword>)")
    hashes = hashed_header_ids([str(p) for p in manifest["path"]], keyword, salt)
    out = manifest.assign(**{grouping: hashes})
    without = [str(p) for p, h in zip(manifest["path"], hashes, strict=True) if not h]
    groups = len({h for h in hashes if h})
    log.info("splits.grouping %s: %d file(s) in %d group(s) by the DICOM header", grouping, len(out), groups)
    if without:
        log.warning(
            "splits.grouping %s: %d file(s) have no %s (not DICOM, or the element is empty), so each is its own "
            "group: %s%s. Fill the element, or group by a CSV column instead.",
            grouping,
            len(without),
            keyword,
            ", ".join(Path(p).name for p in without[:5]),
            " ..." if len(without) > 5 else "",
        )
    return out
