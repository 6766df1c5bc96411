"""ShapeWorld scenes, captions and ShapeEdit ground truth, drawn exactly per /work/shared/SHAPEWORLD.md.

Pixel (x, y) belongs to a shape when its center (x + 0.5, y + 0.5) satisfies the shape's
inequality; drawing has no anti-aliasing and uses exact palette values. All coordinates are
multiples of 0.5, so every test below is exact in float64. This module depends on numpy only.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CANVAS = 128
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (50, 170, 70),
    "blue": (50, 90, 220),
    "yellow": (230, 200, 40),
    "purple": (150, 70, 190),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("gray", "dark", "striped", "checkered")
SIZE_RANGE = (28, 48)
MARGIN = 4
SEPARATION = 6
EDIT_KINDS = ("color", "shape", "both")

# Background palette (spec table).
GRAY = (128, 128, 128)
DARK = (40, 40, 48)
STRIPE_DARK, STRIPE_LIGHT = (96, 96, 96), (160, 160, 160)
CHECKER_DARK, CHECKER_LIGHT = (70, 70, 70), (180, 180, 180)
STRIPE_HEIGHT = 8
CHECKER_SIZE = 16

# Pixel-center coordinates, shared by every mask.
_YC, _XC = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float64) + 0.5
_BACKGROUND_CACHE: dict[str, np.ndarray] = {}


@dataclass(frozen=True)
class ShapeObject:
    """One colored shape with integer size and center."""

    color: str
    shape: str
    size: int
    cx: int
    cy: int

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {tuple(COLORS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        for name in ("size", "cx", "cy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) = [cx - s/2, cx + s/2] x [cy - s/2, cy + s/2]."""
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """Palette value of the object's color."""
        return COLORS[self.color]

    def mask(self) -> np.ndarray:
        """Boolean (128, 128) mask of the pixels whose centers lie inside the shape."""
        return object_mask(self)


def _caption_key(obj: ShapeObject) -> tuple[int, int]:
    """Caption order: left to right by cx, ties broken by smaller cy."""
    return (obj.cx, obj.cy)


@dataclass(frozen=True)
class Scene:
    """A background and 1 or 2 objects, stored in caption order."""

    background: str
    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {BACKGROUNDS}")
        objects = tuple(self.objects)
        if not 1 <= len(objects) <= 2:
            raise ValueError(f"a scene has 1 or 2 objects, got {len(objects)}")
        if not all(isinstance(o, ShapeObject) for o in objects):
            raise ValueError("scene objects must be ShapeObject instances")
        object.__setattr__(self, "objects", tuple(sorted(objects, key=_caption_key)))

    def caption(self) -> str:
        """The scene's caption (SHAPEWORLD.md grammar)."""
        return caption(self)

    def render(self) -> np.ndarray:
        """The scene as a uint8 (128, 128, 3) image."""
        return render_scene(self)


def render_background(name: str) -> np.ndarray:
    """A uint8 (128, 128, 3) image of the named background."""
    if name not in _BACKGROUND_CACHE:
        if name == "gray":
            img = np.broadcast_to(np.array(GRAY, np.uint8), (CANVAS, CANVAS, 3))
        elif name == "dark":
            img = np.broadcast_to(np.array(DARK, np.uint8), (CANVAS, CANVAS, 3))
        elif name == "striped":
            dark_rows = (np.arange(CANVAS) // STRIPE_HEIGHT) % 2 == 0
            sel = np.broadcast_to(dark_rows[:, None], (CANVAS, CANVAS))
            img = np.where(sel[..., None], np.array(STRIPE_DARK, np.uint8), np.array(STRIPE_LIGHT, np.uint8))
        elif name == "checkered":
            cell = np.arange(CANVAS) // CHECKER_SIZE
            sel = (cell[:, None] + cell[None, :]) % 2 == 0
            img = np.where(sel[..., None], np.array(CHECKER_DARK, np.uint8), np.array(CHECKER_LIGHT, np.uint8))
        else:
            raise ValueError(f"unknown background {name!r}; expected one of {BACKGROUNDS}")
        _BACKGROUND_CACHE[name] = np.ascontiguousarray(img, dtype=np.uint8)
    return _BACKGROUND_CACHE[name].copy()


def object_mask(obj: ShapeObject) -> np.ndarray:
    """Boolean (128, 128) mask of the pixels whose centers (x + 0.5, y + 0.5) lie inside obj."""
    dx = _XC - obj.cx
    dy = _YC - obj.cy
    half = obj.size / 2
    if obj.shape == "circle":
        return dx * dx + dy * dy <= half * half
    if obj.shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if obj.shape == "triangle":
        depth = _YC - (obj.cy - half)  # distance below the apex row
        return (depth >= 0) & (dy <= half) & (np.abs(dx) <= depth / 2)
    raise ValueError(f"unknown shape {obj.shape!r}")


def render_scene(scene: Scene) -> np.ndarray:
    """Draw the scene: background, then each object in its exact palette color."""
    img = render_background(scene.background)
    for obj in scene.objects:
        img[object_mask(obj)] = obj.rgb
    return img


def format_caption(background: str, objects: Sequence[tuple[str, str]]) -> str:
    """Caption for a background and 1 or 2 (color, shape) pairs already in left-to-right order."""
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}")
    if not 1 <= len(objects) <= 2:
        raise ValueError(f"a caption names 1 or 2 objects, got {len(objects)}")
    for color, shape in objects:
        if color not in COLORS or shape not in SHAPES:
            raise ValueError(f"unknown object {color!r} {shape!r}")
    names = " and ".join(f"a {color} {shape}" for color, shape in objects)
    return f"{names} on a {background} background"


