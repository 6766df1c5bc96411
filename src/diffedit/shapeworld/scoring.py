"""ShapeEdit metrics for one edit and their summary (/work/shared/SHAPEWORLD.md, "Metrics for one edit").

Notation: edited image E, input I (case.source_image), ground-truth target G (case.target_image),
ground-truth mask M (case.mask), predicted binary mask P.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from diffedit.metrics import dilate, mask_iou, psnr
from diffedit.shapeworld.world import BACKGROUNDS, CANVAS, EDIT_KINDS, EditCase

BACKGROUND_DILATION_PX = 2  # background PSNR is taken outside M dilated by this much
COLOR_DISTANCE = 60.0  # RGB distance within which a pixel counts as the target color
MIN_TARGET_FRACTION = 0.6  # share of the footprint that must show the target color
MIN_TARGET_IOU = 0.5  # IoU of the target-colored pixels (inside dilated M) with the footprint
PSNR_CAP = 100.0  # summaries clip PSNR here so that exact copies (inf dB) do not make means infinite
GHOST_OLD_DISTANCE = 60.0  # ghosts are looked for where the ground truth is at least this far from the old colour
GHOST_TRUTH_DISTANCE = 40.0  # ... and the edit is farther than this from the ground truth, and closer to the old colour
MAX_GHOST_PIXELS = 24  # ghost-free: at most this many ghost pixels
SIZE_REACH_PX = 8  # the drawn size counts target-coloured pixels within this distance of M
METRICS = ("mask_iou", "background_psnr", "target_psnr", "success", "ghost_free", "clean")


def ghost_pixels(edited: np.ndarray, case: EditCase) -> np.ndarray:
    """(H, W) bool: what survives of the old object where it should not (SHAPEWORLD.md, "ghost pixels").

    Inside M dilated by 1 px, where the ground truth G is at RGB distance >= 60 from the old colour c_old, the
    pixels of E farther than 40 from G and closer to c_old than to G: an old outline around a changed shape,
    an old-colour fringe around a recoloured object.
    """
    e = np.asarray(edited, dtype=np.float64)
    g = np.asarray(case.target_image, dtype=np.float64)
    old = np.asarray(case.before.rgb, dtype=np.float64)
    to_old = np.sqrt(((e - old) ** 2).sum(-1))
    to_truth = np.sqrt(((e - g) ** 2).sum(-1))
    truth_from_old = np.sqrt(((g - old) ** 2).sum(-1))
    region = dilate(case.mask, 1) & (truth_from_old >= GHOST_OLD_DISTANCE)
    return region & (to_truth > GHOST_TRUTH_DISTANCE) & (to_old < to_truth)


def drawn_size(edited: np.ndarray, case: EditCase) -> float:
    """The new object's drawn size: the pixels of E within RGB distance 60 of the target colour, inside M grown by
    SIZE_REACH_PX and outside the scene's other objects, over the footprint's pixels. 1 is the true size; above 1 the
    new object spills past its footprint (a shape drawn too large, a blob), below 1 it falls short of it."""
    near = np.sqrt(((np.asarray(edited, dtype=np.float64) - np.asarray(case.target_color, dtype=np.float64)) ** 2).sum(-1))
    reach = dilate(case.mask, SIZE_REACH_PX)
    for i, obj in enumerate(case.edited.objects):
        if i != case.index:
            reach &= ~obj.mask()
    return float((reach & (near <= COLOR_DISTANCE)).sum() / case.footprint.sum())


def score_edit(edited: np.ndarray, case: EditCase, predicted_mask: np.ndarray | None) -> dict:
    """Metrics of one edited image E for case (plus kind/background/num_objects for grouping)."""
    edited = np.asarray(edited)
    if edited.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"edited image must be ({CANVAS}, {CANVAS}, 3), got {edited.shape}")
    m = case.mask
    m_dilated = dilate(m, BACKGROUND_DILATION_PX)
    footprint = case.footprint

    diff = edited.astype(np.float64) - np.asarray(case.target_color, dtype=np.float64)
    near_target = np.sqrt((diff**2).sum(axis=-1)) <= COLOR_DISTANCE
    target_fraction = float(near_target[footprint].mean())
    target_iou = mask_iou(near_target & m_dilated, footprint)

    ghosts = int(ghost_pixels(edited, case).sum())
    success = bool(target_fraction >= MIN_TARGET_FRACTION and target_iou >= MIN_TARGET_IOU)
    return {
        "kind": case.kind,
        "background": case.scene.background,
        "num_objects": len(case.scene.objects),
        "mask_iou": None if predicted_mask is None else mask_iou(predicted_mask, m),
        "background_psnr": psnr(edited, case.source_image, mask=~m_dilated),
        "target_psnr": psnr(edited, case.target_image, mask=m),
        "target_fraction": target_fraction,
        "target_iou": target_iou,
        "success": success,
        "ghost_pixels": ghosts,
        "ghost_free": ghosts <= MAX_GHOST_PIXELS,
        "clean": success and ghosts <= MAX_GHOST_PIXELS,
        "drawn_size": drawn_size(edited, case),
    }


def _mean(values: Iterable[float | None], cap: float | None = None) -> float | None:
    """Mean of the non-None values (clipped at cap when given); None when there are none."""
    vals = [min(float(v), cap) if cap is not None else float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _group(rows: list[dict]) -> dict:
    """Mean metrics of a group of rows; success, ghost_free and clean are rates in [0, 1], PSNRs are clipped at PSNR_CAP,
    ghost_pixels is the mean count, drawn_size the mean ratio (rows of older reports without them give None)."""
    return {
        "n": len(rows),
        "mask_iou": _mean(r["mask_iou"] for r in rows),
        "background_psnr": _mean((r["background_psnr"] for r in rows), PSNR_CAP),
        "target_psnr": _mean((r["target_psnr"] for r in rows), PSNR_CAP),
        "success": _mean(float(r["success"]) for r in rows),
        "ghost_pixels": _mean(r.get("ghost_pixels") for r in rows),
        "ghost_free": _mean(float(r["ghost_free"]) if "ghost_free" in r else None for r in rows),
        "clean": _mean(float(r["clean"]) if "clean" in r else None for r in rows),
        "drawn_size": _mean(r.get("drawn_size") for r in rows),
    }


def _by(rows: list[dict], key: str, order: Iterable) -> dict:
    """Group summaries keyed by row[key], in the given order, skipping absent values."""
    return {value: _group(group) for value in order if (group := [r for r in rows if r[key] == value])}


def summarize(rows: list[dict]) -> dict:
    """Means of score_edit rows overall, by edit kind, by background and by number of objects."""
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to summarize")
    return {
        "overall": _group(rows),
        "by_kind": _by(rows, "kind", EDIT_KINDS),
        "by_background": _by(rows, "background", BACKGROUNDS),
        "by_num_objects": _by(rows, "num_objects", sorted({r["num_objects"] for r in rows})),
    }
