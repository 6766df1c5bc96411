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
    format_caption,
    parse_caption,
    render_background,
)

COLOR_TOLERANCE = 60.0  # max RGB distance from an object color
MIN_AREA = 60  # blobs smaller than this (pixels) are noise; the smallest object has ~390
BACKGROUND_CLIP = 80.0  # per-pixel error cap when scoring background candidates
BORDER_PX = 2  # pixels around objects left out of the background decision
SQUARE_FILL = 0.9  # bbox fill ratio above which a symmetric blob is a square (circle ~ pi/4)
TRIANGLE_TAPER = 0.6  # top-quarter / bottom-quarter width ratio below which a blob is a triangle
TIE_PX = 0.5  # centroids closer than this in x count as a caption-order tie

_OBJECT_COLORS = tuple(COLORS)
_PALETTE = np.array(
    [COLORS[c] for c in _OBJECT_COLORS] + [GRAY, DARK, STRIPE_DARK, STRIPE_LIGHT, CHECKER_DARK, CHECKER_LIGHT],
    dtype=np.float64,
)
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


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
    return img.astype(np.float64)


def _classify_shape(mask: np.ndarray) -> str:
    """Circle, square or triangle from a filled silhouette (taper of its rows, then bbox fill)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h = rows[-1] - rows[0] + 1
    w = cols[-1] - cols[0] + 1
    widths = mask[rows[0] : rows[-1] + 1].sum(axis=1)
    q = max(1, h // 4)
    taper = widths[:q].mean() / max(widths[-q:].mean(), 1.0)
    if taper < TRIANGLE_TAPER:
        return "triangle"
    fill = mask.sum() / float(h * w)
    return "square" if fill >= SQUARE_FILL else "circle"


def _choose_background(img: np.ndarray, keep: np.ndarray) -> str:
    """The background render with the smallest clipped RGB error over the kept pixels."""
    if not keep.any():
        keep = np.ones(keep.shape, dtype=bool)
    costs = []
    for name in BACKGROUNDS:
        err = np.linalg.norm(img[keep] - render_background(name)[keep], axis=-1)
        costs.append(np.minimum(err, BACKGROUND_CLIP).mean())
    return BACKGROUNDS[int(np.argmin(costs))]


def read_image(image: np.ndarray) -> Reading:
    """Read the background and the objects of a (128, 128, 3) image on the 0..255 scale."""
    img = _as_image(image)
    dist = np.linalg.norm(img[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, 12)
    nearest = dist.argmin(axis=-1)
    is_object = (nearest < len(_OBJECT_COLORS)) & (dist.min(axis=-1) <= COLOR_TOLERANCE)

    labels, count = ndimage.label(is_object, structure=_FOUR_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    objects = []
    covered = np.zeros(is_object.shape, dtype=bool)
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS]
    for k in range(1, count + 1):
        if sizes[k] < MIN_AREA:
            continue
        component = labels == k
        color = _OBJECT_COLORS[int(np.bincount(nearest[component], minlength=len(_OBJECT_COLORS)).argmax())]
        filled = ndimage.binary_fill_holes(component)
        objects.append(
            DetectedObject(
                color=color,
                shape=_classify_shape(filled),
                cx=float(xs[filled].mean() + 0.5),
                cy=float(ys[filled].mean() + 0.5),
                area=int(filled.sum()),
                mask=filled,
            )
        )
        covered |= filled
    keep = ~ndimage.binary_dilation(covered, iterations=BORDER_PX) if covered.any() else ~covered
    return Reading(background=_choose_background(img, keep), objects=sort_left_to_right(objects))


def check_caption(image: np.ndarray, caption: str) -> bool:
    """True when the image reads as the caption: same background and same objects in the same order."""
    background, pairs = parse_caption(caption)
    reading = read_image(image)
    return reading.background == background and reading.pairs == pairs