def caption(scene: Scene) -> str:
    """The scene's caption, objects left to right (ties: smaller cy first)."""
    ordered = sorted(scene.objects, key=_caption_key)
    return format_caption(scene.background, [(o.color, o.shape) for o in ordered])


_ALT = "|".join
_OBJECT_RE = rf"a ({_ALT(COLORS)}) ({_ALT(SHAPES)})"
_CAPTION_RE = re.compile(rf"{_OBJECT_RE}(?: and {_OBJECT_RE})? on a ({_ALT(BACKGROUNDS)}) background")


def parse_caption(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Parse a caption into (background, [(color, shape), ...]); ValueError if outside the grammar."""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a string, got {type(text).__name__}")
    m = _CAPTION_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"not a ShapeWorld caption: {text!r} (expected 'a {{color}} {{shape}} "
            f"[and a {{color}} {{shape}}] on a {{background}} background')"
        )
    c1, s1, c2, s2, background = m.groups()
    objects = [(c1, s1)] if c2 is None else [(c1, s1), (c2, s2)]
    return background, objects


def all_captions() -> list[str]:
    """Every caption of a valid scene: 1 object, or 2 objects not sharing both color and shape."""
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    pairs = [[k] for k in kinds] + [[a, b] for a, b in itertools.permutations(kinds, 2)]
    return [format_caption(bg, objs) for bg in BACKGROUNDS for objs in pairs]


def _bbox_gap(a: ShapeObject, b: ShapeObject) -> float:
    """Largest axis gap between two bounding boxes (negative when they overlap on both axes)."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)


def rule_violations(scene: Scene) -> list[str]:
    """Broken placement/size/uniqueness rules of a scene (empty list when it obeys them all)."""
    problems = []
    lo, hi = SIZE_RANGE
    for obj in scene.objects:
        if not lo <= obj.size <= hi:
            problems.append(f"{obj.color} {obj.shape}: size {obj.size} outside {SIZE_RANGE}")
        x0, y0, x1, y1 = obj.bbox
        if min(x0, y0) < MARGIN or max(x1, y1) > CANVAS - MARGIN:
            problems.append(f"{obj.color} {obj.shape}: bounding box within {MARGIN} px of the border")
    for a, b in itertools.combinations(scene.objects, 2):
        if _bbox_gap(a, b) < SEPARATION:
            problems.append(f"bounding boxes less than {SEPARATION} px apart")
        if (a.color, a.shape) == (b.color, b.shape):
            problems.append(f"two objects are both {a.color} {a.shape}s")
    return problems


def _sample_object(rng: np.random.Generator) -> ShapeObject:
    """One object with uniform color, shape, size and an integer center inside the margins."""
    color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
    lo = math.ceil(MARGIN + size / 2)
    hi = math.floor(CANVAS - MARGIN - size / 2)
    cx = int(rng.integers(lo, hi + 1))
    cy = int(rng.integers(lo, hi + 1))
    return ShapeObject(color, shape, size, cx, cy)


def _compatible(obj: ShapeObject, others: Sequence[ShapeObject]) -> bool:
    """True when obj keeps the separation and uniqueness rules against every other object."""
    return all(
        _bbox_gap(obj, o) >= SEPARATION and (obj.color, obj.shape) != (o.color, o.shape) for o in others
    )


def sample_scene(
    rng: np.random.Generator, *, num_objects: int | None = None, background: str | None = None
) -> Scene:
    """A random valid scene (1 or 2 objects with equal probability unless num_objects is given)."""
    if num_objects is None:
        num_objects = int(rng.integers(1, 3))
    if num_objects not in (1, 2):
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects!r}")
    if background is None:
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    elif background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; expected one of {BACKGROUNDS}")
    objects: list[ShapeObject] = []
    for _ in range(10_000):
        obj = _sample_object(rng)
        if _compatible(obj, objects):
            objects.append(obj)
            if len(objects) == num_objects:
                return Scene(background, tuple(objects))
    raise RuntimeError("could not place the objects")  # pragma: no cover - never happens with the spec sizes


