"""MONAI dictionary pipelines: decode, RGB, mask union, resize, augment, normalise.

Samples are dicts ``{"id": str, "image": path, "mask": [paths], "label": int}``. Output: ``image`` a float
tensor (3, H, W) normalised with the backbone's mean/std, ``mask`` (1, H, W) in {0, 1} when ``with_mask``,
``label`` and ``id`` untouched (without ``with_mask`` the ``mask`` paths are removed so batches collate).

Why these choices:

* ``LoadRGBImaged`` reads every file with ``medsg.data.images.read_image``, the reader the audit and the
  explanations use (DICOM, 16-bit, CMYK, palette, EXIF orientation, multi-frame: one rule each, documented
  there), and keeps numpy's (row, column) order so ``tensor[c, y, x] == read_image(path)[y, x, c]``. It
  replaces MONAI's ``LoadImaged``, whose reader registry would also construct MONAI's DICOM readers (and their
  nvImageCodec warnings) and put DICOM header fields into the image metadata, and so into the disk cache.
* Every image is RGB (grey replicated, alpha dropped), because the pretrained backbones expect 3 channels.
* Masks are the union of a sample's mask files, binarised (``> 127``, or ``> 0`` for 0/1-valued masks); an
  image without masks gets an all-zero mask. Masks follow every spatial transform with nearest interpolation.
* The deterministic prefix (load, RGB, mask union, resize to ``img_size`` x ``img_size``, scale to [0, 1]) ends
  before the first random transform, so ``CacheDataset`` decodes and resizes each image once per run.
  Resizing ignores the aspect ratio (BUSI's 320x~250 scans are stretched slightly) and uses area
  interpolation, which anti-aliases when shrinking.
* Colour jitter (albumentations ``ColorJitter`` / ``HueSaturationValue``) only where colour varies between
  devices (dermoscopy, endoscopy); grayscale ultrasound gets contrast/noise instead. Ultrasound is not flipped
  vertically (the skin line is always at the top).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandRotated,
    RandZoomd,
    Resized,
    ScaleIntensityRanged,
    Transform,
)
from PIL import Image

from medsg.core.errors import DataError
from medsg.data import images
from medsg.data.images import pil_to_array, read_mask

_NVIMGCODEC = "NvImgCodecPydicomReader: nvImageCodec"  # the start of MONAI's warning


def quiet_monai_dicom_readers() -> None:
    """Silence MONAI's "nvImageCodec is not available" log line and warning, and nothing else.

    With pydicom installed, every MONAI ``LoadImage`` constructs MONAI's nvImageCodec DICOM reader, which logs
    and warns that its GPU plugin is missing. medsg never uses that reader (``LoadRGBImaged`` reads DICOM
    itself), so the message only confuses. Run at import and again by ``build_transforms``, in case a
    ``warnings.catch_warnings`` block around the import dropped the filter.
    """
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    if not any(str(getattr(f[1], "pattern", f[1])).startswith(_NVIMGCODEC) for f in warnings.filters):
        warnings.filterwarnings("ignore", message=_NVIMGCODEC, category=UserWarning)


quiet_monai_dicom_readers()

# per-dataset augmentation defaults (colour jitter, vertical flip)
AUG_DEFAULTS: dict[str, dict[str, bool]] = {
    "busi": {"color_aug": False, "vertical_flip": False},
    "isic2018": {"color_aug": True, "vertical_flip": True},
    "kvasir": {"color_aug": True, "vertical_flip": True},
}


@dataclass(frozen=True)
class Augmentations:
    """The training augmentations (``data.augment`` in a config). A probability of 0 drops its step, so a
    pipeline without it draws the same random numbers as one that never had it."""

    horizontal_flip: float = 0.5
    vertical_flip: float = 0.5  # 0 for ultrasound (the skin line is at the top), by the dataset default
    rotate_degrees: float = 15.0
    rotate_prob: float = 0.5
    zoom_min: float = 0.9
    zoom_max: float = 1.15
    zoom_prob: float = 0.5
    contrast_gamma_min: float = 0.8
    contrast_gamma_max: float = 1.25
    contrast_prob: float = 0.3
    noise_std: float = 0.02
    noise_prob: float = 0.2


def aug_defaults(adapter: str) -> dict[str, bool]:
    """``{"color_aug", "vertical_flip"}`` for a dataset (generic datasets: colour jitter off, flips on)."""
    return dict(AUG_DEFAULTS.get(adapter, {"color_aug": False, "vertical_flip": True}))


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """An open Pillow image -> RGB by ``medsg.data.images``' rules (orientation, 16-bit, CMYK, palette).

    Kept for callers holding a Pillow image; files (DICOM included) are read with ``images.read_image``.
    """
    return Image.fromarray(pil_to_array(image))


def random_parts(transform: Any) -> list[Randomizable]:
    """Every MONAI ``Randomizable`` inside ``transform`` (itself, a ``Compose``'s steps, transforms held by
    transforms), each once: what draws random numbers, so one stream can be handed to all of them."""
    found: list[Randomizable] = []
    stack, seen = [transform], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, list | tuple):
            stack.extend(obj)
        elif isinstance(obj, Transform | Randomizable):
            if isinstance(obj, Randomizable):
                found.append(obj)
            stack.extend(
                v for v in vars(obj).values() if isinstance(v, list | tuple | Transform | Randomizable)
            )
    return found


class UntrackedCompose(Compose):
    """``Compose`` run with MONAI's metadata tracking off (``set_track_meta(False)``), restored afterwards.

    medsg's pipelines never read a sample's affine or its log of applied operations (``EnsureTyped`` drops
    them at the end), yet keeping them up to date took about half of the augmentation time, and each cached
    sample's deep copy carried them. Slices of it (the cached head, the rest) keep the class. The flag is
    process-wide: threads filling a cache at once may find it restored early, which costs speed, never values
    (the pixels are the same either way, and ``EnsureTyped`` ends every pipeline with plain tensors).
    """

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        previous = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(input_, *args, **kwargs)
        finally:
            set_track_meta(previous)


class LoadRGBImaged(MapTransform):
    """Replace each key's file path by its pixels: a float32 (H, W, 3) MetaTensor in 0-255 (``read_image``).

    Only the file name goes into the metadata: no header field of a DICOM file reaches a cache or a batch.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            pixels = images.read_image(path)  # looked up at call time, so tests can count the reads
            tensor = torch.from_numpy(pixels.astype(np.float32))
            d[key] = MetaTensor(tensor, meta={"filename_or_obj": path}) if get_track_meta() else tensor
        return d


