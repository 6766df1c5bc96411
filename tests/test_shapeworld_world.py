"""ShapeWorld generator: exact rendering, captions, placement rules and ShapeEdit ground truth (SHAPEWORLD.md)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from diffedit.shapeworld.world import (
    BACKGROUNDS,
    CANVAS,
    COLORS,
    EDIT_KINDS,
    SHAPES,
    SIZE_RANGE,
    EditCase,
    Scene,
    ShapeObject,
    all_captions,
    caption,
    edit_cases,
    object_mask,
    parse_caption,
    render_background,
    render_scene,
    rule_violations,
    sample_edit,
    sample_scene,
)


def brute_force_mask(obj: ShapeObject) -> np.ndarray:
    """Independent pure-Python rasterizer, in integers (all quantities doubled), over the whole canvas."""
    s, cx2, cy2 = obj.size, 2 * obj.cx, 2 * obj.cy
    out = np.zeros((CANVAS, CANVAS), dtype=bool)
    for y in range(CANVAS):
        py = 2 * y + 1  # doubled pixel center
        for x in range(CANVAS):
            px = 2 * x + 1
            if obj.shape == "circle":
                inside = (px - cx2) ** 2 + (py - cy2) ** 2 <= s * s
            elif obj.shape == "square":
                inside = abs(px - cx2) <= s and abs(py - cy2) <= s
            else:
                inside = cy2 - s <= py <= cy2 + s and 2 * abs(px - cx2) <= py - (cy2 - s)
            out[y, x] = inside
    return out


# ---------------------------------------------------------------- constants and backgrounds


def test_palette_and_constants():
    assert CANVAS == 128
    assert COLORS == {
        "red": (220, 50, 50),
        "green": (50, 170, 70),
        "blue": (50, 90, 220),
        "yellow": (230, 200, 40),
        "purple": (150, 70, 190),
        "white": (245, 245, 245),
    }
    assert list(COLORS) == ["red", "green", "blue", "yellow", "purple", "white"]
    assert SHAPES == ("circle", "square", "triangle")
    assert BACKGROUNDS == ("gray", "dark", "striped", "checkered")
    assert SIZE_RANGE == (28, 48)


@pytest.mark.parametrize("name, rgb", [("gray", (128, 128, 128)), ("dark", (40, 40, 48))])
def test_solid_backgrounds(name, rgb):
    img = render_background(name)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert (img == np.array(rgb, np.uint8)).all()


def test_striped_background_pixels():
    img = render_background("striped")
    dark, light = (96, 96, 96), (160, 160, 160)
    rows = [(0, dark), (7, dark), (8, light), (15, light), (16, dark), (111, light), (119, dark), (120, light), (127, light)]
    for y, rgb in rows:
        for x in (0, 63, 127):
            assert tuple(img[y, x]) == rgb, (x, y)
    assert (img == img[:, :1]).all()  # stripes are horizontal
    assert (img[:, :, 0] == 96).sum() == 64 * 128


def test_checkered_background_pixels():
    img = render_background("checkered")
    dark, light = (70, 70, 70), (180, 180, 180)
    expected = {
        (0, 0): dark, (15, 15): dark, (16, 0): light, (0, 16): light, (15, 16): light,
        (16, 16): dark, (31, 31): dark, (32, 16): light, (127, 127): dark, (112, 127): dark, (111, 127): light,
    }
    for (x, y), rgb in expected.items():
        assert tuple(img[y, x]) == rgb, (x, y)
    assert (img[:, :, 0] == 70).sum() == (img[:, :, 0] == 180).sum() == 128 * 128 // 2


def test_render_background_returns_a_fresh_copy():
    img = render_background("gray")
    img[:] = 0
    assert (render_background("gray") == 128).all()
    with pytest.raises(ValueError, match="unknown background"):
        render_background("blue")


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "shape, size, count",
    [
        # square: |x+0.5-cx| <= s/2 keeps s columns for even s, s+1 for odd s (both edge centers included)
        ("square", 2, 4), ("square", 3, 16), ("square", 28, 784), ("square", 29, 900), ("square", 48, 2304),
        # circle s=4 (r^2=4): offsets (.5,.5), (.5,1.5), (1.5,.5) per quadrant -> 12;
        # s=6 (r^2=9) adds (.5,2.5), (2.5,.5), (1.5,2.5), (2.5,1.5) -> 32
        ("circle", 2, 4), ("circle", 3, 4), ("circle", 4, 12), ("circle", 5, 16), ("circle", 6, 32),
        # triangle s=3: rows at depth 0,1,2,3 have half-widths 0,.5,1,1.5 -> 0+2+2+4; s=4: depths .5..3.5 -> 0+2+2+4
        ("triangle", 2, 2), ("triangle", 3, 8), ("triangle", 4, 8), ("triangle", 5, 18), ("triangle", 6, 18),
    ],
)
def test_known_pixel_counts(shape, size, count):
    mask = ShapeObject("red", shape, size, 64, 64).mask()
    assert mask.dtype == bool and mask.shape == (128, 128)
    assert mask.sum() == count


def test_small_shapes_pixel_exact():
    square3 = ShapeObject("red", "square", 3, 10, 20).mask()
    ys, xs = np.nonzero(square3)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (8, 11, 18, 21)
    tri3 = ShapeObject("red", "triangle", 3, 10, 20).mask()
    # apex row y=18 (center 18.5 = cy - 1.5) is empty; rows 19..21 have 2, 2, 4 pixels
    assert [tri3[y].sum() for y in range(17, 23)] == [0, 0, 2, 2, 4, 0]
    assert np.nonzero(tri3[21])[0].tolist() == [8, 9, 10, 11]
    circle4 = ShapeObject("red", "circle", 4, 10, 20).mask()
    assert [circle4[y].sum() for y in range(17, 23)] == [0, 2, 4, 4, 2, 0]


@pytest.mark.parametrize("shape", SHAPES)
def test_masks_match_brute_force(shape):
    rng = np.random.default_rng(SHAPES.index(shape))
    for size in (28, 29, 37, 48):
        cx, cy = (int(v) for v in rng.integers(30, 99, size=2))
        obj = ShapeObject("blue", shape, size, cx, cy)
        assert np.array_equal(obj.mask(), brute_force_mask(obj)), (shape, size, cx, cy)


@pytest.mark.parametrize("shape", SHAPES)
def test_masks_symmetric_about_integer_center(shape):
    for size in range(28, 49):
        mask = object_mask(ShapeObject("red", shape, size, 64, 64))
        assert np.array_equal(mask, mask[:, ::-1]), size  # mirror x -> 127 - x maps center 64 to itself
        if shape != "triangle":
            assert np.array_equal(mask, mask.T), size


def test_triangle_points_up():
    mask = ShapeObject("red", "triangle", 40, 64, 64).mask()
    rows = np.flatnonzero(mask.any(axis=1))
    widths = mask[rows].sum(axis=1)
    assert (np.diff(widths) >= 0).all()
    assert widths[-1] == 40 and widths[0] <= 2


def test_shape_object_validation():
    with pytest.raises(ValueError, match="unknown color"):
        ShapeObject("pink", "circle", 30, 64, 64)
    with pytest.raises(ValueError, match="unknown shape"):
        ShapeObject("red", "star", 30, 64, 64)
    with pytest.raises(ValueError, match="integer"):
        ShapeObject("red", "circle", 30.5, 64, 64)
    assert ShapeObject("red", "circle", np.int64(30), 64, 64).size == 30


# ---------------------------------------------------------------- rendering and captions


def test_render_scene_exact_palette():
    a = ShapeObject("white", "square", 30, 30, 40)
    b = ShapeObject("purple", "triangle", 41, 90, 80)
    scene = Scene("checkered", (b, a))
    img = scene.render()
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert np.array_equal(img, render_scene(scene))
    bg = render_background("checkered")
    for obj in (a, b):
        assert (img[obj.mask()] == np.array(COLORS[obj.color], np.uint8)).all()
    outside = ~(a.mask() | b.mask())
    assert np.array_equal(img[outside], bg[outside])
    assert {tuple(v) for v in img.reshape(-1, 3)} == {(70, 70, 70), (180, 180, 180), (245, 245, 245), (150, 70, 190)}


def test_caption_grammar_and_order():
    left = ShapeObject("red", "circle", 30, 30, 90)
    right = ShapeObject("blue", "triangle", 30, 90, 20)
    assert Scene("gray", (left,)).caption() == "a red circle on a gray background"
    scene = Scene("striped", (right, left))
    assert scene.objects == (left, right)  # stored in caption order
    assert scene.caption() == caption(scene) == "a red circle and a blue triangle on a striped background"


def test_caption_order_ties_smaller_cy_first():
    top = ShapeObject("green", "square", 30, 64, 25)
    bottom = ShapeObject("yellow", "circle", 30, 64, 100)
    for objects in [(top, bottom), (bottom, top)]:
        scene = Scene("dark", objects)
        assert scene.objects == (top, bottom)
        assert scene.caption() == "a green square and a yellow circle on a dark background"


def test_scene_validation():
    obj = ShapeObject("red", "circle", 30, 64, 64)
    with pytest.raises(ValueError, match="unknown background"):
        Scene("black", (obj,))
    with pytest.raises(ValueError, match="1 or 2 objects"):
        Scene("gray", ())
    with pytest.raises(ValueError, match="1 or 2 objects"):
        Scene("gray", (obj, obj, obj))


def test_parse_caption_roundtrip_all_captions():
    captions = all_captions()
    assert len(captions) == len(set(captions)) == 4 * (18 + 18 * 17)
    for text in captions:
        background, objects = parse_caption(text)
        assert background in BACKGROUNDS and 1 <= len(objects) <= 2
        assert len(set(objects)) == len(objects)  # never both color and shape shared
        parts = [f"a {c} {s}" for c, s in objects]
        assert text == " and ".join(parts) + f" on a {background} background"
    assert parse_caption("a white triangle and a white square on a checkered background") == (
        "checkered",
        [("white", "triangle"), ("white", "square")],
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red circle on a gray background.",
        "A red circle on a gray background",
        "a red  circle on a gray background",
        " a red circle on a gray background",
        "a pink circle on a gray background",
        "a red star on a gray background",
        "a red circle on a blue background",
        "a red circle",
        "red circle on a gray background",
        "a red circle, a blue square on a gray background",
        "a red circle and a blue square and a green triangle on a gray background",
    ],
)
def test_parse_caption_rejects_text_outside_grammar(text):
    with pytest.raises(ValueError, match="not a ShapeWorld caption"):
        parse_caption(text)


# ---------------------------------------------------------------- sampling


def test_sample_scene_obeys_rules():
    rng = np.random.default_rng(123)
    counts, backgrounds, sizes = Counter(), Counter(), Counter()
    for _ in range(2000):
        scene = sample_scene(rng)
        assert rule_violations(scene) == []
        counts[len(scene.objects)] += 1
        backgrounds[scene.background] += 1
        for obj in scene.objects:
            sizes[obj.size] += 1
            h = obj.size / 2
            assert isinstance(obj.cx, int) and isinstance(obj.cy, int)
            assert 4 <= obj.cx - h and obj.cx + h <= 124 and 4 <= obj.cy - h and obj.cy + h <= 124
            # pixel centers lie in the box, so pixels keep 4 px from the border
            ys, xs = np.nonzero(obj.mask())
            assert xs.min() >= 4 and ys.min() >= 4 and xs.max() <= 123 and ys.max() <= 123
        if len(scene.objects) == 2:
            a, b = scene.objects
            gap_x = max(b.cx - b.size / 2 - (a.cx + a.size / 2), a.cx - a.size / 2 - (b.cx + b.size / 2))
            gap_y = max(b.cy - b.size / 2 - (a.cy + a.size / 2), a.cy - a.size / 2 - (b.cy + b.size / 2))
            assert max(gap_x, gap_y) >= 6
            assert (a.color, a.shape) != (b.color, b.shape)
            assert (a.cx, a.cy) < (b.cx, b.cy)
            # pixel centers 6 apart on one axis: 5 empty pixels between the objects
            near_a = ndimage.binary_dilation(a.mask(), structure=np.ones((3, 3), bool), iterations=5)
            assert not (near_a & b.mask()).any()
    assert 900 < counts[1] < 1100 and counts[1] + counts[2] == 2000
    assert set(backgrounds) == set(BACKGROUNDS) and min(backgrounds.values()) > 400
    assert set(sizes) == set(range(28, 49))


def test_rule_violations_detects_broken_scenes():
    a = ShapeObject("red", "circle", 30, 30, 30)
    assert rule_violations(Scene("gray", (a, ShapeObject("red", "circle", 30, 90, 90)))) != []  # duplicate kind
    assert rule_violations(Scene("gray", (a, ShapeObject("red", "square", 30, 65, 30)))) != []  # gap 5
    assert rule_violations(Scene("gray", (a, ShapeObject("red", "square", 30, 66, 30)))) == []  # gap 6
    assert rule_violations(Scene("gray", (ShapeObject("red", "circle", 30, 18, 64),))) != []  # margin 3
    assert rule_violations(Scene("gray", (ShapeObject("red", "circle", 30, 19, 64),))) == []  # margin 4
    assert rule_violations(Scene("gray", (ShapeObject("red", "circle", 50, 64, 64),))) != []  # size


def test_sample_scene_arguments_and_determinism():
    scenes = [sample_scene(np.random.default_rng(7)) for _ in range(2)]
    assert scenes[0] == scenes[1]
    def sequence(seed: int) -> list[Scene]:
        rng = np.random.default_rng(seed)
        return [sample_scene(rng) for _ in range(20)]

    assert sequence(1) == sequence(1) and sequence(1) != sequence(2)
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng, num_objects=2, background="dark")
        assert len(scene.objects) == 2 and scene.background == "dark"
    with pytest.raises(ValueError, match="num_objects"):
        sample_scene(rng, num_objects=3)
    with pytest.raises(ValueError, match="unknown background"):
        sample_scene(rng, background="plaid")


# ---------------------------------------------------------------- edits


def check_edit(case: EditCase) -> None:
    """Every ground-truth property of one edit."""
    before, after = case.scene.objects[case.index], case.edited.objects[case.index]
    assert (before.size, before.cx, before.cy) == (after.size, after.cx, after.cy)
    assert case.kind in EDIT_KINDS
    assert (before.color != after.color) == (case.kind in ("color", "both"))
    assert (before.shape != after.shape) == (case.kind in ("shape", "both"))
    others = [o for i, o in enumerate(case.scene.objects) if i != case.index]
    assert [o for i, o in enumerate(case.edited.objects) if i != case.index] == others
    assert case.edited.background == case.scene.background
    assert rule_violations(case.edited) == []
    assert case.source == case.scene.caption() and case.target == case.edited.caption()
    assert case.source != case.target
    assert parse_caption(case.source)[0] == parse_caption(case.target)[0] == case.scene.background
    assert case.target_color == COLORS[after.color]
    assert np.array_equal(case.footprint, after.mask())
    assert np.array_equal(case.mask, before.mask() | after.mask())
    src, tgt = case.source_image, case.target_image
    assert np.array_equal(src, case.scene.render()) and np.array_equal(tgt, case.edited.render())
    changed = (src != tgt).any(axis=-1)
    assert changed.any() and not (changed & ~case.mask).any()
    assert (tgt[case.footprint] == np.array(case.target_color, np.uint8)).all()


def test_sample_edit_ground_truth():
    rng = np.random.default_rng(5)
    kinds, indices = Counter(), Counter()
    for _ in range(300):
        case = sample_edit(rng)
        check_edit(case)
        kinds[case.kind] += 1
        indices[(len(case.scene.objects), case.index)] += 1
    assert set(kinds) == set(EDIT_KINDS)
    assert set(indices) == {(1, 0), (2, 0), (2, 1)}


def test_sample_edit_arguments():
    rng = np.random.default_rng(0)
    for kind in EDIT_KINDS:
        case = sample_edit(rng, kind=kind, num_objects=2, background="striped")
        assert case.kind == kind and case.scene.background == "striped" and len(case.scene.objects) == 2
    scene = sample_scene(rng)
    assert sample_edit(rng, scene=scene).scene == scene
    with pytest.raises(ValueError, match="either a scene"):
        sample_edit(rng, scene=scene, background="gray")
    with pytest.raises(ValueError, match="unknown edit kind"):
        sample_edit(rng, kind="size")


def test_sample_edit_redraws_conflicting_targets():
    circle = ShapeObject("red", "circle", 30, 30, 64)
    square = ShapeObject("red", "square", 30, 90, 64)
    scene = Scene("gray", (circle, square))
    results = Counter()
    for seed in range(200):
        case = sample_edit(np.random.default_rng(seed), kind="shape", scene=scene)
        check_edit(case)
        results[case.after.shape] += 1  # red circle -> only triangle; red square -> only triangle
    assert results == Counter({"triangle": 200})
    for seed in range(100):
        case = sample_edit(np.random.default_rng(seed), kind="color", scene=scene)
        check_edit(case)


def test_edit_cases_balanced_and_deterministic():
    cases = edit_cases(48, seed=3)
    combos = Counter((c.kind, c.scene.background, len(c.scene.objects)) for c in cases)
    assert len(combos) == 24 and set(combos.values()) == {2}
    for case in cases:
        check_edit(case)
    again = edit_cases(48, seed=3)
    def key(c: EditCase) -> tuple:
        return (c.scene, c.edited, c.index, c.kind)

    assert [key(c) for c in again] == [key(c) for c in cases]
    assert [c.scene for c in edit_cases(10, seed=3)] == [c.scene for c in cases[:10]]
    assert [c.scene for c in edit_cases(10, seed=4)] != [c.scene for c in cases[:10]]
    assert edit_cases(0, seed=3) == []


@pytest.mark.parametrize("n", [1, 2, 5, 7, 10, 13, 30])
def test_edit_cases_marginals_even_for_any_n(n):
    cases = edit_cases(n, seed=0)
    assert len(cases) == n
    factors = [
        (EDIT_KINDS, lambda c: c.kind),
        (BACKGROUNDS, lambda c: c.scene.background),
        ((1, 2), lambda c: len(c.scene.objects)),
    ]
    for levels, key in factors:
        counts = Counter(key(c) for c in cases)
        per_level = [counts[level] for level in levels]
        assert max(per_level) - min(per_level) <= 1, (n, per_level)


def test_every_combination_reachable():
    combos = set(itertools.product(EDIT_KINDS, BACKGROUNDS, (1, 2)))
    assert {(c.kind, c.scene.background, len(c.scene.objects)) for c in edit_cases(24, seed=11)} == combos
