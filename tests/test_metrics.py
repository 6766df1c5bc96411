"""Generic metrics (PSNR, IoU, dilation, upsampling) and the ShapeEdit per-edit scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffedit.metrics import dilate, disk, mask_iou, psnr, upsample_nearest
from diffedit.shapeworld.scoring import PSNR_CAP, score_edit, summarize
from diffedit.shapeworld.world import BACKGROUNDS, EDIT_KINDS, edit_cases

# ---------------------------------------------------------------- psnr


def test_psnr_identical_is_inf():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert psnr(img, img) == math.inf


def test_psnr_constant_offset():
    img = np.random.default_rng(0).integers(0, 200, (16, 16, 3), dtype=np.uint8)
    assert psnr(img, img + np.uint8(10)) == pytest.approx(20 * math.log10(255 / 10))
    assert psnr(img.astype(np.float32) / 255, (img + np.uint8(10)) / 255, data_range=1.0) == pytest.approx(
        20 * math.log10(255 / 10)
    )


def test_psnr_uint8_does_not_wrap():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 255, np.uint8)
    assert psnr(a, b) == pytest.approx(0.0)
    assert psnr(b, a) == pytest.approx(0.0)


def test_psnr_mask_selects_pixels():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[:4] = 20  # top half differs by 20, bottom half equal
    top = np.zeros((8, 8), bool)
    top[:4] = True
    assert psnr(a, b, mask=~top) == math.inf
    assert psnr(a, b, mask=top) == pytest.approx(20 * math.log10(255 / 20))
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 200))  # mse = 400 / 2
    with pytest.raises(ValueError, match="no pixels"):
        psnr(a, b, mask=np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="mask shape"):
        psnr(a, b, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:4])


# ---------------------------------------------------------------- masks


def test_mask_iou_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 px
    b[:, 3:8] = True  # 50 px, 20 shared
    assert mask_iou(a, b) == pytest.approx(20 / 80)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    assert mask_iou(np.zeros((4, 4), bool), np.ones((4, 4), bool)) == 0.0
    assert mask_iou(a.astype(np.uint8), b.astype(np.float32)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="binary"):
        mask_iou(a * 0.5, b)


def test_mask_iou_upsamples_coarse_prediction():
    rng = np.random.default_rng(0)
    coarse = rng.random((16, 16)) > 0.5
    fine = np.kron(coarse, np.ones((8, 8), dtype=bool))
    assert mask_iou(coarse, fine) == 1.0
    gt = np.zeros((128, 128), bool)
    gt[:8, :4] = True  # half of the first coarse cell
    pred = np.zeros((16, 16), bool)
    pred[0, 0] = True
    assert mask_iou(pred, gt) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="finer"):
        mask_iou(fine, coarse)


def test_upsample_nearest():
    mask = np.array([[1, 0], [0, 1]], bool)
    assert np.array_equal(upsample_nearest(mask, (4, 6)), np.repeat(np.repeat(mask, 2, axis=0), 3, axis=1))
    assert np.array_equal(upsample_nearest(mask, (2, 2)), mask)
    m = np.random.default_rng(1).random((16, 16)) > 0.5
    assert np.array_equal(upsample_nearest(m, (128, 128)), np.repeat(np.repeat(m, 8, 0), 8, 1))


def test_disk_and_dilate():
    assert disk(0).sum() == 1
    assert disk(1).sum() == 5
    assert disk(2).sum() == 13  # offsets with dx^2 + dy^2 <= 4
    assert disk(3).sum() == 29
    point = np.zeros((11, 11), bool)
    point[5, 5] = True
    grown = dilate(point, 2)
    assert grown.sum() == 13
    assert grown[5, 3] and grown[4, 4] and not grown[3, 3]
    assert np.array_equal(dilate(point, 0), point)
    corner = np.zeros((11, 11), bool)
    corner[0, 0] = True
    assert dilate(corner, 2).sum() == 6  # the disk's quarter inside the image: 1 + 2 + 2 + 1
    square = np.zeros((20, 20), bool)
    square[5:10, 5:10] = True
    assert not (square & ~dilate(square, 2)).any()
    assert dilate(square, 2).sum() == 25 + 4 * 5 * 2 + 4 * 1  # sides grow 2, each rounded corner adds (1, 1)
    with pytest.raises(ValueError):
        dilate(point, -1)


def test_dilate_equals_scipy_binary_dilation():
    """metrics.dilate is numpy only (the core install has no scipy); it must match what it replaced bit for bit."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for px in (1, 2, 3, 5):
        for density in (0.002, 0.05, 0.5):
            mask = rng.random((37, 53)) < density
            assert np.array_equal(dilate(mask, px), ndimage.binary_dilation(mask, structure=disk(px))), (px, density)


