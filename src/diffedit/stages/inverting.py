"""Inverters (DiffEdit step 2): walk the clean latents up the noise levels, keeping every level.

Protocol: `inverter(parts, latents, prompts, grid, guidance_scale, stops) -> (N + 1, B, C, h, w)` levels, level 0
the clean latents; row b walks up to level stops[b] (walks of several ratios share one batch) and keeps it above.
`ddim` is deterministic DDIM (the paper), unconditional with the empty prompt or with a caption.
"""

from __future__ import annotations

import torch

from ..components import Components, Prompt
from ..inversion import ddim_invert
from ..schedule import DDIMGrid
from .registry import register

__all__ = ["DDIMInverter"]


@register("inverter", "ddim")
class DDIMInverter:
    """Deterministic DDIM inversion (Song et al. 2021, eq. 12 run forwards), one prompt per image."""

    @torch.no_grad()
    def __call__(
        self, parts: Components, latents: torch.Tensor, prompts: list[Prompt], grid: DDIMGrid, guidance_scale: float = 1.0,
        stops: list[int] | None = None,
    ) -> torch.Tensor:
        cond = parts.encode_prompts(prompts)
        uncond = parts.encode_prompts([""] * latents.shape[0]) if guidance_scale != 1.0 else None
        with parts.bar(max(stops) if stops else grid.num_steps, "invert") as bar:
            return ddim_invert(
                parts.denoiser, latents, cond, grid, uncond=uncond, guidance_scale=guidance_scale, stops=stops,
                callback=lambda k, x: bar.update(),
            )
