"""What an edit hands back as it goes and at the end: diffusers-style step callbacks, and outputs in the asked type."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

__all__ = ["step_callback", "as_output"]


def step_callback(editor, callback_on_step_end, candidates: list, starts: list[int], jobs: int,
                   grid) -> Callable | None:
    """The decoder's callback(level, latents of all rows) as diffusers' callback_on_step_end, once per candidate
    decoding at that level: step counted from the candidate's own start, the UNet timestep just evaluated, and the
    candidate's rows; latents it returns replace those rows."""
    if callback_on_step_end is None:
        return None

    def call(level: int, latents: torch.Tensor):
        out = latents
        for i, (c, start) in enumerate(zip(candidates, starts)):
            if start <= level:
                continue
            rows = slice(i * jobs, (i + 1) * jobs)
            got = callback_on_step_end(editor, start - 1 - level, int(grid.timesteps[level + 1]),
                                       {"latents": out[rows], "candidate": c.label})
            replaced = got.get("latents") if isinstance(got, dict) else None
            if replaced is not None:
                out = out.clone() if out is latents else out
                out[rows] = replaced
        return None if out is latents else out

    return call


def as_output(images_u8: torch.Tensor, latents: torch.Tensor, output_type: str):
    """uint8 images (J, 3, H, W) as PIL images, a (J, H, W, 3) float array, a (J, 3, H, W) float tensor in [0, 1],
    or the chosen decodings' latents (J, C, h, w) for "latent"."""
    if output_type == "latent":
        return latents
    if output_type == "pt":
        return images_u8.float() / 255.0
    if output_type == "np":
        return images_u8.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    return [Image.fromarray(a) for a in images_u8.permute(0, 2, 3, 1).numpy()]
