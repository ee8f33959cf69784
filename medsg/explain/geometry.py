"""From the model input's geometry back to the original image's, so a map lies over the lesion it points at.

A map computed on the model input (e.g. 224x224) describes the image as the eval transform left it. medsg's eval
pipeline (``medsg.data.transforms.build_transforms``) resizes the whole image to the model size, squashing a
non-square image; other pipelines may letterbox (pad) or crop. ``InputGeometry`` records both in one pair of boxes:
``content_box`` is where the image content sits inside the model input (smaller than the input when padded) and
``source_box`` is the part of the original it shows (smaller than the original when cropped). ``to_original``
crops the map to ``content_box``, resizes it to ``source_box`` and leaves the rest of the original at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["InputGeometry", "resize_geometry", "to_original", "resize_map"]

Box = tuple[int, int, int, int]  # top, left, height, width


@dataclass(frozen=True)
class InputGeometry:
    """How one original image became one model input (see the module docstring)."""

    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    content_box: Box
    source_box: Box


def resize_geometry(original_hw: tuple[int, int], input_hw: tuple[int, int]) -> InputGeometry:
    """The geometry of medsg's eval transform: the whole original resized to the whole input, aspect not kept."""
    h0, w0 = (int(v) for v in original_hw)
    h, w = (int(v) for v in input_hw)
    if min(h0, w0, h, w) < 1:
        raise ValueError(f"image sizes must be positive, got original {original_hw} and input {input_hw}")
    return InputGeometry((h0, w0), (h, w), (0, 0, h, w), (0, 0, h0, w0))


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D float map resized to ``size`` (bilinear, pixel centres aligned as in PIL and OpenCV)."""
    if tuple(values.shape) == tuple(size):
        return values.astype(np.float32, copy=False)
    t = torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def to_original(values: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """A (H_in, W_in) map on the model input -> (H0, W0) on the original image (0 outside ``source_box``)."""
    if tuple(values.shape) != geometry.input_hw:
        raise ValueError(f"map of shape {values.shape} does not match the model input {geometry.input_hw}")
    top, left, height, width = geometry.content_box
    content = values[top : top + height, left : left + width]
    s_top, s_left, s_height, s_width = geometry.source_box
    out = np.zeros(geometry.original_hw, dtype=np.float32)
    out[s_top : s_top + s_height, s_left : s_left + s_width] = resize_map(content, (s_height, s_width))
    return out
