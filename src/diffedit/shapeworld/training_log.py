"""What a training run shows of itself as it goes: log lines, a progress bar, and sample grids."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffedit.shapeworld.evaluate import eval_captions
from diffedit.shapeworld.generate import generate


class Logger:
    """Concise log lines (for files) every `every` seconds, silent when quiet."""

    def __init__(self, quiet: bool, every: float = 60.0):
        self.quiet, self.every, self.last = quiet, every, 0.0

    def __call__(self, msg: str, *, force: bool = True) -> None:
        if self.quiet or (not force and time.time() - self.last < self.every):
            return
        self.last = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def progress_bar(total: int | None, desc: str, quiet: bool):
    """A tqdm bar on a terminal, disabled when quiet or when stderr goes to a file."""
    return tqdm(total=total, desc=desc, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)


def sample_grid(components: dict, path: Path, *, n: int, steps: int, guidance: float, seed: int) -> None:
    """A grid PNG of generated samples with their captions in a txt beside it."""
    from PIL import Image

    captions = eval_captions(n, seed)
    generator = torch.Generator().manual_seed(seed)
    images = generate(components, captions, num_inference_steps=steps, guidance_scale=guidance, generator=generator)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images.shape[1:3]
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    path.with_suffix(".txt").write_text("".join(f"{i // cols},{i % cols}: {c}\n" for i, c in enumerate(captions)))
