"""Panels of ShapeEdit cases, so that a reader sees what the figures mean: the worst ghosts of a method, or a
method before and after a change on the same cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffedit.images import make_panel, save_image
from diffedit.shapeworld.scoring import ghost_pixels
from diffedit.shapeworld.world import EditCase

__all__ = ["ghost_overlay", "worst_ghost_panel", "worst_cases"]

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
