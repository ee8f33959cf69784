"""Pipelines keep PIL's orientation, make 3-channel images, unite masks and keep them aligned when augmenting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose
from PIL import Image
from synthetic import make_busi_replica

from medsg.core.errors import DataError
from medsg.data import load_manifest
from medsg.data.dataset import build_dataset, manifest_to_records
from medsg.data.transforms import aug_defaults, build_transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _save(arr: np.ndarray, path: Path, mode: str | None = None) -> str:
    img = Image.fromarray(arr)
    (img.convert(mode) if mode else img).save(path)
    return str(path)


def _load_only(with_mask: bool = False) -> Compose:
    """The deterministic load prefix of the pipeline (before resizing)."""
    full = build_transforms(32, MEAN, STD, train=False, color_aug=False, with_mask=with_mask)
    return Compose(full.transforms[: 3 if with_mask else 2])


def _denorm(img: torch.Tensor) -> np.ndarray:
    return (img * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]).numpy()


def test_orientation_matches_pil(tmp_path: Path) -> None:
    arr = np.zeros((20, 30, 3), np.uint8)  # 20 rows (y), 30 columns (x)
    arr[2, 25] = (255, 0, 0)
    arr[15, 3] = (0, 200, 0)
    arr[9, 11] = (0, 0, 77)
    out = _load_only()({"image": _save(arr, tmp_path / "o.png")})["image"]
    assert tuple(out.shape) == (3, 20, 30)
    np.testing.assert_array_equal(out.numpy().transpose(1, 2, 0), arr)
    # after the full eval pipeline (resize to 40x40) the red marker stays top-right, green bottom-left
    full = build_transforms(40, (0, 0, 0), (1, 1, 1), train=False, color_aug=False, with_mask=False)
    img = full({"image": str(tmp_path / "o.png")})["image"]
    ry, rx = np.unravel_index(img[0].argmax().item(), (40, 40))
    gy, gx = np.unravel_index(img[1].argmax().item(), (40, 40))
    assert ry < 10 and rx > 28 and gy > 25 and gx < 10


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    path = _save(arr, tmp_path / f"x_{mode}.png", mode)
    out = _load_only()({"image": path})["image"]
    assert tuple(out.shape) == (3, 12, 16)
    np.testing.assert_array_equal(out.numpy().transpose(1, 2, 0), np.asarray(Image.open(path).convert("RGB")))


def test_mask_union_of_modes(tmp_path: Path) -> None:
    img = _save(np.zeros((10, 12, 3), np.uint8), tmp_path / "i.png")
    m1 = np.zeros((10, 12), np.uint8)
    m1[1:4, 1:4] = 255
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[6:9, 8:11, :3] = 255
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[0, 11] = (0, 0, 255)
    paths = [
        _save(m1, tmp_path / "m1.png", "1"),
        _save(rgba, tmp_path / "m2.png"),
        _save(rgb, tmp_path / "m3.png"),
    ]
    mask = _load_only(with_mask=True)({"image": img, "mask": paths})["mask"]
    expected = (m1 > 0) | (rgba[..., 0] > 0) | (rgb[..., 2] > 0)
    assert tuple(mask.shape) == (1, 10, 12)
    np.testing.assert_array_equal(mask[0].numpy(), expected.astype(np.float32))
    empty = _load_only(with_mask=True)({"image": img, "mask": []})["mask"]
    assert tuple(empty.shape) == (1, 10, 12) and empty.sum() == 0
    _save(np.zeros((5, 5), np.uint8), tmp_path / "small.png")
    with pytest.raises(RuntimeError) as info:  # MONAI wraps transform errors; ours is the cause
        _load_only(with_mask=True)({"image": img, "mask": [str(tmp_path / "small.png")]})
    assert isinstance(info.value.__cause__, DataError) and "small.png" in str(info.value.__cause__)


def test_eval_normalisation_and_shapes(tmp_path: Path) -> None:
    path = _save(np.full((30, 20, 3), 128, np.uint8), tmp_path / "c.png")
    mask = _save(np.zeros((30, 20), np.uint8), tmp_path / "m.png")
    out = build_transforms(24, MEAN, STD, train=False, color_aug=False, with_mask=True)(
        {"id": "c", "image": path, "mask": [mask], "label": 2}
    )
    assert out["image"].shape == (3, 24, 24) and out["image"].dtype == torch.float32
    assert type(out["image"]) is torch.Tensor
    expected = (128 / 255 - np.asarray(MEAN)) / np.asarray(STD)
    np.testing.assert_allclose(out["image"].mean(dim=(1, 2)).numpy(), expected, atol=1e-4)
    assert out["mask"].shape == (1, 24, 24) and out["label"] == 2 and out["id"] == "c"


@pytest.fixture()
def square_sample(tmp_path: Path) -> dict:
    """A dark image whose bright off-centre rectangle is exactly its mask."""
    rng = np.random.default_rng(1)
    arr = rng.integers(10, 40, size=(64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), np.uint8)
    mask[8:30, 44:70] = 255
    arr[mask > 0] = 230
    return {
        "id": "s",
        "image": _save(arr, tmp_path / "s.png"),
        "mask": [_save(mask, tmp_path / "s_m.png", "1")],
        "label": 0,
    }


def test_mask_stays_aligned_through_training_augmentation(square_sample: dict) -> None:
    transform = build_transforms(64, MEAN, STD, train=True, color_aug=True, with_mask=True)
    reference = build_transforms(64, MEAN, STD, train=False, color_aug=False, with_mask=True)(square_sample)[
        "mask"
    ]
    moved = 0
    for seed in range(12):
        transform.set_random_state(seed)
        out = transform(square_sample)
        mask = out["mask"][0].numpy() > 0.5
        assert set(np.unique(out["mask"].numpy())) <= {0.0, 1.0}
        bright = _denorm(out["image"]).mean(axis=0) > 0.5
        iou = (bright & mask).sum() / max((bright | mask).sum(), 1)
        assert iou > 0.85, f"seed {seed}: image and mask disagree (IoU {iou:.2f})"
        moved += not torch.equal(out["mask"], reference)
    assert moved >= 6  # the augmentations really moved the mask


def test_training_pipeline_is_repeatable_with_seed(square_sample: dict) -> None:
    a = build_transforms(64, MEAN, STD, train=True, color_aug=True, with_mask=True)
    b = build_transforms(64, MEAN, STD, train=True, color_aug=True, with_mask=True)
    a.set_random_state(7)
    b.set_random_state(7)
    outs_a = [a(square_sample)["image"] for _ in range(4)]
    outs_b = [b(square_sample)["image"] for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(outs_a, outs_b, strict=True))
    assert not torch.equal(outs_a[0], outs_a[1])


def test_untracked_pipeline_matches_the_metadata_tracking_one(square_sample: dict) -> None:
    """Turning MONAI's metadata tracking off (for speed) changes no pixel, mask or random draw, and leaves
    the global flag as it was."""
    from monai.data import get_track_meta

    fast = build_transforms(64, MEAN, STD, train=True, color_aug=True, with_mask=True)
    tracked = Compose(build_transforms(64, MEAN, STD, train=True, color_aug=True, with_mask=True).transforms)
    fast.set_random_state(3)
    tracked.set_random_state(3)
    for _ in range(6):
        a, b = fast(square_sample), tracked(square_sample)
        assert type(a["image"]) is torch.Tensor and get_track_meta()
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def _regions_keep_one_colour(img: torch.Tensor, regions: torch.Tensor) -> bool:
    """Whether every region of ``regions`` is still one colour in ``img`` (C, H, W)."""
    return all(float(img[:, regions == r].std(dim=1).max()) < 1e-5 for r in regions.unique())


def test_color_aug_changes_colour_only() -> None:
    """A colour transform maps each colour to a colour, pixel by pixel: a piecewise-constant image stays
    piecewise-constant on the same regions. A geometric transform moves the regions and fails this check."""
    from medsg.data.transforms import AlbumentationsColord, color_transform

    regions = torch.zeros(64, 64, dtype=torch.long)
    regions[:20, :40], regions[30:, 10:25], regions[40:, 45:] = 1, 2, 3  # asymmetric: a flip moves them
    palette = torch.tensor([[0.2, 0.3, 0.4], [0.8, 0.5, 0.3], [0.4, 0.7, 0.6], [0.6, 0.2, 0.75]])
    img = palette[regions].permute(2, 0, 1).contiguous()
    assert not _regions_keep_one_colour(torch.flip(img, dims=[2]), regions)  # the check can fail
    t = AlbumentationsColord("image", color_transform(strength=3.0))
    changed = 0
    for seed in range(5):
        t.set_random_state(seed)
        out = t({"image": img.clone()})["image"]
        assert out.shape == img.shape
        assert _regions_keep_one_colour(out, regions), seed  # geometry unchanged
        changed += not torch.allclose(out, img, atol=1e-3)
    assert changed >= 3
    assert aug_defaults("busi")["color_aug"] is False and aug_defaults("isic2018")["color_aug"] is True


def test_build_dataset_cache_modes_agree(tmp_path: Path) -> None:
    df = load_manifest("busi", make_busi_replica(tmp_path / "busi", n_per_class=2, with_problems=False))
    records = manifest_to_records(df)
    assert records[0]["mask"] and records[0]["image"].endswith("benign (1).png") and records[0]["label"] == 0
    transform = build_transforms(32, MEAN, STD, train=False, color_aug=False, with_mask=True)
    outs = {}
    for cache in ("memory", "disk", "none"):
        ds = build_dataset(records, transform, cache=cache, cache_dir=tmp_path / "cache")
        assert len(ds) == 6
        outs[cache] = ds[3]
    assert any((tmp_path / "cache").iterdir())
    for cache in ("disk", "none"):
        assert torch.equal(outs[cache]["image"], outs["memory"]["image"])
        assert torch.equal(outs[cache]["mask"], outs["memory"]["mask"])
    plain = build_transforms(32, MEAN, STD, train=True, color_aug=False, with_mask=False)
    batch = next(iter(DataLoader(build_dataset(records, plain, cache="none"), batch_size=6)))
    assert "mask" not in batch and batch["image"].shape == (6, 3, 32, 32)  # benign (1) has 2 masks, others 1
    with pytest.raises(DataError, match="cache_dir"):
        build_dataset(records, transform, cache="disk")
    with pytest.raises(DataError, match="memory"):
        build_dataset(records, transform, cache="ram")


AUGMENTS = [
    (False, {"vertical_flip": 0.0}),
    (True, {}),
    (False, {"rotate_prob": 0.0, "noise_prob": 0.0, "horizontal_flip": 0.0}),
]


@pytest.mark.parametrize(("color_aug", "changes"), AUGMENTS)
def test_augmentation_words_follow_the_pipeline(color_aug: bool, changes: dict) -> None:
    """The report's recipe lists one phrase per random step of build_transforms, in the same order."""
    from medsg.data.transforms import Augmentations, describe_augmentations

    aug = Augmentations(**changes)
    steps = [
        type(t).__name__
        for t in build_transforms(
            32, MEAN, STD, train=True, color_aug=color_aug, with_mask=False, augment=aug
        ).transforms
        if type(t).__name__.startswith(("Rand", "Albumentations"))
    ]
    words = describe_augmentations(aug, color_aug).split("; ")
    keywords = {
        "RandFlipd": "flip",
        "RandRotated": "rotation",
        "RandZoomd": "zoom",
        "AlbumentationsColord": "colour",
        "RandAdjustContrastd": "gamma",
        "RandGaussianNoised": "noise",
    }
    assert len(words) == len(steps)
    assert all(keywords[s] in w for s, w in zip(steps, words, strict=True))


