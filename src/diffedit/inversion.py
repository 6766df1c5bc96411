"""DiffEdit step 2: DDIM inversion of the image latent up to the encoding ratio r (sec. 3.2, "encoding"), and the
inversions whose decoding needs more than the levels: direct inversion's per-step offsets and edit-friendly DDPM
inversion's per-step noise maps (null-text inversion's per-step embeddings: null_text.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .schedule import DDIMGrid, ddim_step, ddpm_sigma, ddpm_step

__all__ = ["Inversion", "ddim_invert", "direct_offsets", "ddpm_invert", "guided_unet_output", "check_stops"]


@dataclass
class Inversion:
    """An inversion: every level, and what its decoding needs at each step to come back.

    steps: per-step tensors (N, B, ...), row k - 1 for the step between levels k and k - 1 (the UNet at
    timesteps[k]): "uncond" (N, B, L, D) the unconditional embeddings (null-text), "offset" (N, B, C, h, w) added
    after the step (direct), "noise" (N, B, C, h, w) the z of a DDPM step (ddpm). Empty for DDIM. A row that stops
    below level N holds zeros above its stop (never read).
    """

    levels: torch.Tensor  # (N + 1, B, C, h, w), level 0 the clean latents
    steps: dict[str, torch.Tensor] = field(default_factory=dict)


def check_stops(stops: list[int] | None, rows: int, n: int) -> list[int]:
    """stops[b]: the level row b walks to (default N), each in 1..N."""
    stops = [n] * rows if stops is None else list(stops)
    if len(stops) != rows or not all(1 <= s <= n for s in stops):
        raise ValueError(f"stops must give each of the {rows} rows a level in 1..{n}, got {stops}")
    return stops


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
    stops = check_stops(stops, latents.shape[0], n)
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


def _rows(stops: list[int], k: int, device) -> torch.Tensor:
    """The rows whose walk reaches level k."""
    return torch.tensor([b for b, s in enumerate(stops) if s >= k], device=device, dtype=torch.long)


@torch.no_grad()
def direct_offsets(
    unet, levels: torch.Tensor, cond: torch.Tensor, grid: DDIMGrid, *, uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0, stops: list[int] | None = None,
) -> torch.Tensor:
    """Direct inversion's offsets (Ju et al. 2023, PnP Inversion, Alg. 1): per step, what the guided DDIM step from
    inverted level k misses of level k - 1, z_{k-1} - DDIM(z_k); added back after each step, they keep a decoding with
    these prompts exactly on the inverted path.

    levels: (N + 1, B, C, h, w) from ddim_invert; cond, uncond: (B, L, D), the prompt and negative prompt of the
    decoding's source branch. Returns (N, B, C, h, w), row k - 1 for the step from level k.
    """
    stops = check_stops(stops, levels.shape[1], grid.num_steps)
    out = torch.zeros_like(levels[1:])
    for k in range(1, max(stops) + 1):
        rows = _rows(stops, k, levels.device)
        x = levels[k, rows]
        o = guided_unet_output(unet, x, int(grid.timesteps[k]), cond[rows], None if uncond is None else uncond[rows],
                               guidance_scale)
        out[k - 1, rows] = levels[k - 1, rows] - ddim_step(o, x, float(grid.alphas[k]), float(grid.alphas[k - 1]),
                                                           grid.prediction_type)
    return out


@torch.no_grad()
def ddpm_invert(
    unet, latents: torch.Tensor, cond: torch.Tensor, grid: DDIMGrid, noises: torch.Tensor, *,
    uncond: torch.Tensor | None = None, guidance_scale: float = 1.0, stops: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024, eqs. 6 and 5): every level drawn on its own
    from the clean latents, x_k = sqrt(alpha_k) x_0 + sqrt(1 - alpha_k) eps_k, then the noise maps
    z_k = (x_{k-1} - mu(x_k)) / sigma_k with which the DDPM step from x_k (schedule.ddpm_step, with these prompts
    and guidance) lands exactly on x_{k-1}.

    latents: (B, C, h, w); noises: (N, B, C, h, w), eps_1..eps_N; cond, uncond: (B, L, D), the decoding's source
    prompt and negative prompt. Returns the levels (N + 1, B, C, h, w) (a row keeps its top level above its stop)
    and z (N, B, C, h, w) (0 where sigma_k is 0).
    """
    n = grid.num_steps
    stops = check_stops(stops, latents.shape[0], n)
    a = grid.alphas.tolist()
    levels = torch.stack([latents] + [a[k] ** 0.5 * latents + (1 - a[k]) ** 0.5 * noises[k - 1] for k in range(1, n + 1)])
    for b, s in enumerate(stops):
        levels[s + 1 :, b] = levels[s, b]
    z = torch.zeros_like(levels[1:])
    for k in range(1, max(stops) + 1):
        rows, sigma = _rows(stops, k, latents.device), ddpm_sigma(a[k], a[k - 1])
        x = levels[k, rows]
        o = guided_unet_output(unet, x, int(grid.timesteps[k]), cond[rows], None if uncond is None else uncond[rows],
                               guidance_scale)
        if sigma > 0:
            z[k - 1, rows] = (levels[k - 1, rows] - ddpm_step(o, x, a[k], a[k - 1], None, grid.prediction_type)) / sigma
    return levels, z
