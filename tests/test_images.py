"""One reader for every image: 16-bit, float, CMYK, EXIF orientation, palette, LA, multi-frame, odd names, bombs."""

from __future__ import annotations

import logging
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsg.data.audit import inspect_file
from medsg.data.images import decode_image, read_image, read_mask
from medsg.data.pixels import MAX_PIXELS, UnreadableImage, percentile_window
from medsg.data.transforms import build_transforms, pil_to_rgb

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _kind(path: Path) -> str:
    with pytest.raises(UnreadableImage) as info:
        decode_image(path)
    assert str(path) in str(info.value) and info.value.action  # named, with what to do
    return info.value.kind


def _png(path: Path, width: int, height: int, bits: int, colour: int, data: bytes) -> Path:
    """A PNG written chunk by chunk: any header (Pillow writes no 16-bit colour, nor a lying size)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (grey, 8-bit) with almost no pixel data."""
    return _png(path, width, height, 8, 0, b"\0" * 64)


def _load_prefix():
    """The pipeline's decode + channel-first steps (before resizing)."""
    from monai.transforms import Compose

    return Compose(
        build_transforms(32, MEAN, STD, train=False, color_aug=False, with_mask=False).transforms[:2]
    )


# --------------------------------------------------------------------------------------------- deep grey
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_uses_a_percentile_window(tmp_path: Path, suffix: str) -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (40, 1))  # 12-bit data in 16 bits: 40 x 256
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(ramp).save(path)
    rgb = read_image(path)
    assert rgb.shape == (40, 256, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # grey in 3 channels
    row = rgb[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()  # full contrast, monotone
    assert rgb.mean() > 100  # the dtype's range would show 12-bit data nearly black (mean ~8)
    assert inspect_file(path)["problem"] is None


def test_float_and_32_bit_tiff_load(tmp_path: Path) -> None:
    values = np.linspace(-3.0, 5.0, 30 * 20, dtype=np.float32).reshape(20, 30)
    values[0, 0] = np.nan
    Image.fromarray(values).save(tmp_path / "f.tif")
    Image.fromarray(np.nan_to_num(values * 1000).astype(np.int32)).save(tmp_path / "i.tif")
    for name in ("f.tif", "i.tif"):
        rgb = read_image(tmp_path / name)
        assert rgb.shape == (20, 30, 3) and rgb[..., 0].max() == 255 and rgb[-1, -1, 0] == 255


def test_percentile_window_rules() -> None:
    assert percentile_window(np.full((4, 4), 7.0)).max() == 0  # a flat image has no contrast to show
    hot = np.zeros((100, 100))
    hot[:, 50:] = 100.0
    hot[0, 0] = 1e9  # one hot pixel does not squash the rest
    out = percentile_window(hot)
    assert out[5, 60] == 1.0 and out[5, 10] == 0.0


# --------------------------------------------------------------------------------------------- colour, modes
def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), 8, 0), 8, 1)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=98)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    for name, tolerance in (("c.jpg", 12.0), ("c.tif", 0.0)):
        out = read_image(tmp_path / name)
        assert out.shape == rgb.shape
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() <= tolerance  # not inverted, not garbled
        assert inspect_file(tmp_path / name)["problem"] is None


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGBA", "I;16"])
def test_modes_load_as_rgb(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    image = image.convert("L").convert("I;16") if mode == "I;16" else image.convert(mode)
    if mode == "P":
        image.info["transparency"] = 0
    image.save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    if mode != "I;16":  # 8-bit modes: exactly Pillow's RGB conversion
        np.testing.assert_array_equal(out, np.asarray(Image.open(tmp_path / "x.png").convert("RGB")))


def test_exif_orientation_is_applied_to_images_masks_and_the_pipeline(tmp_path: Path) -> None:
    arr = np.zeros((20, 30, 3), np.uint8)  # stored 30 wide, 20 high; a red marker top-left
    arr[:4, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=98)
    mask = np.zeros((20, 30), np.uint8)
    mask[:4, :4] = 255
    Image.fromarray(mask).save(tmp_path / "r_mask.png", exif=exif)
    rgb = read_image(tmp_path / "r.jpg")
    assert rgb.shape == (30, 20, 3)  # displayed upright: 20 wide, 30 high
    assert rgb[:4, -4:, 0].mean() > 200  # the top-left marker is now top-right
    assert read_mask(tmp_path / "r_mask.png")[:4, -4:].all()  # the mask turns with its image
    out = _load_prefix()({"image": str(tmp_path / "r.jpg")})["image"]
    np.testing.assert_array_equal(out.numpy().transpose(1, 2, 0), rgb)
    assert np.array_equal(np.asarray(pil_to_rgb(Image.open(tmp_path / "r.jpg"))), rgb)  # explain's path too


def test_masks_of_every_encoding(tmp_path: Path) -> None:
    labels = np.zeros((10, 12), np.uint8)
    labels[2:4, 2:4] = 1
    labels[6:8, 6:8] = 2  # label values, not 0/255: both lesions count
    Image.fromarray(labels).save(tmp_path / "labels.png")
    assert read_mask(tmp_path / "labels.png").sum() == 8
    Image.fromarray(labels.astype(np.uint16) * 30000).save(tmp_path / "deep.png")
    assert read_mask(tmp_path / "deep.png").sum() == 8
    (tmp_path / "bad.png").write_bytes(b"not a mask")
    with pytest.raises(UnreadableImage, match="bad.png.*re-export the mask"):
        read_mask(tmp_path / "bad.png")


# --------------------------------------------------------------------------------------------- names, frames
def test_jpeg_named_png_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arr = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(arr).save(path, format="JPEG")
    with caplog.at_level(logging.WARNING, logger="medsg.data.images"):
        assert read_image(path).shape == (16, 16, 3)
        read_image(path)  # logged once per file, not once per read
    lines = [r.getMessage() for r in caplog.records if "photo.png" in r.getMessage()]
    assert len(lines) == 1 and "JPEG" in lines[0] and "rename it to .jpg" in lines[0]
    notes = inspect_file(path)["notes"]
    assert [n["kind"] for n in notes] == ["format_mismatch"]


def test_multi_page_files_give_their_first_frame_with_a_note(tmp_path: Path) -> None:
    pages = [Image.new("L", (16, 12), value) for value in (10, 120, 250)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    pages[0].save(tmp_path / "loop.gif", save_all=True, append_images=pages[1:])
    for name in ("stack.tif", "loop.gif"):
        decoded = decode_image(tmp_path / name)
        assert decoded.frames == 3 and [n.kind for n in decoded.notes] == ["multi_frame"]
        assert decoded.pixels.shape == (12, 16, 3) and abs(int(decoded.pixels[0, 0, 0]) - 10) <= 2


# --------------------------------------------------------------------------------------------- refusals
def test_unusable_files_are_named_with_their_kind(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello\n")
    (tmp_path / "drawing.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    Image.new("L", (40, 40)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)).save(
        tmp_path / "t.png"
    )
    (tmp_path / "cut.png").write_bytes((tmp_path / "t.png").read_bytes()[:-300])
    Image.new("L", (1, 1)).save(tmp_path / "dot.png")
    Image.new("L", (600, 10)).save(tmp_path / "strip.png")
    assert data  # (whole.png is fine)
    assert _kind(tmp_path / "absent.png") == "missing_file"
    assert _kind(tmp_path / "empty.png") == "zero_byte"
    assert _kind(tmp_path / "text.png") == "not_image"
    assert _kind(tmp_path / "drawing.eps") == "not_image"  # never handed to Ghostscript
    assert _kind(tmp_path / "cut.png") in ("truncated", "corrupt")
    assert _kind(tmp_path / "dot.png") == "degenerate"
    assert _kind(tmp_path / "strip.png") == "degenerate"


def test_huge_images_are_refused_before_decoding(tmp_path: Path) -> None:
    side = int(MAX_PIXELS**0.5) + 10  # just over the budget: Pillow would only warn
    with warnings.catch_warnings(record=True) as caught:  # the filters medsg set stay in force
        assert _kind(_png_header_only(tmp_path / "big.png", side, side)) == "too_large"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an application that turns warnings into errors gets the same kind
        assert _kind(tmp_path / "big.png") == "too_large"
    assert _kind(_png_header_only(tmp_path / "bomb.png", 40000, 40000)) == "too_large"  # Pillow's error
    result = inspect_file(tmp_path / "big.png")
    assert result["problem"] == "too_large" and "pixel budget" in result["detail"]


def test_unreadable_image_pickles_and_reraises_from_one_message(tmp_path: Path) -> None:
    error = UnreadableImage(tmp_path / "x.png", "truncated", "cut short", "re-download it")
    again = pickle.loads(pickle.dumps(error))
    assert (again.kind, again.reason, str(again)) == ("truncated", "cut short", str(error))
    assert str(UnreadableImage(str(error))) == str(error)  # torch's worker re-raise passes one message


# --------------------------------------------------------------------------------------------- pipeline
def test_pipeline_reads_what_read_image_reads(tmp_path: Path) -> None:
    ramp = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 50).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    out = _load_prefix()({"image": str(tmp_path / "deep.png")})["image"]
    assert tuple(out.shape) == (3, 24, 32)
    np.testing.assert_array_equal(out.numpy().transpose(1, 2, 0), read_image(tmp_path / "deep.png"))
    assert out.meta["filename_or_obj"] == str(tmp_path / "deep.png") and set(out.meta) >= {"filename_or_obj"}


def test_no_nvimagecodec_warnings(caplog: pytest.LogCaptureFixture) -> None:
    from monai.transforms import LoadImage

    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        build_transforms(32, MEAN, STD, train=True, color_aug=True, with_mask=True)  # builds no MONAI reader
        assert not caught
        LoadImage(image_only=True)  # even MONAI's own loader, which builds every DICOM reader, stays quiet
    text = caplog.text + " ".join(str(w.message) for w in caught)
    assert "nvImageCodec" not in text and "NvImgCodec" not in text


def test_the_cli_prints_no_monai_or_pydicom_noise(tmp_path: Path) -> None:
    import subprocess
    import sys

    from dicomgen import write_dicom

    write_dicom(tmp_path / "data" / "a" / "x.dcm", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    write_dicom(tmp_path / "data" / "b" / "y.dcm", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).T)
    code = (  # a run's pipeline, then MONAI's own loader (medsg builds none), then the audit of DICOM files
        "import sys; from medsg import cli; from medsg.data.transforms import build_transforms; "
        "build_transforms(32, (0, 0, 0), (1, 1, 1), train=True, color_aug=False, with_mask=False); "
        "from monai.transforms import LoadImage; LoadImage(); "
        "sys.exit(cli.main(['audit', '--adapter', 'imagefolder', '--root', sys.argv[1]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "Audit of 2 images" in proc.stdout
    assert (
        "nvImageCodec" not in proc.stderr and "NvImgCodec" not in proc.stderr and "Warning" not in proc.stderr
    )


def test_folders_and_unreadable_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "folder.png").mkdir()
    assert _kind(tmp_path / "folder.png") == "not_image"
    Image.new("L", (16, 16)).save(tmp_path / "locked.png")
    real_open = Path.open

    def denied(self: Path, *args, **kwargs):
        if self.name == "locked.png":
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    assert _kind(tmp_path / "locked.png") == "unreadable_file"
    assert inspect_file(tmp_path / "locked.png")["problem"] == "unreadable_file"


def _png16_rgb(path: Path, pixels: np.ndarray) -> Path:
    h, w, _ = pixels.shape
    return _png(path, w, h, 16, 2, b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(h)))


def test_16_bit_colour_is_named_as_read_from_its_high_byte(tmp_path: Path) -> None:
    """A 12-bit colour export in a 16-bit PNG reads nearly black; the file is named rather than passed silently."""
    pixels = np.random.default_rng(0).integers(0, 4096, size=(40, 40, 3))
    decoded = decode_image(_png16_rgb(tmp_path / "x.png", pixels))
    assert decoded.pixels.max() <= 15  # the high byte of 12-bit data
    assert [n.kind for n in decoded.notes] == ["deep_colour"]
    assert decoded.pixels.shape == (40, 40, 3)
    grey_alpha = _png(
        tmp_path / "la.png",
        40,
        40,
        16,
        4,
        b"".join(b"\x00" + pixels[i, :, :2].astype(">u2").tobytes() for i in range(40)),
    )
    (note,) = decode_image(grey_alpha).notes
    assert note.kind == "deep_colour" and "grey with alpha" in note.detail and "drop the alpha" in note.action
    eight = tmp_path / "z.png"
    Image.fromarray((pixels >> 4).astype(np.uint8)).save(eight)
    assert decode_image(eight).notes == []