def test_augment_config_reaches_the_pipeline(make_config) -> None:
    """data.augment sets the steps; null vertical flip is the dataset's rule (none for ultrasound)."""

    def random_steps(cfg) -> dict[str, object]:
        pipeline = build_transforms(32, MEAN, STD, True, cfg.color_aug, False, augment=cfg.augmentations)
        return {
            type(t).__name__ + str(i): t
            for i, t in enumerate(pipeline.transforms)
            if "Rand" in type(t).__name__
        }

    def config(*overrides: dict):
        return make_config(
            ".", None, {"experiment.name": "x"}, *overrides, model="sgformer_tiny", check_paths=False
        )

    busi = config({"data.adapter": "busi"})
    isic = config({"data.adapter": "isic2018"})
    assert busi.augmentations.vertical_flip == 0.0 and isic.augmentations.vertical_flip == 0.5
    assert sum("RandFlipd" in k for k in random_steps(busi)) == 1
    assert sum("RandFlipd" in k for k in random_steps(isic)) == 2
    wide = config({"data.adapter": "busi", "data.augment.rotate_degrees": 40, "data.augment.noise_prob": 0})
    steps = random_steps(wide)
    rotate = next(t for k, t in steps.items() if k.startswith("RandRotated"))
    assert rotate.rand_rotate.range_x == pytest.approx((-np.deg2rad(40), np.deg2rad(40)))
    assert not any(k.startswith("RandGaussianNoised") for k in steps)


def test_old_run_configs_without_augment_are_the_same_config() -> None:
    """A run saved before data.augment existed resumes and hashes as the same config (its values were the
    defaults), while a changed augmentation is a different config."""
    from medsg.config import config_from_dict, config_hash, resolved_config, result_diff

    raw = {
        "experiment": {"name": "x"},
        "model": {"name": "sgformer_tiny"},
        "data": {"adapter": "busi", "root": "."},
    }
    new = resolved_config(config_from_dict(raw, check_paths=False))
    old = {**new, "data": {k: v for k, v in new["data"].items() if k != "augment"}}
    assert result_diff(old, new) == [] and config_hash(old) == config_hash(new)
    changed = resolved_config(config_from_dict(raw, ["data.augment.zoom_prob=0.2"], check_paths=False))
    assert result_diff(old, changed) and config_hash(old) != config_hash(changed)
