"""Panels of ShapeEdit cases, so that a reader sees what the figures mean: the worst ghosts of a method, or a
method before and after a change on the same cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffedit.images import make_panel, save_image
from diffedit.shapeworld.scoring import ghost_pixels
from diffedit.shapeworld.world import EditCase

__all__ = ["ghost_overlay", "worst_ghost_panel", "worst_cases", "typical_cases", "compare_panel"]

GHOST_COLOR = (255, 0, 255)  # magenta: no palette colour of ShapeWorld


def ghost_overlay(edited: np.ndarray, case: EditCase) -> Image.Image:
    """The edit with its ghost pixels (scoring.ghost_pixels) painted magenta."""
    out = np.asarray(edited).copy()
    out[ghost_pixels(edited, case)] = GHOST_COLOR
    return Image.fromarray(out)


def worst_cases(rows: list[dict], count: int) -> list[int]:
    """Indices of the `count` rows with the most ghost pixels (ties: failed edits first, then case order)."""
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["ghost_pixels"], rows[i]["success"], i))
    return order[:count]


def worst_ghost_panel(
    cases: list[EditCase], edited: list[np.ndarray], rows: list[dict], path: str | Path, count: int = 8
) -> Path:
    """A PNG with one row per worst case: input | ground truth | edit | edit with its ghost pixels in magenta."""
    picked = worst_cases(rows, count)
    panel_rows = [
        [Image.fromarray(cases[i].source_image), Image.fromarray(cases[i].target_image), Image.fromarray(edited[i]),
         ghost_overlay(edited[i], cases[i])]
        for i in picked
    ]
    return save_image(make_panel(panel_rows), path)


def typical_cases(cases: list[EditCase], per_kind: int = 2) -> list[int]:
    """The first `per_kind` cases of each edit kind (colour, shape, both), in case order."""
    picked: list[int] = []
    for kind in ("color", "shape", "both"):
        picked += [i for i, c in enumerate(cases) if c.kind == kind][:per_kind]
    return picked


def compare_panel(
    cases: list[EditCase], before: list[np.ndarray], after: list[np.ndarray], rows_before: list[dict], path: str | Path,
    worst: int = 6,
) -> Path:
    """Two methods on the same cases, one row each: input | ground truth | first method | second method, ghost pixels in
    magenta. The rows: the first two cases of each edit kind (typical ones), then the first method's `worst` cases."""
    picked = typical_cases(cases) + [i for i in worst_cases(rows_before, worst + 6) if i not in typical_cases(cases)][:worst]
    panel_rows = [
        [Image.fromarray(cases[i].source_image), Image.fromarray(cases[i].target_image), ghost_overlay(before[i], cases[i]),
         ghost_overlay(after[i], cases[i])]
        for i in picked
    ]
    return save_image(make_panel(panel_rows), path)
