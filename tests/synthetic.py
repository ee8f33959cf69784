"""Tiny synthetic replicas of the BUSI, Kvasir v2 and ISIC 2018 Task 3 download layouts, for tests and demos.

Images are smooth random textures (distinct per image, so no accidental near duplicates). With
``with_problems=True`` each replica also holds the dirt the audit must find; the names are fixed:

BUSI (``make_busi_replica``), ``n = n_per_class``:
  * ``benign (1)`` has two masks (``_mask.png`` 1-bit, ``_mask_1.png`` RGBA); other masks are 1-bit, the
    ``normal`` masks RGB and empty;
  * ``malignant ({n+1})`` is byte-identical to ``benign (1)`` (cross-class conflict, as in the real BUSI);
  * ``benign ({n+1})`` is byte-identical to ``benign (2)`` (exact duplicate);
  * ``benign ({n+2})`` is ``benign (3)`` brightened by 12 and re-saved (near duplicate);
  * ``benign ({n+3})`` zero-byte, ``benign ({n+4})`` truncated PNG, ``malignant ({n+2})`` a text file named .png;
  * ``malignant (1)_mask.png`` has a different size from its image; ``malignant ({n+3})`` has no mask.
Kvasir (``make_kvasir_replica``): ``polyps/dup_exact.jpg`` = ``polyps/img_0.jpg`` bytes;
  ``polyps/dup_near.jpg`` = ``polyps/img_1.jpg`` re-encoded at quality 70; ``ulcerative-colitis/conflict.jpg``
  = ``esophagitis/img_0.jpg`` bytes; ``normal-cecum/truncated.jpg`` is cut in half.
ISIC (``make_isic_replica``): ``ISIC_9999990`` / ``ISIC_9999991`` are zero-byte / truncated when asked for.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from medsg.data.isic2018 import ISIC_CLASSES
from medsg.data.kvasir import KVASIR_CLASSES

if TYPE_CHECKING:
    import torch


def texture(rng: np.random.Generator, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """A smooth random uint8 image of ``size`` = (width, height): a 6x6 random grid, upsampled, plus noise."""
    w, h = size
    grid = rng.integers(20, 235, size=(6, 6, channels), dtype=np.uint8)
    img = Image.fromarray(grid.squeeze(-1) if channels == 1 else grid).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, size=np.asarray(img).shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, mode: str | None = None, **kwargs: object) -> Path:
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _truncate(src: Path, dst: Path) -> None:
    """Keep the header and most of the data, drop the rest (what an interrupted download leaves)."""
    data = src.read_bytes()
    dst.write_bytes(data[: max(len(data) // 2, len(data) - 150)])


def _rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    w, h = size
    mask = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def make_busi_replica(
    root: str | Path,
    n_per_class: int = 4,
    size: tuple[int, int] = (40, 32),
    with_problems: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``root/Dataset_BUSI_with_GT/...``; returns ``root``. See the module docstring for the dirt."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "Dataset_BUSI_with_GT"
    w, h = size
    for cls in ("benign", "malignant", "normal"):
        for i in range(1, n_per_class + 1):
            gray = texture(rng, size, channels=1)
            _save(np.repeat(gray[..., None], 3, axis=2), base / cls / f"{cls} ({i}).png")
            if cls == "normal":
                _save(np.zeros((h, w, 3), np.uint8), base / cls / f"{cls} ({i})_mask.png")
            else:
                _save(
                    _rect_mask(size, (2 + i, 3, w // 2, h // 2)),
                    base / cls / f"{cls} ({i})_mask.png",
                    mode="1",
                )
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[h - 8 : h - 2, w - 10 : w - 2, :3] = 255
    _save(rgba, base / "benign" / "benign (1)_mask_1.png")
    if not with_problems:
        return Path(root)
    n = n_per_class
    ben, mal = base / "benign", base / "malignant"
    shutil.copyfile(ben / "benign (1).png", mal / f"malignant ({n + 1}).png")
    shutil.copyfile(ben / "benign (1)_mask.png", mal / f"malignant ({n + 1})_mask.png")
    shutil.copyfile(ben / "benign (2).png", ben / f"benign ({n + 1}).png")
    shutil.copyfile(ben / "benign (2)_mask.png", ben / f"benign ({n + 1})_mask.png")
    bright = np.clip(np.asarray(Image.open(ben / "benign (3).png"), dtype=np.int16) + 12, 0, 255).astype(
        np.uint8
    )
    _save(bright, ben / f"benign ({n + 2}).png", compress_level=1)
    shutil.copyfile(ben / "benign (3)_mask.png", ben / f"benign ({n + 2})_mask.png")
    (ben / f"benign ({n + 3}).png").write_bytes(b"")
    _truncate(ben / "benign (4).png" if n >= 4 else ben / "benign (1).png", ben / f"benign ({n + 4}).png")
    (mal / f"malignant ({n + 2}).png").write_text("this is not an image\n")
    _save(_rect_mask((w + 6, h), (2, 2, 10, 10)), mal / "malignant (1)_mask.png", mode="1")
    _save(np.repeat(texture(rng, size, 1)[..., None], 3, axis=2), mal / f"malignant ({n + 3}).png")
    return Path(root)


def make_kvasir_replica(
    root: str | Path,
    n_per_class: int = 3,
    size: tuple[int, int] = (48, 40),
    with_problems: bool = True,
    seed: int = 1,
) -> Path:
    """Write ``root/kvasir-dataset-v2/<class>/img_<i>.jpg``; returns ``root``."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "kvasir-dataset-v2"
    for cls in KVASIR_CLASSES:
        for i in range(n_per_class):
            _save(texture(rng, size), base / cls / f"img_{i}.jpg", quality=95)
    if with_problems:
        shutil.copyfile(base / "polyps" / "img_0.jpg", base / "polyps" / "dup_exact.jpg")
        _save(
            np.asarray(Image.open(base / "polyps" / "img_1.jpg")),
            base / "polyps" / "dup_near.jpg",
            quality=70,
        )
        shutil.copyfile(base / "esophagitis" / "img_0.jpg", base / "ulcerative-colitis" / "conflict.jpg")
        _truncate(base / "normal-cecum" / "img_0.jpg", base / "normal-cecum" / "truncated.jpg")
    return Path(root)