# ---------------------------------------------------------------- ShapeEdit scoring


@pytest.fixture(scope="module")
def cases():
    return edit_cases(24, seed=0)


def test_score_ground_truth_target_is_perfect(cases):
    for case in cases:
        row = score_edit(case.target_image, case, case.mask)
        assert row["success"] is True
        assert row["target_psnr"] == math.inf and row["background_psnr"] == math.inf
        assert row["mask_iou"] == 1.0
        assert (row["kind"], row["background"], row["num_objects"]) == (
            case.kind,
            case.scene.background,
            len(case.scene.objects),
        )


def test_score_unedited_source_fails_color_edits(cases):
    for case in cases:
        row = score_edit(case.source_image, case, None)
        assert row["mask_iou"] is None
        assert row["background_psnr"] == math.inf  # the source is its own background
        assert row["target_psnr"] < 25
        if case.kind in ("color", "both"):
            assert row["success"] is False
            assert row["target_fraction"] == 0.0


def test_score_background_psnr_ignores_the_dilated_mask(cases):
    case = cases[0]
    edited = case.target_image.copy()
    ring = dilate(case.mask, 2) & ~case.mask
    edited[ring] = 0  # changes only within 2 px of M
    row = score_edit(edited, case, None)
    assert row["background_psnr"] == math.inf and row["target_psnr"] == math.inf and row["success"]
    edited[0, 0] = edited[0, 0] + 10 if edited[0, 0, 0] < 200 else edited[0, 0] - 10
    n = int((~dilate(case.mask, 2)).sum())
    assert score_edit(edited, case, None)["background_psnr"] == pytest.approx(10 * math.log10(255**2 * n * 3 / 300))


def test_score_noisy_target_still_succeeds(cases):
    rng = np.random.default_rng(0)
    for case in cases:
        noisy = np.clip(case.target_image + rng.normal(0, 10, (128, 128, 3)), 0, 255).astype(np.uint8)
        row = score_edit(noisy, case, np.zeros((16, 16), bool))
        assert row["success"] and 25 < row["target_psnr"] < 35 and row["mask_iou"] == 0.0


def test_summarize_groups(cases):
    rows = [score_edit(c.target_image, c, c.mask) for c in cases]
    rows += [score_edit(c.source_image, c, None) for c in cases if c.kind == "color"]
    summary = summarize(rows)
    overall = summary["overall"]
    assert overall["n"] == 24 + 8
    assert overall["success"] == pytest.approx(24 / 32)
    assert overall["mask_iou"] == 1.0  # rows without a predicted mask are left out
    assert overall["background_psnr"] == PSNR_CAP
    assert list(summary["by_kind"]) == list(EDIT_KINDS)
    assert summary["by_kind"]["color"]["success"] == pytest.approx(0.5)
    assert summary["by_kind"]["shape"]["success"] == 1.0
    assert list(summary["by_background"]) == list(BACKGROUNDS)
    assert sum(g["n"] for g in summary["by_background"].values()) == 32
    assert set(summary["by_num_objects"]) == {1, 2}
    assert summarize(rows[:1])["overall"]["mask_iou"] == 1.0
    assert summarize([r for r in rows if r["mask_iou"] is None])["overall"]["mask_iou"] is None
    with pytest.raises(ValueError, match="no rows"):
        summarize([])