@dataclass(frozen=True)
class EditCase:
    """One ShapeEdit case: scene.objects[index] changes its color, shape or both into edited."""

    scene: Scene
    edited: Scene
    index: int
    kind: str

    @property
    def source(self) -> str:
        """Source prompt: the caption of the input scene."""
        return self.scene.caption()

    @property
    def target(self) -> str:
        """Target prompt: the caption of the edited scene."""
        return self.edited.caption()

    @property
    def source_image(self) -> np.ndarray:
        """Input image I."""
        return self.scene.render()

    @property
    def target_image(self) -> np.ndarray:
        """Ground-truth target image G."""
        return self.edited.render()

    @property
    def before(self) -> ShapeObject:
        """The changed object as it is in the input scene."""
        return self.scene.objects[self.index]

    @property
    def after(self) -> ShapeObject:
        """The changed object after the edit (same center and size)."""
        return self.edited.objects[self.index]

    @property
    def footprint(self) -> np.ndarray:
        """Boolean mask of the changed object after the edit."""
        return self.after.mask()

    @property
    def mask(self) -> np.ndarray:
        """Ground-truth edit mask M: the object's pixels before or after the change."""
        return self.before.mask() | self.after.mask()

    @property
    def target_color(self) -> tuple[int, int, int]:
        """Palette value of the changed object's color after the edit."""
        return self.after.rgb

    @property
    def num_objects(self) -> int:
        """Number of objects in the scene."""
        return len(self.scene.objects)


def sample_edit(
    rng: np.random.Generator,
    *,
    kind: str | None = None,
    scene: Scene | None = None,
    num_objects: int | None = None,
    background: str | None = None,
) -> EditCase:
    """A random edit of one object (color, shape or both) that keeps the scene valid."""
    if kind is None:
        kind = EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
    elif kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    if scene is None:
        scene = sample_scene(rng, num_objects=num_objects, background=background)
    elif num_objects is not None or background is not None:
        raise ValueError("give either a scene or num_objects/background, not both")
    index = int(rng.integers(len(scene.objects)))
    old = scene.objects[index]
    taken = {(o.color, o.shape) for i, o in enumerate(scene.objects) if i != index}
    colors = [old.color] if kind == "shape" else [c for c in COLORS if c != old.color]
    shapes = [old.shape] if kind == "color" else [s for s in SHAPES if s != old.shape]
    choices = [(c, s) for c in colors for s in shapes if (c, s) not in taken]
    color, shape = choices[int(rng.integers(len(choices)))]
    new = ShapeObject(color, shape, old.size, old.cx, old.cy)
    objects = list(scene.objects)
    objects[index] = new
    edited = Scene(scene.background, tuple(objects))
    assert edited.objects[index] is new  # same centers, hence same caption order
    return EditCase(scene=scene, edited=edited, index=index, kind=kind)


def edit_cases(n: int, seed: int) -> list[EditCase]:
    """n edit cases, deterministic for (n, seed), balanced over kind x background x num_objects.

    Case i uses kind i % 3, background i % 4 and num_objects 1 + (i + i // 4) % 2: every one of
    the 24 combinations appears once in any 24 aligned consecutive cases, and each factor alone
    is balanced to within one case for every n. Case i depends only on (seed, i), so prefixes agree.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cases = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        cases.append(
            sample_edit(
                rng,
                kind=EDIT_KINDS[i % 3],
                num_objects=1 + (i + i // 4) % 2,
                background=BACKGROUNDS[i % 4],
            )
        )
    return cases