def make_isic_replica(
    root: str | Path,
    n_lesions_per_class: int = 3,
    images_per_lesion: int = 2,
    size: int = 32,
    with_metadata: bool = True,
    with_problems: bool = False,
    seed: int = 2,
) -> Path:
    """Write the ISIC 2018 Task 3 training layout (+ ``HAM10000_metadata.csv``); returns ``root``.

    Lesion ``HAM_<class><k>`` holds ``images_per_lesion`` distinct images, so image-level splits would leak.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    inputs = root / "ISIC2018_Task3_Training_Input"
    inputs.mkdir(parents=True, exist_ok=True)
    truth = ["image," + ",".join(ISIC_CLASSES)]
    meta = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    counter = 24306
    for c, cls in enumerate(ISIC_CLASSES):
        for lesion in range(n_lesions_per_class):
            for _ in range(images_per_lesion):
                image_id = f"ISIC_{counter:07d}"
                counter += 1
                _save(texture(rng, (size, size)), inputs / f"{image_id}.jpg", quality=95)
                onehot = ",".join("1.0" if k == c else "0.0" for k in range(len(ISIC_CLASSES)))
                truth.append(f"{image_id},{onehot}")
                meta.append(f"HAM_{cls}{lesion},{image_id},{cls.lower()},histo,50.0,female,back")
    if with_problems:
        (inputs / "ISIC_9999990.jpg").write_bytes(b"")
        _truncate(inputs / "ISIC_0024306.jpg", inputs / "ISIC_9999991.jpg")
        for image_id in ("ISIC_9999990", "ISIC_9999991"):
            truth.append(f"{image_id},0.0,1.0,0.0,0.0,0.0,0.0,0.0")
            meta.append(f"HAM_X{image_id},{image_id},nv,histo,50.0,male,back")
    (root / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(truth) + "\n")
    if with_metadata:
        (root / "HAM10000_metadata.csv").write_text("\n".join(meta) + "\n")
    return root


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    """Encode an array as JPEG bytes (for tests that need in-memory files)."""
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def garbled_png(arr: np.ndarray, path: Path, seed: int = 1) -> Path:
    """A PNG whose signature, IHDR and chunk CRCs are valid but whose pixel data (IDAT) is random bytes.

    PIL opens it (size and mode read fine) and fails only in ``load()``: the audit's ``corrupt`` kind, unlike
    a truncated file (data missing) or a non-image (no valid header).
    """
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    data = buffer.getvalue()
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    garbage = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + garbage))
    path.write_bytes(data[: start + 4] + garbage + crc + data[start + 8 + length :])
    return path


def bare_package(
    pkg: Path,
    members: list[tuple[str, str, float]],
    config: dict,
    *,
    arch: str = "sgformer_tiny",
    class_names: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
    img_size: int = 224,
) -> Path:
    """A package of untrained, seeded models (``members``: name, kind, temperature) without a training run:
    for tests that need a package's layout and weights, not a model that has learnt anything."""
    import json

    import torch
    import yaml

    from medsg.deploy.package import FORMAT, PACKAGE_FILE, _write_checksums
    from medsg.models import create_model
    from medsg.models.checkpoint import save_safetensors

    entries = []
    for i, (name, kind, temperature) in enumerate(members):
        torch.manual_seed(i)
        model = create_model(arch, img_size, num_classes=len(class_names))
        save_safetensors(model.state_dict(), pkg / "weights" / f"{name}.safetensors")
        entries.append(
            {"name": name, "kind": kind, "weights": f"weights/{name}.safetensors", "temperature": temperature}
        )
    meta = {
        "format": FORMAT,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocessing": {"img_size": img_size, "mean": [0.5] * 3, "std": [0.25] * 3},
        "members": entries,
        "default": "folds",
    }
    (pkg / PACKAGE_FILE).write_text(json.dumps(meta))
    (pkg / "config.yaml").write_text(yaml.safe_dump(config))
    _write_checksums(pkg)
    return pkg


def bundle_inputs(bundle, paths) -> torch.Tensor:
    """Image files as one batch of model inputs, made as ``medsg predict`` makes them (the bundle's eval
    preprocessing on the original files: no run folder, no MONAI cache)."""
    from medsg.deploy.predict import ImageFiles, InputItem, collate

    items = [InputItem(str(i), str(p)) for i, p in enumerate(paths)]
    data = ImageFiles(items, bundle.preprocessing.transform(), False)
    return collate([data[i] for i in range(len(data))])["images"]


def member_raw_probs(bundle, member, paths) -> np.ndarray:
    """A bundle member's raw softmax probabilities of image files (``medsg.deploy.predict.raw_probs``)."""
    from medsg.deploy.predict import raw_probs

    return raw_probs(bundle.build(member), bundle_inputs(bundle, paths))


# the recipe of the package tests: a tiny model from scratch, 2 epochs, a third of each training fold for calibration
PACKAGE_RECIPE = {
    "splits.inner_val_fraction": 0.34,
    "model.drop_path": 0.0,
    "train.epochs": 2,
    "train.batch_size": 4,
    "train.layer_decay": None,
    "explain.cases_per_fold": 0,
    "explain.localization": False,
}
