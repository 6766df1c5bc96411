"""ShapeWorld image checker: exact renders read back perfectly, noisy/blurred ones almost always."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from diffedit.shapeworld.checker import DetectedObject, Reading, check_caption, read_image
from diffedit.shapeworld.world import BACKGROUNDS, COLORS, SHAPES, Scene, ShapeObject, render_background, sample_scene


def degrade(img: np.ndarray, rng: np.random.Generator, sigma: float = 10.0, blur: float = 0.8) -> np.ndarray:
    """Gaussian blur (per channel, spatial sigma blur) then Gaussian noise of std sigma, back to uint8."""
    out = ndimage.gaussian_filter(img.astype(np.float64), sigma=(blur, blur, 0))
    out += rng.normal(0.0, sigma, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_reads_300_exact_scenes_perfectly():
    rng = np.random.default_rng(2024)
    wrong = []
    for _ in range(300):
        scene = sample_scene(rng)
        reading = read_image(scene.render())
        if reading.caption() != scene.caption():
            wrong.append((scene.caption(), reading.caption()))
        for det, obj in zip(reading.objects, scene.objects):
            # centroids of pixel centers are exactly the integer centers (shapes are symmetric in x)
            assert det.cx == obj.cx
            assert det.area == obj.mask().sum() and np.array_equal(det.mask, obj.mask())
    assert wrong == []


def test_reads_noisy_blurred_scenes():
    rng = np.random.default_rng(7)
    n, correct = 300, 0
    for _ in range(n):
        scene = sample_scene(rng)
        correct += check_caption(degrade(scene.render(), rng), scene.caption())
    assert correct / n >= 0.95


def test_reads_heavier_degradation():
    rng = np.random.default_rng(8)
    n, correct = 100, 0
    for _ in range(n):
        scene = sample_scene(rng)
        correct += check_caption(degrade(scene.render(), rng, sigma=15.0, blur=1.2), scene.caption())
    assert correct / n >= 0.95


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_empty_backgrounds_have_no_objects(background):
    rng = np.random.default_rng(BACKGROUNDS.index(background))
    for img in (render_background(background), degrade(render_background(background), rng, sigma=12.0)):
        reading = read_image(img)
        assert reading.background == background
        assert reading.objects == []
    assert reading.caption() == f"nothing on a {background} background"


@pytest.mark.parametrize("background", BACKGROUNDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_color_and_shape_on_every_background(background, shape):
    rng = np.random.default_rng(1)
    for color in COLORS:
        for size in (28, 48):
            scene = Scene(background, (ShapeObject(color, shape, size, 64, 64),))
            assert check_caption(scene.render(), scene.caption()), (color, shape, size, background)
            assert check_caption(degrade(scene.render(), rng), scene.caption()), (color, shape, size, background)


def test_same_cx_tie_reads_smaller_cy_first():
    rng = np.random.default_rng(3)
    top = ShapeObject("white", "triangle", 29, 64, 24)
    bottom = ShapeObject("white", "circle", 40, 64, 96)
    scene = Scene("checkered", (bottom, top))
    text = "a white triangle and a white circle on a checkered background"
    assert scene.caption() == text
    assert read_image(scene.render()).caption() == text
    for _ in range(10):
        assert check_caption(degrade(scene.render(), rng), text)


def test_one_pixel_apart_in_x_is_not_a_tie():
    left_low = ShapeObject("red", "square", 30, 63, 100)
    right_high = ShapeObject("blue", "square", 30, 64, 25)
    scene = Scene("gray", (right_high, left_low))
    assert scene.caption() == "a red square and a blue square on a gray background"
    assert check_caption(scene.render(), scene.caption())


def test_check_caption_rejects_wrong_captions():
    scene = Scene("striped", (ShapeObject("green", "circle", 36, 30, 40), ShapeObject("yellow", "square", 30, 95, 90)))
    img = scene.render()
    assert check_caption(img, "a green circle and a yellow square on a striped background")
    for wrong in [
        "a yellow square and a green circle on a striped background",  # order
        "a green circle and a yellow square on a gray background",  # background
        "a green circle and a red square on a striped background",  # color
        "a green circle and a yellow triangle on a striped background",  # shape
        "a green circle on a striped background",  # count
    ]:
        assert not check_caption(img, wrong), wrong
    with pytest.raises(ValueError, match="not a ShapeWorld caption"):
        check_caption(img, "two things on a striped background")


def test_small_blobs_are_ignored():
    img = render_background("dark")
    img[10:17, 10:17] = COLORS["red"]  # 49 px: below the blob threshold
    img[100, 100] = COLORS["white"]
    reading = read_image(img)
    assert reading.background == "dark" and reading.objects == []


def test_reading_types_and_validation():
    scene = Scene("gray", (ShapeObject("purple", "circle", 40, 40, 40),))
    reading = read_image(scene.render())
    assert isinstance(reading, Reading) and isinstance(reading.objects[0], DetectedObject)
    det = reading.objects[0]
    assert (det.color, det.shape, det.cx, det.cy) == ("purple", "circle", 40.0, 40.0)
    assert det.mask.shape == (128, 128) and det.mask.dtype == bool
    assert reading.pairs == [("purple", "circle")]
    # float images on the 0..255 scale are accepted
    assert read_image(scene.render().astype(np.float32)).caption() == scene.caption()
    with pytest.raises(ValueError, match="expected a"):
        read_image(np.zeros((64, 64, 3), np.uint8))
