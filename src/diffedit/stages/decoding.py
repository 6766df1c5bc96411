"""Decoders (DiffEdit step 3): walk each job from its top inverted level down to a clean latent.

Protocol: `decoder(parts, levels, mask, cond, uncond, grid, *, guidance_scale, job_image, starts, callback[, steps])
-> (J, C, h, w)`: row j of the batch decodes from level starts[j] (the editor stacks every candidate's jobs into one
batch), and callback(level, latents) follows each step, with the level just reached; it may return replacement
latents. `steps`, given only with an inversion that has per-step state (null-text, direct, ddpm: stages/inverting.py),
holds it: name -> (N, J, ...), "uncond", "offset" or "noise" (inversion.Inversion).
`masked_ddim` is the paper's decoding: DDIM with the target prompt, the background replaced at every step by
the inverted latent of the same level (sampling.masked_denoise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..components import Components
from ..sampling import masked_denoise
from ..schedule import DDIMGrid
from .noise import NoiseStreams
from .registry import register

__all__ = ["MaskedDDIMDecoder", "noised_start"]


@register("decoder", "masked_ddim")
class MaskedDDIMDecoder:
    """DDIM decoding inside the latent mask, same-level background blending (Couairon et al. 2023, sec. 3.2).
    A subclass changes what the UNet calls go through (`denoiser`): stages/inpainting.py."""

    phase = "denoise"  # the progress bar's name

    def denoiser(self, parts: Components, mask: torch.Tensor, starts: list[int] | None):
        """What the decoding's UNet calls go through: the model's UNet (or its accelerated wrapper)."""
        return parts.denoiser

    @torch.no_grad()
    def __call__(
        self,
        parts: Components,
        levels: torch.Tensor,
        mask: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        grid: DDIMGrid,
        *,
        guidance_scale: float,
        job_image: list[int] | None,
        starts: list[int] | None = None,
        callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
        steps: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        steps = steps or {}
        unknown = sorted(set(steps) - {"uncond", "offset", "noise"})
        if unknown:
            raise ValueError(f"the {self.name} decoder knows no per-step state {unknown}")
        denoiser = self.denoiser(parts, mask, starts)
        with parts.bar(max(starts) if starts else grid.num_steps, self.phase) as bar:

            def step_end(k: int, x: torch.Tensor):
                bar.update()
                return None if callback is None else callback(k, x)

            return masked_denoise(
                denoiser, levels, mask, cond, grid, uncond=uncond, guidance_scale=guidance_scale,
                job_image=job_image, starts=starts, callback=step_end, step_uncond=steps.get("uncond"),
                step_offset=steps.get("offset"), step_noise=steps.get("noise"),
            )


def noised_start(
    levels: torch.Tensor, latent_mask: torch.Tensor, share: float, job_image: list[int], noise: NoiseStreams
) -> torch.Tensor:
    """Per-job levels (N + 1, J, C, h, w) whose top level has `share` of its variance replaced by fresh noise
    inside the latent mask: the decoder may then redraw a shape instead of following the old outline. Job j's
    noise comes from its image's "fresh" stream, drawn on the CPU."""
    top = levels[-1]  # (J, C, h, w)
    eps = torch.stack([noise.randn("fresh", b, top.shape[1:]) for b in job_image])
    m = latent_mask.reshape(top.shape[0], 1, *top.shape[-2:]).to(top)
    mixed = (1 - share) ** 0.5 * top + share**0.5 * eps.to(top)
    out = levels.clone()
    out[-1] = m * mixed + (1 - m) * top
    return out
