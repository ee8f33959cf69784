"""Maps made visible: colour-mapped heatmaps, overlays on the original image, and the per-case panel.

Colour rule, the same everywhere: each map is min-max scaled per image (its own lowest value is the colour bar's
low end and its highest the high end, so colours compare regions within one image, not across images) and drawn
with ``viridis``, a perceptually uniform colormap that runs dark blue (low) to yellow (high) and reads in grey
and for colour-blind viewers. Colours come from matplotlib as RGB: there is no BGR step (OpenCV's colormaps are
BGR), and the original is read from its file, never un-normalised from the model input.
Token allocation is categorical: fine, medium and coarse get three fixed colours with a legend.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion

from medsg.explain.localization import normalise

__all__ = [
    "CMAP",
    "ALLOCATION_COLOURS",
    "scale01",
    "heatmap_rgb",
    "allocation_rgb",
    "blend",
    "png_bytes",
    "colorbar_png",
    "panel_png",
]

CMAP = "viridis"
ALLOCATION_COLOURS = {"fine": (253, 231, 37), "medium": (33, 145, 140), "coarse": (68, 1, 84)}
MASK_COLOUR = "#ff3b30"


def scale01(values: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to [0, 1] as float32, by the same rule the scores use
    (``localization.normalise``): a constant map becomes all ones, NaN or inf is refused."""
    return normalise(values).astype(np.float32)


def heatmap_rgb(values: np.ndarray, cmap: str = CMAP) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 RGB through ``cmap`` after per-image min-max scaling."""
    rgba = colormaps[cmap](scale01(values))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


TRANSPARENT_BELOW, OPAQUE_ABOVE = 0.15, 0.65  # heatmap alpha ramps between these scaled values


def heatmap_alpha(scaled: np.ndarray) -> np.ndarray:
    """The review overlay's alpha for min-max scaled values: 0 (the anatomy shows through) below
    ``TRANSPARENT_BELOW``, rising linearly to 1 at ``OPAQUE_ABOVE``, so only the map's high end covers the image."""
    return np.clip((scaled - TRANSPARENT_BELOW) / (OPAQUE_ABOVE - TRANSPARENT_BELOW), 0.0, 1.0)


def heatmap_rgba(values: np.ndarray, cmap: str = CMAP) -> np.ndarray:
    """(H, W) map -> (H, W, 4) uint8 RGBA through ``cmap``, transparent at its low end (``heatmap_alpha``)."""
    scaled = scale01(values)
    rgba = colormaps[cmap](scaled)
    rgba[..., 3] = heatmap_alpha(scaled)
    return (rgba * 255).round().astype(np.uint8)


def outline_rgba(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """(H, W) bool lesion mask -> (H, W, 4) uint8: its outline ``width`` px wide in ``MASK_COLOUR``,
    transparent elsewhere; a layer drawn above any heatmap, so the outline shows at every opacity. Erosion and
    dilation use a 4-neighbourhood and count the image border as outside the lesion."""
    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~binary_erosion(mask)
    if width > 1:
        edge = binary_dilation(edge, iterations=width - 1)
    out = np.zeros((*mask.shape, 4), dtype=np.uint8)
    out[edge] = (*(int(MASK_COLOUR[i : i + 2], 16) for i in (1, 3, 5)), 255)
    return out


def allocation_rgb(levels: np.ndarray, level_names: Sequence[str]) -> np.ndarray:
    """(H, W) int levels (0 = fine) -> (H, W, 3) uint8 in the fixed allocation colours."""
    palette = np.array([ALLOCATION_COLOURS[name] for name in level_names], dtype=np.uint8)
    return palette[np.asarray(levels, dtype=np.int64)]


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend an RGB heatmap over an RGB image of the same size (uint8 in, uint8 out)."""
    if image.shape != heat.shape:
        raise ValueError(f"image {image.shape} and heatmap {heat.shape} differ in size")
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) RGB or (H, W, 4) RGBA uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _figure_png(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _text(value: object) -> str:
    """Text for matplotlib: '$' would otherwise start mathtext (ids and class names are user text)."""
    return str(value).replace("$", r"\$")


def colorbar_png(cmap: str = CMAP) -> bytes:
    """The review page's colour bar: the overlay's colours and transparency (over a grey checkerboard, as on
    an image), labelled from low (transparent: the image shows) to high, large enough to read."""
    width, height, cell = 512, 48, 8
    values = np.tile(np.linspace(0, 1, width), (height, 1))
    rgba = colormaps[cmap](values)
    alpha = heatmap_alpha(values)[..., None]
    yy, xx = np.mgrid[0:height, 0:width]
    board = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 0.85, 0.6)[..., None]
    shown = rgba[..., :3] * alpha + board * (1 - alpha)
    fig = Figure(figsize=(5.2, 1.0), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(shown, aspect="auto", extent=(0, 1, 0, 1))
    ax.set_yticks([])
    ax.set_xticks(
        [0, TRANSPARENT_BELOW, OPAQUE_ABOVE, 1],
        ["low\n(transparent)", f"{TRANSPARENT_BELOW:g}", f"{OPAQUE_ABOVE:g}", "high"],
    )
    ax.tick_params(labelsize=10)
    ax.set_xlabel("map value, min-max scaled per image", fontsize=10)
    return _figure_png(fig)


def panel_png(
    image: np.ndarray,
    mask: np.ndarray | None,
    maps: Mapping[str, np.ndarray],
    title: str,
    allocation: tuple[str, np.ndarray, Sequence[str], Sequence[str]] | None = None,
    alpha: float = 0.5,
    footnote: str = "",
) -> bytes:
    """One case side by side: the original (lesion contour when a mask is known), then each map as an overlay.

    ``maps`` are (H, W) float maps on the original's geometry, in display order; ``allocation`` is
    (column title, (H, W) levels, level names, legend labels) and is drawn after the first map.
    """
    columns: list[tuple[str, np.ndarray | None]] = [("original", None)]
    alloc_column = -1
    for k, (name, values) in enumerate(maps.items()):
        columns.append((name, blend(image, heatmap_rgb(values), alpha)))
        if k == 0 and allocation is not None:
            alloc_title, levels, names, _ = allocation
            alloc_column = len(columns)
            columns.append((alloc_title, blend(image, allocation_rgb(levels, names), alpha)))
    fig = Figure(figsize=(2.6 * len(columns) + 0.8, 3.5), layout="constrained")
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for ax, (name, shown) in zip(axes, columns, strict=True):
        ax.imshow(image if shown is None else shown)
        if mask is not None and mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.0)
        ax.set_title(_text(name), fontsize=9)
        ax.set_axis_off()
    if len(columns) > 1:
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), CMAP), ax=list(axes[1:]), shrink=0.7, pad=0.01)
        bar.set_ticks([0, 1], labels=["low", "high"])
        bar.ax.tick_params(labelsize=8)
    handles = []
    if allocation is not None and alloc_column > 0:
        handles = [
            Patch(color=np.array(ALLOCATION_COLOURS[n]) / 255, label=_text(label))
            for n, label in zip(allocation[2], allocation[3], strict=True)
        ]
    if handles or footnote:
        legend = fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=max(len(handles), 1),
            fontsize=7,
            frameon=False,
            title=_text(footnote) or None,
            title_fontsize=7,
        )
        legend.set_in_layout(True)
    fig.suptitle(_text(title), fontsize=10)
    return _figure_png(fig)
