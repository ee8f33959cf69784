"""Localisation scores on hand-made masks and maps, with values worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medsg.explain.localization import (
    centre_gaussian_map,
    deletion_auc,
    deletion_curve,
    deletion_order,
    energy_in_mask,
    normalise,
    otsu_iou,
    pointing_game,
    random_map,
    score_map,
    summarise_scores,
    uniform_map,
)
from medsg.metrics import grouped_bootstrap_ci


def _square(shape=(20, 20), top=5, left=5, side=6) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


MASK = _square()  # 36 of 400 pixels
SHARE = 36 / 400


# ------------------------------------------------------------------------------------------ normalisation


def test_normalise_min_max_and_constant_map_is_uniform():
    assert normalise([[2.0, 4.0], [3.0, 6.0]]) == pytest.approx(np.array([[0, 0.5], [0.25, 1]]))
    assert np.array_equal(normalise(np.full((3, 4), -7.5)), np.ones((3, 4)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_map_raises(bad):
    s = np.ones((20, 20))
    s[3, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        score_map(s, MASK)
    with pytest.raises(ValueError, match="NaN or infinite"):
        deletion_order(s)


@pytest.mark.parametrize("score", [pointing_game, energy_in_mask, otsu_iou, score_map])
def test_empty_mask_raises(score):
    with pytest.raises(ValueError, match="empty"):
        score(random_map((20, 20), seed=0), np.zeros((20, 20), dtype=bool))


def test_mask_shape_and_values_checked():
    with pytest.raises(ValueError, match="same size"):
        score_map(np.ones((20, 21)), MASK)
    with pytest.raises(ValueError, match="binary"):
        score_map(np.ones((20, 20)), MASK.astype(np.uint8) * 255)
    assert score_map(MASK * 1.0, MASK.astype(np.uint8)) == score_map(MASK * 1.0, MASK)


# ------------------------------------------------------------------------------------------ pointing game


def test_pointing_peak_inside_and_outside():
    s = np.zeros((20, 20))
    s[7, 8] = 1.0
    assert pointing_game(s, MASK) == 1.0
    s[7, 8], s[0, 19] = 0.5, 1.0
    assert pointing_game(s, MASK) == 0.0


def test_pointing_ties_score_the_share_inside():
    assert pointing_game(uniform_map((20, 20)), MASK) == pytest.approx(SHARE)
    s = np.zeros((20, 20))
    s[6, 6] = s[19, 0] = 3.0  # two tied peaks, one in the lesion
    assert pointing_game(s, MASK) == 0.5
    s[6, 7] = 3.0
    assert pointing_game(s, MASK) == pytest.approx(2 / 3)


def test_pointing_ties_use_input_values_not_rounded_normalised_ones():
    s = np.zeros((20, 20))
    s[19, 19] = -1e16  # a huge range, so that ...
    s[0, 0], s[6, 6] = 1.9, 1.6  # ... the unique maximum (outside) and an inside value both normalise to 1
    assert normalise(s)[6, 6] == normalise(s)[0, 0] == 1.0
    assert pointing_game(s, MASK) == 0.0


def test_pointing_tolerance_in_pixels():
    s = np.zeros((20, 20))
    s[7, 12] = 1.0  # lesion columns 5..10: two pixels to the right of it
    assert pointing_game(s, MASK) == 0.0
    assert pointing_game(s, MASK, tolerance=1.9) == 0.0
    assert pointing_game(s, MASK, tolerance=2) == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(s, MASK, tolerance=-1)


# ------------------------------------------------------------------------------------------ energy


def test_energy_uniform_is_area_share_and_mask_map_is_one():
    assert energy_in_mask(uniform_map((20, 20)), MASK) == pytest.approx(SHARE)
    assert energy_in_mask(np.full((20, 20), 0.3), MASK) == pytest.approx(SHARE)
    assert energy_in_mask(MASK.astype(float), MASK) == 1.0


def test_energy_by_hand_and_scale_free():
    s = np.zeros((20, 20))
    s[6, 6], s[0, 0], s[0, 1] = 1.0, 0.5, 0.5  # mass 1 inside, 1 outside
    assert energy_in_mask(s, MASK) == pytest.approx(0.5)
    assert energy_in_mask(3 * s - 2, MASK) == pytest.approx(0.5)  # min-max normalised first


# ------------------------------------------------------------------------------------------ Otsu IoU


def test_otsu_mask_plus_noise_is_near_one():
    noise = np.random.default_rng(0).normal(scale=0.05, size=MASK.shape)
    assert otsu_iou(MASK + noise, MASK) > 0.97
    assert otsu_iou(0.2 * MASK + 0.1, MASK) == 1.0  # two levels split into high (region) and low


def test_otsu_uniform_region_is_whole_image():
    assert otsu_iou(uniform_map((20, 20)), MASK) == pytest.approx(SHARE)


def test_otsu_shifted_square_known_iou():
    shifted = _square(left=8).astype(float)  # 6 x 6 square moved 3 columns: overlap 6 x 3 = 18
    assert otsu_iou(shifted, MASK) == pytest.approx(18 / (36 + 36 - 18))
    blob = np.zeros((20, 20))
    blob[5:11, 5:11] = 1.0
    blob[0:2, 0:2] = 0.9  # a second, slightly weaker hot spot joins the region: IoU 36 / 40
    assert otsu_iou(blob, MASK) == pytest.approx(36 / 40)


def test_score_map_keys():
    scores = score_map(MASK.astype(float), MASK)
    assert scores == {"pointing": 1.0, "energy": 1.0, "iou": 1.0}


# ------------------------------------------------------------------------------------------ deletion


LESION = _square(shape=(10, 10), top=2, left=3, side=4)  # 16 pixels
LESION[2:4, 7] = LESION[6, 3:5] = True  # 20 of 100 pixels, not a square
IMAGE = torch.ones(3, 10, 10)


def _lesion_mean(batch: torch.Tensor) -> np.ndarray:
    """Fake model: the target probability is the image's mean over the lesion (deleting lesion pixels hurts)."""
    p = batch[:, :, torch.from_numpy(LESION)].mean(dim=(1, 2)).numpy()
    return np.stack([1 - p, p], axis=1)


