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
    stops: list[int] | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Walk clean latents (B, C, h, w) up the grid with deterministic DDIM; returns every level.

    Level k is reached from level k-1 with the UNet evaluated at grid.timesteps[k] (DDIM eq. 12 run
    forwards). cond is (B, L, D): the empty prompt for the paper's unconditional encoding, or a caption.
    stops[b]: the level row b stops at (default N): walks of several ratios run as one batch, a row leaving it
    at its top level, which it then keeps in the levels above.
    Returns (N + 1, B, C, h, w): [x_0 (the input), x_1, ..., x_N].
    """
    n = grid.num_steps
    stops = [n] * latents.shape[0] if stops is None else list(stops)
    if len(stops) != latents.shape[0] or not all(1 <= s <= n for s in stops):
        raise ValueError(f"stops must give each of the {latents.shape[0]} rows a level in 1..{n}, got {stops}")
    end = torch.tensor(stops, device=latents.device)
    levels = [latents]
    x = latents
    for k in range(1, max(stops) + 1):
        on = (end >= k).nonzero().flatten()  # the rows still walking
        rows = slice(None) if len(on) == len(stops) else on
        c, u = cond[rows], None if uncond is None else uncond[rows]
        out = guided_unet_output(unet, x[rows], int(grid.timesteps[k]), c, u, guidance_scale)
        step = ddim_step(out, x[rows], float(grid.alphas[k - 1]), float(grid.alphas[k]), grid.prediction_type)
        if isinstance(rows, slice):
            x = step
        else:
            x = x.clone()
            x[rows] = step
        levels.append(x)
        if callback is not None:
            callback(k, x)
    levels += [x] * (n - max(stops))
    return torch.stack(levels)
