"""Wall time of a block, added to a dict of phases; CUDA work is synchronised on both ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["timed"]


@contextmanager
def timed(timings: dict[str, float], name: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Add the wall time of the block to timings[name] (summed over repeated blocks of one name)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
