"""Read a (possibly generated, noisy) ShapeWorld image back into a caption (/work/shared/SHAPEWORLD.md).

Every pixel is assigned to the nearest of the 12 palette values (6 object colors, 6 background
tones); it counts as an object pixel when that nearest value is an object color within
COLOR_TOLERANCE. Object pixels are grouped into connected components, small blobs are dropped,
each component takes its majority color, and its shape is classified from its filled silhouette.
The background is the one of the four renders that best explains the remaining pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from diffedit.shapeworld.world import (
    BACKGROUNDS,
    CANVAS,
    CHECKER_DARK,
    CHECKER_LIGHT,
    COLORS,
    DARK,
    GRAY,
    STRIPE_DARK,
    STRIPE_LIGHT,
    SHAPES,
    format_caption,
    parse_caption,
    render_background,
)

COLOR_TOLERANCE = 60.0  # max RGB distance from an object color
MIN_AREA = 60  # blobs smaller than this (pixels) are noise; the smallest object has ~390
BACKGROUND_CLIP = 80.0  # per-pixel error cap when scoring background candidates
BORDER_PX = 2  # pixels around objects left out of the background decision
TIE_PX = 0.5  # centroids closer than this in x count as a caption-order tie

_OBJECT_COLORS = tuple(COLORS)
_PALETTE = np.array(
    [COLORS[c] for c in _OBJECT_COLORS] + [GRAY, DARK, STRIPE_DARK, STRIPE_LIGHT, CHECKER_DARK, CHECKER_LIGHT],
    dtype=np.float32,
)
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_YC, _XC = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float64) + 0.5  # pixel centers
_BACKGROUND_RENDERS = np.stack([render_background(name) for name in BACKGROUNDS]).astype(np.float32)


@dataclass(eq=False)
class DetectedObject:
    """An object found in an image: color, shape, centroid (pixel-center coordinates), area and mask."""

    color: str
    shape: str
    cx: float
    cy: float
    area: int
    mask: np.ndarray = field(repr=False)


def _caption_order(a: DetectedObject, b: DetectedObject) -> int:
    """Left to right by cx; within TIE_PX, smaller cy first."""
    if abs(a.cx - b.cx) >= TIE_PX:
        return -1 if a.cx < b.cx else 1
    return -1 if a.cy < b.cy else (1 if a.cy > b.cy else 0)


def sort_left_to_right(objects: list[DetectedObject]) -> list[DetectedObject]:
    """Objects in caption order (left to right, ties by smaller cy)."""
    return sorted(objects, key=functools.cmp_to_key(_caption_order))


@dataclass(eq=False)
class Reading:
    """What an image shows: its background and the detected objects (left to right)."""

    background: str
    objects: list[DetectedObject]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(color, shape) of each object, in caption order."""
        return [(o.color, o.shape) for o in sort_left_to_right(self.objects)]

    def caption(self) -> str:
        """Caption of the reading; readings with 0 or > 2 objects give text outside the grammar."""
        pairs = self.pairs
        if 1 <= len(pairs) <= 2:
            return format_caption(self.background, pairs)
        names = " and ".join(f"a {c} {s}" for c, s in pairs) or "nothing"
        return f"{names} on a {self.background} background"


def _as_image(image: np.ndarray) -> np.ndarray:
    """Validate a (128, 128, 3) image on the 0..255 scale and return it as float64."""
    img = np.asarray(image)
    if img.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"expected a ({CANVAS}, {CANVAS}, 3) image, got shape {img.shape}")
    return img.astype(np.float32)


def _shape_template(shape: str, cx: float, cy: float, size: float) -> np.ndarray:
    """Silhouette of a shape with a real-valued center and size (same inequalities as the world)."""
    dx, dy, half = _XC - cx, _YC - cy, size / 2
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    depth = _YC - (cy - half)
    return (dy <= half) & (np.abs(dx) <= depth / 2)


def _classify_shape(mask: np.ndarray, cx: float, cy: float) -> str:
    """The shape whose template, sized by area and placed by centroid, overlaps mask best (IoU)."""
    area = float(mask.sum())
    sizes = {"circle": 2 * np.sqrt(area / np.pi), "square": np.sqrt(area), "triangle": np.sqrt(2 * area)}
    best, best_iou = "circle", -1.0
    for shape in SHAPES:
        size = sizes[shape]
        # a triangle's centroid lies size/6 below its center
        center_y = cy - size / 6 if shape == "triangle" else cy
        template = _shape_template(shape, cx, center_y, size)
        iou = (template & mask).sum() / float((template | mask).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def _sq_distances(img: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Squared RGB distance of every pixel of img (..., 3) to each color (K, 3): shape (K, ...)."""
    r, g, b = (img[..., i] for i in range(3))
    out = np.empty((len(colors),) + img.shape[:-1], dtype=np.float32)
    for k, (cr, cg, cb) in enumerate(colors):
        out[k] = (r - cr) ** 2 + (g - cg) ** 2 + (b - cb) ** 2
    return out


def _choose_background(img: np.ndarray, keep: np.ndarray) -> str:
    """The background render with the smallest clipped RGB error over the kept pixels."""
    if not keep.any():
        keep = np.ones(keep.shape, dtype=bool)
    pixels = img[keep]  # (N, 3)
    costs = []
    for render in _BACKGROUND_RENDERS:
        diff = pixels - render[keep]
        err = np.sqrt(diff[:, 0] ** 2 + diff[:, 1] ** 2 + diff[:, 2] ** 2)
        costs.append(np.minimum(err, BACKGROUND_CLIP).mean())
    return BACKGROUNDS[int(np.argmin(costs))]


def _nearest_palette(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest palette value of every pixel and the RGB distance to it."""
    sq = _sq_distances(img, _PALETTE)
    nearest = sq.argmin(axis=0)
    dist = np.sqrt(np.take_along_axis(sq, nearest[None], axis=0)[0])
    return nearest, dist


def read_image(image: np.ndarray) -> Reading:
    """Read the background and the objects of a (128, 128, 3) image on the 0..255 scale."""
    img = _as_image(image)
    nearest, dist = _nearest_palette(img)
    is_object = (nearest < len(_OBJECT_COLORS)) & (dist <= COLOR_TOLERANCE)

    labels, count = ndimage.label(is_object, structure=_FOUR_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    objects = []
    covered = np.zeros(is_object.shape, dtype=bool)
    for k in np.flatnonzero(sizes >= MIN_AREA):
        if k == 0:
            continue
        component = labels == k
        votes = np.bincount(nearest[component], minlength=len(_OBJECT_COLORS))
        filled = ndimage.binary_fill_holes(component)
        cx, cy = float(_XC[filled].mean()), float(_YC[filled].mean())
        objects.append(
            DetectedObject(
                color=_OBJECT_COLORS[int(votes.argmax())],
                shape=_classify_shape(filled, cx, cy),
                cx=cx,
                cy=cy,
                area=int(filled.sum()),
                mask=filled,
            )
        )
        covered |= filled
    keep = ~ndimage.binary_dilation(covered, iterations=BORDER_PX)
    return Reading(background=_choose_background(img, keep), objects=sort_left_to_right(objects))


def check_caption(image: np.ndarray, caption: str) -> bool:
    """True when the image reads as the caption: same background and same objects in the same order."""
    background, pairs = parse_caption(caption)
    reading = read_image(image)
    return reading.background == background and reading.pairs == pairs