def mask_union(paths: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """The union of an image's mask files, bool (H, W); zeros when there are none (a lesion-free image)."""
    union = np.zeros(shape, dtype=bool)
    for path in paths:
        mask = read_mask(path)
        if mask.shape != tuple(shape):
            raise DataError(
                f"Mask {path} has size {mask.shape[::-1]} but its image has {tuple(shape)[::-1]} (width, height). "
                "Run `medsg audit`: its policy removes masks that do not fit their image."
            )
        union |= mask
    return union


class LoadMaskUniond(MapTransform):
    """Load the mask files listed under ``keys`` and replace them by their union, a (1, H, W) float tensor.

    An empty list yields zeros shaped like ``ref_key``'s spatial size (BUSI ``normal`` images have empty
    masks; images whose masks the audit removed get an empty one too).
    """

    def __init__(
        self, keys: KeysCollection, ref_key: str = "image", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shape = tuple(d[self.ref_key].shape[-2:])
        for key in self.key_iterator(d):
            paths = d[key]
            union = mask_union([paths] if isinstance(paths, str) else list(paths), shape)
            d[key] = MetaTensor(torch.from_numpy(union[None].astype(np.float32)))
        return d


class AlbumentationsColord(MapTransform, Randomizable):
    """Apply an albumentations colour transform to a (3, H, W) float image in [0, 1].

    Seeded from MONAI's random state (``set_random_state``), so a seeded MONAI ``Compose`` repeats exactly.
    Albumentations works on (H, W, C) numpy arrays; we move the channel axis around it.
    """

    def __init__(self, keys: KeysCollection, transform: Any, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform

    def randomize(self, data: Any = None) -> None:
        self.transform.set_random_seed(int(self.R.randint(0, 2**31 - 1)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            hwc = np.ascontiguousarray(np.clip(arr, 0.0, 1.0).transpose(1, 2, 0), dtype=np.float32)
            out = self.transform(image=hwc)["image"].transpose(2, 0, 1)
            tensor = torch.from_numpy(np.ascontiguousarray(out))
            d[key] = MetaTensor(tensor, meta=img.meta) if isinstance(img, MetaTensor) else tensor
        return d


def color_transform(strength: float = 1.0) -> Any:
    """The albumentations colour pipeline used for dermoscopy / endoscopy."""
    import albumentations as A

    return A.Compose(
        [
            A.ColorJitter(
                brightness=0.2 * strength,
                contrast=0.2 * strength,
                saturation=0.2 * strength,
                hue=0.03 * strength,
                p=0.8,
            ),
            A.HueSaturationValue(
                hue_shift_limit=int(5 * strength),
                sat_shift_limit=int(15 * strength),
                val_shift_limit=0,
                p=0.3,
            ),
        ]
    )


class BinarizeMaskd(MapTransform):
    """Re-binarise masks (> 0.5) after interpolation, so they stay in {0, 1}."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (d[key] > 0.5).to(torch.float32) if isinstance(d[key], torch.Tensor) else d[key]
        return d


def resolve_augmentations(augment: Mapping[str, Any] | None, adapter: str) -> Augmentations:
    """``data.augment`` (a config's mapping; missing keys: the defaults) as ``Augmentations``, a vertical flip
    of null filled with the dataset's rule."""
    values = {**{k: v for k, v in (augment or {}).items() if v is not None}}
    values.setdefault("vertical_flip", 0.5 if aug_defaults(adapter)["vertical_flip"] else 0.0)
    return Augmentations(**values)


def describe_augmentations(aug: Augmentations, color_aug: bool) -> str:
    """``build_transforms``' training augmentations in words, for the report's recipe table (kept beside it)."""
    steps = []
    if aug.horizontal_flip > 0:
        steps.append(f"horizontal flip (p {aug.horizontal_flip:g})")
    if aug.vertical_flip > 0:
        steps.append(f"vertical flip (p {aug.vertical_flip:g})")
    if aug.rotate_prob > 0:
        steps.append(f"rotation up to ±{aug.rotate_degrees:g}° (p {aug.rotate_prob:g})")
    if aug.zoom_prob > 0:
        steps.append(f"zoom {aug.zoom_min:g}-{aug.zoom_max:g} (p {aug.zoom_prob:g})")
    if color_aug:
        steps.append(
            "colour jitter (brightness/contrast/saturation 0.2, hue 0.03, p 0.8) and HSV shift (p 0.3)"
        )
    if aug.contrast_prob > 0:
        steps.append(
            f"gamma contrast {aug.contrast_gamma_min:g}-{aug.contrast_gamma_max:g} (p {aug.contrast_prob:g})"
        )
    if aug.noise_prob > 0:
        steps.append(f"Gaussian noise SD {aug.noise_std:g} (p {aug.noise_prob:g})")
    return "; ".join(steps) or "none"


def flip_views(images: torch.Tensor, tta: bool) -> list[torch.Tensor]:
    """The views test-time augmentation averages over: the batch, and with ``tta`` its horizontal flip
    (flipped after normalisation: the same pixels mirrored). One definition for cross-validation
    (``medsg.train.evaluate.predict``) and ``medsg.deploy.predict``."""
    return [images, torch.flip(images, dims=[-1])] if tta else [images]


def build_transforms(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    color_aug: bool,
    with_mask: bool,
    vertical_flip: bool = True,
    augment: Augmentations | None = None,
) -> Compose:
    """The full pipeline for one split; ``mean``/``std`` from the backbone's ``pretrained_cfg`` (0-1 scale).

    ``augment`` (default ``Augmentations()``) sets the training steps; ``vertical_flip=False`` turns its
    vertical flip off.
    """
    aug = augment or Augmentations()
    if not vertical_flip:
        aug = replace(aug, vertical_flip=0.0)
    if len(mean) != 3 or len(std) != 3:
        raise DataError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}.")
    quiet_monai_dicom_readers()
    keys = ["image", "mask"] if with_mask else ["image"]
    warp_modes = ("bilinear", "nearest")[: len(keys)]  # masks stay binary under rotation / zoom
    steps: list[Any] = [
        LoadRGBImaged("image"),
        EnsureChannelFirstd("image", channel_dim=-1),
    ]
    if with_mask:
        steps.append(LoadMaskUniond("mask"))
    else:  # a varying number of mask paths per sample would not collate into a batch
        steps.append(DeleteItemsd("mask"))
    steps += [
        Resized(keys, spatial_size=(img_size, img_size), mode=("area", "nearest")[: len(keys)]),
        ScaleIntensityRanged("image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
    ]
    if train:
        steps += _train_steps(keys, aug, color_aug, warp_modes)
    if with_mask:
        steps.append(BinarizeMaskd("mask"))
    steps += [
        NormalizeIntensityd("image", subtrahend=np.asarray(mean), divisor=np.asarray(std), channel_wise=True),
        EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]
    return UntrackedCompose(steps)


def _train_steps(
    keys: list[str], aug: Augmentations, color_aug: bool, warp_modes: tuple[str, ...]
) -> list[Any]:
    """The random steps, in a fixed order; a step whose probability is 0 is left out."""
    steps: list[Any] = []
    if aug.horizontal_flip > 0:
        steps.append(RandFlipd(keys, prob=aug.horizontal_flip, spatial_axis=1))
    if aug.vertical_flip > 0:
        steps.append(RandFlipd(keys, prob=aug.vertical_flip, spatial_axis=0))
    if aug.rotate_prob > 0:
        steps.append(
            RandRotated(
                keys,
                range_x=np.deg2rad(aug.rotate_degrees),
                prob=aug.rotate_prob,
                mode=warp_modes,
                padding_mode="zeros",
            )
        )
    if aug.zoom_prob > 0:
        steps.append(
            RandZoomd(
                keys,
                min_zoom=aug.zoom_min,
                max_zoom=aug.zoom_max,
                prob=aug.zoom_prob,
                mode=warp_modes,
                padding_mode="constant",
            )
        )
    if color_aug:
        steps.append(AlbumentationsColord("image", color_transform()))
    if aug.contrast_prob > 0:
        steps.append(
            RandAdjustContrastd(
                "image", prob=aug.contrast_prob, gamma=(aug.contrast_gamma_min, aug.contrast_gamma_max)
            )
        )
    if aug.noise_prob > 0:
        steps.append(RandGaussianNoised("image", prob=aug.noise_prob, mean=0.0, std=aug.noise_std))
    return steps
