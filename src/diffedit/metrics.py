"""Generic image and mask metrics (numpy only): PSNR, mask IoU, disk dilation, nearest upsampling.

The ShapeEdit benchmark (/work/shared/SHAPEWORLD.md, "Metrics for one edit") is built on these in
diffedit.shapeworld.scoring.
"""

from __future__ import annotations

import math

import numpy as np


def _as_bool_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """A 2-D boolean mask; 0/1 numeric arrays are accepted, other values are rejected."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1)")
        arr = arr.astype(bool)
    return arr


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 255.0) -> float:
    """PSNR in dB of a against b (H, W[, C]) over the pixels selected by mask (H, W); inf if equal."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if mask is not None:
        mask = _as_bool_mask(mask)
        if mask.shape != a.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {a.shape[:2]}")
        if not mask.any():
            raise ValueError("mask selects no pixels")
        a, b = a[mask], b[mask]
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def upsample_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D mask to shape (pixel-center sampling; np.repeat for integer factors)."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {arr.shape}")
    h, w = arr.shape
    out_h, out_w = shape
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return arr[rows[:, None], cols[None, :]]


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|pred & gt| / |pred | gt|; a coarser pred is upsampled (nearest) to gt's shape; two empty masks give 1.0."""
    pred = _as_bool_mask(pred, "pred")
    gt = _as_bool_mask(gt, "gt")
    if pred.shape != gt.shape:
        if pred.shape[0] > gt.shape[0] or pred.shape[1] > gt.shape[1]:
            raise ValueError(f"pred {pred.shape} is finer than gt {gt.shape}; only coarser masks are upsampled")
        pred = upsample_nearest(pred, gt.shape)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def disk(radius: int) -> np.ndarray:
    """Boolean Euclidean disk structuring element: offsets (dy, dx) with dy^2 + dx^2 <= radius^2."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    return dy * dy + dx * dx <= radius * radius


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate a 2-D boolean mask by a Euclidean disk of radius px (pixels outside count as False)."""
    arr = _as_bool_mask(mask)
    if px < 0:
        raise ValueError(f"px must be >= 0, got {px}")
    if px == 0 or not arr.any():
        return arr.copy()
    h, w = arr.shape
    padded = np.pad(arr, px)  # False outside, as scipy.ndimage.binary_dilation's border_value=0
    out = np.zeros_like(arr)
    for dy, dx in np.argwhere(disk(px)):  # the disk is symmetric: OR of the mask shifted by every offset
        out |= padded[dy : dy + h, dx : dx + w]
    return out
