"""Significance per block, per stage and fused; token allocation; geometry back to the original; colours."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import medsg  # noqa: F401
from medsg.explain.allocation import allocation_rules, token_allocation
from medsg.explain.geometry import InputGeometry, resize_geometry, to_original
from medsg.explain.overlay import allocation_rgb, blend, heatmap_rgb, panel_png, scale01
from medsg.explain.significance import fused_map, minmax, significance_maps, stage_maps, upsample


@pytest.fixture(scope="module")
def tiny_maps():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 448)  # non-square: 56x112 tokens in stage 1
    model = timm.create_model("sgformer_tiny", num_classes=3, img_size=(224, 448)).eval()
    return model, x, significance_maps(model, x)


def test_stage_maps_average_their_blocks(tiny_maps):
    _, _, blocks = tiny_maps
    stages = stage_maps(blocks)
    assert list(stages) == ["stage1", "stage2", "stage3"]
    assert stages["stage1"].shape == (2, 56, 112) and stages["stage3"].shape == (2, 14, 28)
    torch.testing.assert_close(stages["stage3"], (blocks["block3.0"] + blocks["block3.2"]) / 2)
    torch.testing.assert_close(stages["stage1"], blocks["block1.0"])


def test_fused_map_weights_each_stage_equally_at_input_resolution(tiny_maps):
    _, _, blocks = tiny_maps
    fused = fused_map(blocks, (224, 448))
    assert fused.shape == (2, 224, 448)
    assert float(fused.min()) >= 0 and float(fused.max()) <= 1
    by_hand = sum(minmax(upsample(m, (224, 448))) for m in stage_maps(blocks).values()) / 3
    torch.testing.assert_close(fused, by_hand)
    # scaling one stage's raw values does not change the fusion: each stage is normalised first
    scaled = dict(blocks, **{"block1.0": blocks["block1.0"] * 1000})
    torch.testing.assert_close(fused_map(scaled, (224, 448)), fused)


def test_minmax_of_a_constant_map_is_uniform():
    out = minmax(torch.full((1, 4, 4), 3.0))
    assert torch.equal(out, torch.ones(1, 4, 4))
    ramp = minmax(torch.arange(16.0).view(1, 4, 4))
    assert float(ramp.min()) == 0 and float(ramp.max()) == 1


def test_token_allocation_follows_the_guided_blocks_rule(tiny_maps):
    model, _, blocks = tiny_maps
    rules = allocation_rules(model)
    assert [r.tokens_per_key for r in rules] == [(196, 56, 28), (49, 14, 7), (2, 1), (2, 1)]
    assert [r.fractions for r in rules][0] == (0.25, 0.5, 0.25)
    for (name, values), rule in zip(blocks.items(), rules, strict=True):
        levels = token_allocation(values, rule)
        n = values[0].numel()
        counts = torch.bincount(levels[0].flatten(), minlength=len(rule.fractions)).tolist()
        # level 0 (fine) holds the most significant share, the last level the least significant
        assert counts == [int(n * f) for f in reversed(rule.fractions)], name
        flat, lev = values[0].flatten(), levels[0].flatten()
        assert flat[lev == 0].min() >= flat[lev == lev.max()].max(), name
    assert rules[0].tokens_at(0) == 28 and rules[0].tokens_at(2) == 196
    assert rules[2].level_names == ("fine", "coarse")


def test_allocation_refuses_a_model_without_sgformer():
    with pytest.raises(TypeError, match="no SG-Former"):
        allocation_rules(torch.nn.Linear(2, 2))


def test_undoing_the_resize_puts_a_spot_back_where_it_was_on_a_non_square_image():
    original_hw, input_hw = (200, 320), (224, 224)  # a wide image squashed into the square input
    geometry = resize_geometry(original_hw, input_hw)
    spot = np.zeros(input_hw, dtype=np.float32)
    spot[56:72, 168:184] = 1.0  # rows 1/4..., columns 3/4... of the input
    back = to_original(spot, geometry)
    assert back.shape == original_hw
    rows, cols = np.nonzero(back > 0.5)
    # the same relative position on the original: rows 50..64 of 200, columns 240..262 of 320
    assert abs(rows.mean() / 200 - 64 / 224) < 0.01 and abs(cols.mean() / 320 - 176 / 224) < 0.01
    assert abs((rows.max() - rows.min() + 1) - 16 * 200 / 224) <= 2
    assert abs((cols.max() - cols.min() + 1) - 16 * 320 / 224) <= 2


def test_undoing_a_letterbox_and_a_crop():
    # a 100x200 original letterboxed into 224x224: content rows 56..168 show the whole original
    pad = InputGeometry((100, 200), (224, 224), content_box=(56, 0, 112, 224), source_box=(0, 0, 100, 200))
    values = np.zeros((224, 224), dtype=np.float32)
    values[56:168, :112] = 1.0  # left half of the content
    back = to_original(values, pad)
    assert back.shape == (100, 200)
    assert back[:, :95].min() > 0.99 and back[:, 105:].max() < 0.01
    # a crop: the input shows only the central 50x50 of a 100x100 original; the rest stays 0
    crop = InputGeometry((100, 100), (224, 224), content_box=(0, 0, 224, 224), source_box=(25, 25, 50, 50))
    back = to_original(np.ones((224, 224), dtype=np.float32), crop)
    assert back[25:75, 25:75].min() > 0.9999 and abs(back.sum() - 2500) < 0.1
    with pytest.raises(ValueError, match="does not match"):
        to_original(np.ones((10, 10)), crop)


def test_heatmap_colours_run_low_to_high_in_rgb_order():
    ramp = np.linspace(0, 5, 256, dtype=np.float32)[None, :].repeat(4, 0)
    rgb = heatmap_rgb(ramp)
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    low, high = rgb[0, 0].astype(int), rgb[0, -1].astype(int)
    assert tuple(low) == (68, 1, 84) and tuple(high) == (253, 231, 37)  # viridis ends, RGB (not BGR)
    assert high[0] > high[2] and low[2] > low[1]
    # per-image min-max: an offset or scale does not change the colours
    assert np.array_equal(heatmap_rgb(ramp * 7 + 3), rgb)
    assert np.array_equal(scale01(np.full((2, 2), 4.0)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        scale01(np.array([[np.nan, 1.0]]))


def test_overlays_and_panel(tmp_path):
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    heat = heatmap_rgb(np.random.default_rng(0).random((40, 60)))
    mixed = blend(image, heat, 0.5)
    assert np.abs(mixed.astype(int) - (image.astype(int) + heat) / 2).max() <= 1
    levels = np.zeros((40, 60), dtype=np.int64)
    levels[:, 30:] = 2
    colours = allocation_rgb(levels, ("fine", "medium", "coarse"))
    assert tuple(colours[0, 0]) != tuple(colours[0, 59])
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 10:30] = True
    png = panel_png(
        image,
        mask,
        {"map a": np.random.default_rng(1).random((40, 60))},
        "id <b>$x$",
        ("alloc", levels, ("fine", "medium", "coarse"), ("f", "m", "c")),
    )
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > im.height
