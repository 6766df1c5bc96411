"""DiffEdit step 2: DDIM inversion of the image latent up to the encoding ratio r (sec. 3.2, "encoding").

Later rooms beside it: null-text inversion, negative-prompt inversion, direct inversion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .schedule import DDIMGrid, ddim_step

__all__ = ["ddim_invert", "guided_unet_output"]


def guided_unet_output(
    unet, x: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float
) -> torch.Tensor:
    """UNet output at timestep t with classifier-free guidance (Ho & Salimans 2022); one batched call.

    x: (B, C, h, w); cond, uncond: (B, L, D). Without guidance (uncond None or scale 1) the batch is B,
    not 2B.
    """
    tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    if uncond is None or guidance_scale == 1.0:
        return unet(x, tt, encoder_hidden_states=cond).sample
    out = unet(torch.cat([x, x]), torch.cat([tt, tt]), encoder_hidden_states=torch.cat([uncond, cond])).sample
    out_uncond, out_cond = out.chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


@torch.no_grad()
def ddim_invert(
    unet,
    latents: torch.Tensor,
    cond: torch.Tensor,
    grid: DDIMGrid,
    *,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Walk clean latents (B, C, h, w) up the grid with deterministic DDIM; returns every level.

    Level k is reached from level k-1 with the UNet evaluated at grid.timesteps[k] (DDIM eq. 12 run
    forwards). cond is (B, L, D): the empty prompt for the paper's unconditional encoding, or a caption.
    Returns (N + 1, B, C, h, w): [x_0 (the input), x_1, ..., x_N].
    """
    levels = [latents]
    x = latents
    for k in range(1, grid.num_steps + 1):
        out = guided_unet_output(unet, x, int(grid.timesteps[k]), cond, uncond, guidance_scale)
        x = ddim_step(out, x, float(grid.alphas[k - 1]), float(grid.alphas[k]), grid.prediction_type)
        levels.append(x)
        if callback is not None:
            callback(k, x)
    return torch.stack(levels)
