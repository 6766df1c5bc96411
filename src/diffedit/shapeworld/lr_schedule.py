"""The learning-rate schedule of both training stages: linear warmup, then constant or a cosine decay."""

from __future__ import annotations

import math

WARMUP_STEPS = 100  # linear learning-rate warmup of both stages


def lr_factor(step: int, progress: float, *, cosine: bool) -> float:
    """Linear warmup, then constant or cosine decay to 10 % over progress in [0, 1]."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    if not cosine:
        return warm
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
