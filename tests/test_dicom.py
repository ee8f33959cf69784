"""DICOM input: pixels by the documented rule, unusable files named, grouping by a salted header id.

Uses the files bundled in the pydicom wheel (never ``get_testdata_file``, which downloads the others) and files
written here (``dicomgen``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from dicomgen import bundled, dicom_dataset, write_dicom
from PIL import Image

from medsg.data.dicom import (
    add_header_groups,
    check_keyword,
    grouping_keyword,
    hashed_header_ids,
    header_value,
    salted_hash,
)
from medsg.data.images import decode_image, read_image
from medsg.data.pixels import UnreadableImage, percentile_window


def _file(name: str) -> Path:
    path = bundled(name)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def _kind(path: Path) -> UnreadableImage:
    with pytest.raises(UnreadableImage) as info:
        decode_image(path)
    assert str(path) in str(info.value) and info.value.action
    return info.value


def _grey(path: Path) -> np.ndarray:
    rgb = read_image(path)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].astype(int)


# --------------------------------------------------------------------------------------------- bundled files
def test_window_from_the_header_is_applied() -> None:
    import pydicom
    from pydicom.pixels import apply_voi_lut

    path = _file("MR_small.dcm")  # 16-bit signed MR with Window Center 600 / Width 1600
    ds = pydicom.dcmread(path)
    windowed = apply_voi_lut(ds.pixel_array, ds)  # pydicom maps the window onto the signed 16-bit range
    expected = np.round((windowed + 2**15) / (2**16 - 1) * 255)
    np.testing.assert_array_equal(_grey(path), expected)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_transfer_syntaxes_decode_to_the_same_pixels(name: str) -> None:
    np.testing.assert_array_equal(read_image(_file(name)), read_image(_file("MR_small.dcm")))


def test_rescale_then_percentile_window_without_a_window() -> None:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = _file("CT_small.dcm")  # rescale slope/intercept, no window
    ds = pydicom.dcmread(path)
    expected = np.round(percentile_window(apply_modality_lut(ds.pixel_array, ds)) * 255)
    np.testing.assert_array_equal(_grey(path), expected)


@pytest.mark.parametrize(
    "name, tolerance",
    [
        ("SC_rgb_rle.dcm", 0.0),
        ("SC_rgb_rle_16bit.dcm", 1.0),  # 16-bit RGB: one window over all channels
        ("SC_ybr_full_422_uncompressed.dcm", 3.0),  # YBR_FULL_422 -> RGB
        ("SC_rgb_dcmtk_+eb+cy+s4.dcm", 6.0),  # JPEG baseline, YBR_FULL
        ("SC_rgb_jpeg_gdcm.dcm", 1.0),  # JPEG lossless (GDCM)
        ("SC_rgb_gdcm_KY.dcm", 1.0),  # JPEG 2000
    ],
)
def test_colour_files_match_the_rgb_reference(name: str, tolerance: float) -> None:
    reference = read_image(_file("SC_rgb.dcm") if bundled("SC_rgb.dcm") else _file("SC_rgb_rle.dcm"))
    out = read_image(_file(name))
    assert out.shape == reference.shape == (100, 100, 3)
    assert np.abs(out.astype(int) - reference.astype(int)).mean() <= tolerance
    assert tuple(out[5, 5]) == (255, 0, 0) or np.abs(out[5, 5].astype(int) - (255, 0, 0)).max() < 30


def test_palette_colour_becomes_rgb() -> None:
    import pydicom
    from pydicom.pixels import apply_color_lut

    path = _file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    lut = apply_color_lut(ds.pixel_array, ds)
    expected = lut if lut.dtype == np.uint8 else np.round(lut / 65535 * 255)
    out = read_image(path)
    assert out.shape == (*ds.pixel_array.shape, 3) and not (out[..., 0] == out[..., 1]).all()
    np.testing.assert_array_equal(out, expected)


def test_ultrasound_cine_loop_gives_its_middle_frame_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from pydicom.pixels import pixel_array

    path = _file("examples_ybr_color.dcm")  # 30-frame ultrasound loop, JPEG baseline YBR_FULL_422
    decoded = decode_image(path)
    assert decoded.frames == 30 and [n.kind for n in decoded.notes] == ["multi_frame"]
    assert "frame 16 (the middle one)" in decoded.notes[0].detail
    np.testing.assert_array_equal(decoded.pixels, pixel_array(str(path), index=15))
    with caplog.at_level(logging.WARNING):
        read_image(path)
    assert "examples_ybr_color.dcm" in caplog.text and "30 frames" in caplog.text


def test_other_bundled_images_load() -> None:
    for name, shape in [
        ("examples_jpeg2k.dcm", (480, 640, 3)),  # JPEG 2000, YBR_RCT
        ("image_dfl.dcm", (512, 512, 3)),  # deflated transfer syntax
        ("examples_rgb_color.dcm", (240, 320, 3)),  # ultrasound RGB
        ("JPEG2000.dcm", (1024, 256, 3)),
        ("rtdose.dcm", (10, 10, 3)),  # 15 frames of 32-bit dose
    ]:
        if bundled(name):
            assert read_image(bundled(name)).shape == shape, name


def test_unusable_bundled_files_are_named_with_the_reason() -> None:
    for name in ("rtplan.dcm", "waveform_ecg.dcm", "test-SR.dcm"):
        if bundled(name):
            assert _kind(bundled(name)).kind == "no_pixel_data", name
    assert _kind(_file("MR_truncated.dcm")).kind == "truncated"
    error = _kind(_file("JPGExtended.dcm"))  # 12-bit JPEG Extended: no permissive decoder handles it
    assert error.kind == "unsupported_transfer_syntax" and "JPEG Extended" in error.reason
    assert "gdcmconv" in error.action and "GPL" in error.action
    assert _kind(_file("SC_rgb_small_odd.dcm")).kind == "degenerate"  # 3 x 3 px


def test_a_missing_decoder_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})  # as without the dicom extra
    error = _kind(_file("MR_small_jp2klossless.dcm"))
    assert error.kind == "missing_decoder" and "pip install 'medsg[dicom]'" in str(error)


# --------------------------------------------------------------------------------------------- written files
def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))
    m2 = _grey(write_dicom(tmp_path / "m2.dcm", ramp, bits_stored=12))
    m1 = _grey(write_dicom(tmp_path / "m1.dcm", ramp, bits_stored=12, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(m1, 255 - m2)
    assert m2[0, 0] == 0 and m1[0, 0] == 255  # MONOCHROME1: the lowest value is white


def test_grey_rules(tmp_path: Path) -> None:
    eight = np.arange(64 * 16, dtype=np.uint16).reshape(16, 64).astype(np.uint8)
    np.testing.assert_array_equal(_grey(write_dicom(tmp_path / "8.dcm", eight)), eight)  # 8-bit: as stored
    twelve = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))
    deep = _grey(write_dicom(tmp_path / "12.dcm", twelve, bits_stored=12))
    np.testing.assert_array_equal(deep, np.round(percentile_window(twelve) * 255))  # no window: percentiles
    signed = (twelve.astype(np.int16) - 2048).astype(np.int16)
    assert _grey(write_dicom(tmp_path / "s.dcm", signed, bits_stored=12))[0, -1] == 255
    # rescale to Hounsfield units, then a soft-tissue window in those units
    hu = write_dicom(
        tmp_path / "ct.dcm",
        twelve,
        bits_stored=12,
        RescaleSlope="1",
        RescaleIntercept="-1024",
        WindowCenter="40",
        WindowWidth="400",
    )
    units = twelve[0].astype(float) - 1024
    linear = np.clip((units - 39.5) / 399 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1, centre 40, width 400
    np.testing.assert_array_equal(_grey(hu)[0], np.round(linear * 255))


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions_centre_mid_grey(tmp_path: Path, function: str) -> None:
    values = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (10, 1))
    path = write_dicom(
        tmp_path / "w.dcm", values, WindowCenter="500", WindowWidth="200", VOILUTFunction=function
    )
    grey = _grey(path)[0]
    assert grey[50] in range(120, 136) and grey[0] <= 5 and grey[-1] >= 250  # value 500 is the centre


def test_voi_lut_sequence(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    values = np.tile(np.arange(0, 256, dtype=np.uint16), (10, 1))
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUT Descriptor
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUT Data: an inverting LUT
    ds = dicom_dataset(values, bits_stored=8)
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "lut.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(_grey(tmp_path / "lut.dcm")[0], 255 - np.arange(256))


def test_multi_frame_uses_the_middle_frame_and_its_own_window(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    frames = np.stack([np.full((16, 16), 100 * i, dtype=np.uint16) for i in range(5)])
    frames[:, :, 8:] += 50
    plain = decode_image(write_dicom(tmp_path / "loop.dcm", frames, frames=True))
    assert plain.frames == 5 and "frame 3 (the middle one)" in plain.notes[0].detail
    # enhanced multi-frame: each frame carries its own window in its functional group
    ds = dicom_dataset(frames, frames=True)
    groups = []
    for i in range(5):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = str(100 * i + 25), "2"
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    grey = _grey(tmp_path / "enhanced.dcm")
    assert (grey[:, :8] == 0).all() and (grey[:, 8:] == 255).all()  # frame 2's window: 225 +- 1


def test_preamble_less_files_and_odd_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medsg.data import load_manifest

    values = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    bare = write_dicom(tmp_path / "old.dcm", values, preamble=False)  # an old export: no DICM marker
    assert read_image(bare).shape == (32, 32, 3)
    root = tmp_path / "folder"
    write_dicom(root / "a" / "IM0001", values)  # PACS exports have no suffix ...
    write_dicom(root / "a" / "1.2.840.10008.99", values.T)  # ... or a UID for a name
    write_dicom(root / "b" / "x.dcm", values[::-1])
    write_dicom(root / "b" / "DICOMDIR", values)  # an index, not an image
    (root / "b" / "notes.txt").write_text("hello\n")
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest("imagefolder", root)
    assert sorted(manifest["id"]) == ["a/1.2.840.10008.99", "a/IM0001", "b/x.dcm"]
    assert "DICOMDIR" in caplog.text and "notes.txt" in caplog.text
    png_named = root / "b" / "y.png"
    write_dicom(png_named, values)  # DICOM content under an image suffix: read by content, with a warning
    assert [n.kind for n in decode_image(png_named).notes] == ["format_mismatch"]


def test_unusable_written_files(tmp_path: Path) -> None:
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    whole = write_dicom(tmp_path / "whole.dcm", values).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-1000])  # an interrupted copy
    assert _kind(tmp_path / "cut.dcm").kind == "truncated"
    ds = dicom_dataset(values)
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.9999.1"  # a private compression nobody decodes
    ds.save_as(tmp_path / "private.dcm", implicit_vr=False, little_endian=True, enforce_file_format=True)
    error = _kind(tmp_path / "private.dcm")
    assert error.kind == "unsupported_transfer_syntax" and "1.2.826.0.1.3680043.9999.1" in error.reason
    ds = dicom_dataset(values)
    del ds.PixelData, ds.Rows, ds.Columns
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    assert _kind(tmp_path / "report.dcm").kind == "no_pixel_data"
    (tmp_path / "text.dcm").write_text("not dicom at all\n" * 20)
    assert _kind(tmp_path / "text.dcm").kind == "not_image"


def test_burned_in_annotation_is_a_note(tmp_path: Path) -> None:
    values = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    decoded = decode_image(write_dicom(tmp_path / "b.dcm", values, BurnedInAnnotation="YES"))
    assert [n.kind for n in decoded.notes] == ["burned_in_annotation"]


def test_pipeline_reads_dicom_like_read_image(tmp_path: Path) -> None:
    from monai.transforms import Compose

    from medsg.data.transforms import build_transforms

    values = np.arange(24 * 40, dtype=np.uint16).reshape(24, 40)
    path = write_dicom(tmp_path / "p.dcm", values, bits_stored=10, PatientName="SECRET^NAME")
    steps = build_transforms(32, (0, 0, 0), (1, 1, 1), train=False, color_aug=False, with_mask=False)
    out = Compose(steps.transforms[:2])({"image": str(path)})["image"]
    np.testing.assert_array_equal(out.numpy().transpose(1, 2, 0), read_image(path))
    # only the file name travels with the pixels (into caches and batches), no header field
    assert {str(k) for k in out.meta} == {"filename_or_obj", "original_channel_dim", "affine", "space"}
    assert "SECRET" not in repr(out.meta)


# --------------------------------------------------------------------------------------------- grouping
def test_grouping_keywords_and_salted_hashes(tmp_path: Path) -> None:
    from medsg.config import config_from_dict
    from medsg.core.errors import ConfigError

    assert grouping_keyword("dicom:PatientID") == "PatientID" and grouping_keyword("patient_id") is None
    assert check_keyword("StudyInstanceUID") == "StudyInstanceUID"
    raw = {
        "experiment": {"name": "x"},
        "data": {"adapter": "csv", "root": str(tmp_path)},
        "model": {"name": "test_vit"},
        "splits": {"grouping": "dicom:PatientId"},
    }
    with pytest.raises(ConfigError, match="did you mean dicom:PatientID"):
        config_from_dict(raw, check_paths=False)
    raw["splits"]["grouping"] = "dicom:StudyInstanceUID"
    assert config_from_dict(raw, check_paths=False).splits.grouping == "dicom:StudyInstanceUID"
    assert salted_hash("P1", "aa") == salted_hash("P1", "aa") != salted_hash("P1", "bb")
    assert len(salted_hash("P1", "aa")) == 16 and "P1" not in salted_hash("P1", "aa")
    values = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)
    a = write_dicom(tmp_path / "a.dcm", values, PatientID="P1")
    b = write_dicom(tmp_path / "b.dcm", values, PatientID="")
    Image.new("L", (16, 16)).save(tmp_path / "c.png")
    assert header_value(a, "PatientID") == "P1" and header_value(b, "PatientID") is None
    hashes = hashed_header_ids([str(a), str(b), str(tmp_path / "c.png")], "PatientID", "aa")
    assert hashes == [salted_hash("P1", "aa"), "", ""]


def test_add_header_groups_logs_no_header_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import pandas as pd

    values = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)
    paths = [write_dicom(tmp_path / f"{i}.dcm", values, PatientID=f"SECRET-{i % 2}") for i in range(4)]
    Image.new("L", (16, 16)).save(tmp_path / "plain.png")
    df = pd.DataFrame({"id": list("abcde"), "path": [*map(str, paths), str(tmp_path / "plain.png")]})
    with caplog.at_level(logging.DEBUG):
        out = add_header_groups(df, "dicom:PatientID", "00ff")
    assert out["dicom:PatientID"].tolist()[:4] == [salted_hash(f"SECRET-{i % 2}", "00ff") for i in range(4)]
    assert out["dicom:PatientID"].iloc[4] == "" and "plain.png" in caplog.text
    assert "SECRET" not in caplog.text


def test_reading_a_header_never_prints_its_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import warnings

    from pydicom import config

    config.settings.writing_validation_mode = config.IGNORE  # write the invalid values quietly
    config.settings.reading_validation_mode = config.IGNORE
    try:
        ds = dicom_dataset(np.arange(256, dtype=np.uint16).reshape(16, 16))
        ds.add_new(0x00100020, "LO", "SECRET-\x07-" + "x" * 70)  # a control character, too long for LO
        ds.add_new(0x00100030, "DA", "SECRET")  # not a date
        ds.add_new(0x00100010, "PN", "SECRET^Name")
        ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = None  # back to pydicom's default
    config.settings.reading_validation_mode = config.WARN  # as another library might have left it
    logging.getLogger("pydicom").setLevel(logging.WARNING)
    caplog.clear()
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for keyword in ("PatientID", "PatientBirthDate", "PatientName"):
            assert header_value(tmp_path / "bad.dcm", keyword).startswith("SECRET")
        read_image(tmp_path / "bad.dcm")
    assert "SECRET" not in caplog.text
    assert not [w for w in caught if "SECRET" in str(w.message)]


def test_huge_dicom_is_refused_from_its_header(tmp_path: Path) -> None:
    ds = dicom_dataset(np.zeros((16, 16), np.uint16))
    ds.Rows, ds.Columns = 20000, 20000  # 400 MP claimed; the pixel data is never read
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    error = _kind(tmp_path / "huge.dcm")
    assert error.kind == "too_large" and "20000x20000" in error.reason