def test_deletion_mask_map_beats_inverted_map_by_hand():
    assert LESION.sum() == 20
    # 5 pixels per step; lesion first: p = 1, .75, .5, .25, 0, 0, ... -> 0.05 * (0.5 + .75 + .5 + .25) = 0.1
    assert deletion_auc(_lesion_mean, IMAGE, LESION.astype(float), 1) == pytest.approx(0.1)
    # lesion last: p = 1 for 16 steps, then .75, .5, .25, 0 -> 0.05 * (0.5 + 16 + 1.5) = 0.9
    assert deletion_auc(_lesion_mean, IMAGE, 1.0 - LESION, 1) == pytest.approx(0.9)


def test_deletion_uniform_map_is_random_order_by_seed():
    flat = np.zeros((10, 10))
    order = deletion_order(flat, seed=3)
    assert np.array_equal(order, np.random.default_rng(3).permutation(100))
    in_lesion = LESION.ravel()[order]
    deleted = np.concatenate([[0], np.cumsum(in_lesion)])[np.arange(21) * 5]
    expected = np.trapezoid(1 - deleted / 20, np.arange(21) / 20)
    auc = deletion_auc(_lesion_mean, IMAGE, flat, 1, seed=3)
    assert auc == pytest.approx(expected)
    assert auc == deletion_auc(_lesion_mean, IMAGE, flat, 1, seed=3)
    assert auc != deletion_auc(_lesion_mean, IMAGE, flat, 1, seed=4)
    assert 0.1 < auc < 0.9


def test_deletion_batches_fill_and_outputs():
    calls = []

    def predict(batch):
        calls.append(batch.clone())
        return torch.from_numpy(_lesion_mean(batch))  # torch output is accepted too

    fractions, probs = deletion_curve(predict, IMAGE.numpy(), LESION, 1, steps=10, fill=-2.0, batch_size=4)
    assert [len(c) for c in calls] == [4, 4, 3]  # 11 inputs
    assert fractions == pytest.approx(np.linspace(0, 1, 11))
    first, last = calls[0][0], calls[-1][-1]
    assert torch.equal(first, IMAGE) and torch.all(last == -2.0)  # every channel filled
    step1 = calls[0][1]  # removes the 10 most salient pixels, lesion pixels, in all 3 channels
    assert (step1 == -2.0).sum() == 3 * 10 and (step1[:, torch.from_numpy(LESION)] == -2.0).sum() == 3 * 10
    assert probs[0] == 1.0
    again = deletion_curve(_lesion_mean, IMAGE, LESION, 1, steps=10, fill=-2.0, batch_size=32)[1]
    assert np.array_equal(probs.astype(np.float32), again.astype(np.float32))


def test_deletion_checks_inputs():
    with pytest.raises(ValueError, match="resize"):
        deletion_auc(_lesion_mean, IMAGE, np.ones((9, 10)), 1)
    with pytest.raises(ValueError, match="target"):
        deletion_auc(_lesion_mean, IMAGE, LESION, 2)
    with pytest.raises(ValueError, match="NaN"):
        deletion_auc(_lesion_mean, IMAGE, np.full((10, 10), np.nan), 1)


