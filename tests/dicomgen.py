"""Small DICOM files written in tests: grey (any bit depth, MONOCHROME1/2), RGB, multi-frame, with any header.

``write_dicom(path, pixels, **elements)``: ``pixels`` is (rows, columns), (rows, columns, 3) or, with
``frames=True``, (frames, rows, columns[, 3]); ``elements`` are header keywords (``PatientName="..."``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dicom_dataset(
    pixels: np.ndarray,
    photometric: str | None = None,
    frames: bool = False,
    bits_stored: int | None = None,
    **elements: Any,
) -> Dataset:
    """A Secondary Capture dataset holding ``pixels`` natively (little endian), plus ``elements``."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    colour = pixels.ndim == (4 if frames else 3)
    shape = pixels.shape[1:] if frames else pixels.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    if frames:
        ds.NumberOfFrames = int(pixels.shape[0])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"))).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def write_dicom(path: str | Path, pixels: np.ndarray, preamble: bool = True, **kwargs: Any) -> Path:
    """Write ``dicom_dataset(pixels, **kwargs)`` to ``path`` (``preamble=False``: a bare implicit-VR dataset)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = dicom_dataset(pixels, **kwargs)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def bundled(name: str) -> Path | None:
    """A test file shipped inside the pydicom wheel, or None: never ``get_testdata_file``, which downloads."""
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    return path if path.is_file() else None