# ---------------------------------------------------------------- ghosts (SHAPEWORLD.md, added 2026-12-02)


def test_ghosts_of_the_truth_and_of_the_untouched_input(cases):
    for case in cases:
        perfect = score_edit(case.target_image, case, case.mask)
        assert perfect["ghost_pixels"] == 0 and perfect["ghost_free"] and perfect["clean"]
        untouched = score_edit(case.source_image, case, None)
        # the input keeps the whole old object: at least every pixel of it where the truth differs from the old colour
        # (plus background left inside a new footprint where the background is nearer the old colour than the new)
        old = case.before.mask()
        truth_far = np.sqrt(((case.target_image.astype(float) - np.asarray(case.before.rgb, float)) ** 2).sum(-1)) >= 60
        assert untouched["ghost_pixels"] >= int((old & truth_far).sum())
        if case.kind != "shape":
            assert untouched["ghost_pixels"] > 24 and not untouched["clean"]


def test_an_old_colour_fringe_is_counted_and_nothing_else(cases):
    case = next(c for c in cases if c.kind == "color")
    edited = case.target_image.copy()
    ring = case.before.mask() & ~erode_px(case.before.mask(), 1)  # the old object's outermost pixels
    edited[ring] = case.before.rgb
    row = score_edit(edited, case, None)
    assert row["ghost_pixels"] == int(ring.sum()) > 24
    assert row["success"] and not row["ghost_free"] and not row["clean"]  # success does not see the fringe
    half = edited.copy()
    half[ring] = (0.5 * np.asarray(case.before.rgb) + 0.5 * np.asarray(case.after.rgb)).astype(np.uint8)  # halfway
    assert score_edit(half, case, None)["ghost_pixels"] == 0  # not closer to the old colour than to the truth


def test_summaries_give_ghost_rates(cases):
    rows = [score_edit(c.target_image, c, None) for c in cases] + [score_edit(c.source_image, c, None) for c in cases]
    overall = summarize(rows)["overall"]
    assert overall["ghost_free"] == pytest.approx(np.mean([r["ghost_pixels"] <= 24 for r in rows]))
    assert overall["clean"] == pytest.approx(np.mean([r["success"] and r["ghost_pixels"] <= 24 for r in rows]))
    assert overall["ghost_pixels"] == pytest.approx(np.mean([r["ghost_pixels"] for r in rows]))
    assert 0.5 < overall["ghost_free"] < 1 and overall["clean"] < overall["ghost_free"]


def erode_px(mask: np.ndarray, px: int) -> np.ndarray:
    return ~dilate(~mask, px)


def test_drawn_size_is_one_for_the_truth_and_follows_a_grown_or_shrunk_object(cases):
    for case in cases:
        assert score_edit(case.target_image, case, None)["drawn_size"] == pytest.approx(1.0)
    case = next(c for c in cases if c.kind == "shape")
    for px, above in ((2, True), (-2, False)):
        edited = case.target_image.copy()
        footprint = case.footprint
        changed = (dilate(footprint, px) & ~footprint) if above else (footprint & ~erode_px(footprint, -px))
        edited[changed] = case.after.rgb if above else case.source_image[0, 0]  # grown over, or cut back to background
        size = score_edit(edited, case, None)["drawn_size"]
        expected = 1 + changed.sum() / footprint.sum() if above else 1 - changed.sum() / footprint.sum()
        assert (size > 1.05 if above else size < 0.95) and size == pytest.approx(expected, abs=0.02)
    rows = [score_edit(c.target_image, c, None) for c in cases]
    assert summarize(rows)["overall"]["drawn_size"] == pytest.approx(1.0)