# ------------------------------------------------------------------------------------------ baselines


def test_centre_gaussian_peaks_at_centre_and_is_symmetric():
    g = centre_gaussian_map((21, 21))
    assert g.dtype == np.float32 and g.shape == (21, 21)
    assert np.unravel_index(g.argmax(), g.shape) == (10, 10)
    assert np.array_equal(g, g[::-1]) and np.array_equal(g, g[:, ::-1]) and np.array_equal(g, g.T)
    even = centre_gaussian_map((20, 30))
    assert np.array_equal(even, even[::-1]) and np.array_equal(even, even[:, ::-1])
    assert set(zip(*np.nonzero(even == even.max()), strict=True)) == {(9, 14), (9, 15), (10, 14), (10, 15)}
    # relative coordinates: 10 of 41 rows and 20 of 81 columns from the centre are the same distance
    wide = centre_gaussian_map((41, 81), sigma=0.25)
    assert wide[20 + 10, 40] == pytest.approx(np.exp(-((10 / 41) ** 2) / (2 * 0.25**2)), rel=1e-6)
    assert wide[20, 40 + 20] == pytest.approx(np.exp(-((20 / 81) ** 2) / (2 * 0.25**2)), rel=1e-6)
    assert wide[20 + 10, 40] < wide[20, 40 + 10]  # 10 rows is further than 10 columns, relatively


def test_random_map_reproducible_by_seed():
    a = random_map((8, 9), seed=5)
    assert a.dtype == np.float32 and a.shape == (8, 9)
    assert np.array_equal(a, random_map((8, 9), seed=5))
    assert not np.array_equal(a, random_map((8, 9), seed=6))
    assert a.min() >= 0 and a.max() < 1
    assert np.array_equal(uniform_map((3, 4)), np.ones((3, 4), dtype=np.float32))


# ------------------------------------------------------------------------------------------ summary


def _scores_frame(with_deletion: bool) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for case in range(30):
        group = f"patient{case // 3}"  # 10 patients, 3 images each
        for map_type, base in (("gradcam", 0.7), ("baseline_uniform", 0.1)):
            row = {"case_id": f"c{case}", "map_type": map_type, "group": group}
            row |= {k: base + 0.1 * rng.random() for k in ("pointing", "energy", "iou")}
            if with_deletion:
                row["deletion_auc"] = np.nan if case < 4 and map_type == "gradcam" else rng.random()
            rows.append(row)
    return pd.DataFrame(rows)


def test_summarise_scores_cis_contain_point_and_count_groups():
    frame = _scores_frame(with_deletion=True)
    out = summarise_scores(frame, n_resamples=200, seed=1)
    assert list(out["map_type"]) == ["gradcam", "baseline_uniform"]  # first appearance
    assert list(out["n_cases"]) == [30, 30] and list(out["n_groups"]) == [10, 10]
    assert list(out["deletion_auc_n"]) == [26, 30]
    for metric in ("pointing", "energy", "iou", "deletion_auc"):
        assert (out[f"{metric}_low"] <= out[metric]).all() and (out[metric] <= out[f"{metric}_high"]).all()
        assert (out[f"{metric}_low"] < out[f"{metric}_high"]).all()
    grad = frame[frame["map_type"] == "gradcam"]
    assert out.loc[0, "energy"] == pytest.approx(grad["energy"].mean())
    direct = grouped_bootstrap_ci(grad["iou"], grad["group"], n_resamples=200, seed=1)
    assert (out.loc[0, "iou_low"], out.loc[0, "iou_high"]) == (direct["low"], direct["high"])
    assert direct["unit"] == "group" and direct["n_groups"] == 10


def test_summarise_scores_without_deletion_and_bad_input():
    out = summarise_scores(_scores_frame(with_deletion=False), n_resamples=50)
    assert list(out.columns) == ["map_type", "n_cases", "n_groups"] + [
        f"{m}{suffix}" for m in ("pointing", "energy", "iou") for suffix in ("", "_low", "_high", "_n")
    ]
    frame = _scores_frame(with_deletion=False)
    with pytest.raises(ValueError, match="one"):
        summarise_scores(pd.concat([frame, frame.iloc[:1]]), n_resamples=10)
    with pytest.raises(ValueError, match="lacks"):
        summarise_scores(frame.drop(columns="group"), n_resamples=10)
    frame.loc[0, "group"] = "elsewhere"
    with pytest.raises(ValueError, match="several"):
        summarise_scores(frame, n_resamples=10)
