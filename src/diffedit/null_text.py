"""Null-text inversion (Mokady et al., CVPR 2023, arXiv 2211.09794): per-step unconditional embeddings that make
guided DDIM decoding with the source prompt retrace a DDIM inversion.

DDIM inversion with the source prompt at guidance 1 gives a pivot trajectory z_0 .. z_N; decoding it with guidance
w > 1 drifts away from it. From the top down, each step's unconditional ("null-text") embedding is optimised with
Adam so that the guided step from the current latent lands on the pivot's next level (Alg. 1), stopping early once
the mean squared distance is below a tolerance; the next step starts from where the optimised step landed and from
the embedding just found. A decoding that uses these embeddings as its unconditional branch, with another prompt as
its condition, edits while the part the prompt does not change stays close to the input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .inversion import check_stops
from .schedule import DDIMGrid, ddim_step

__all__ = ["null_text_embeddings"]


def _guided(out_uncond: torch.Tensor, out_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022), as inversion.guided_unet_output combines the two outputs."""
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def _fit_uncond(
    unet, x: torch.Tensor, t: int, out_cond: torch.Tensor, uncond: torch.Tensor, target: torch.Tensor,
    step: Callable[[torch.Tensor], torch.Tensor], guidance_scale: float, inner_steps: int, tolerance: float, lr: float,
) -> torch.Tensor:
    """Adam on the unconditional embeddings (R, L, D) of rows x (R, C, h, w) until the guided step of each row lands
    within `tolerance` (mean squared) of its target, or for `inner_steps` steps; a row that got there keeps the
    embedding that did (the rows are independent: each one's loss depends on its own embedding alone)."""
    u = uncond.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=lr)
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    kept = uncond.detach().clone()
    tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
    for _ in range(inner_steps):
        with torch.enable_grad():
            landed = step(_guided(unet(x, tt, encoder_hidden_states=u).sample, out_cond, guidance_scale))
            loss = (landed - target).float().pow(2).flatten(1).mean(1)  # (R,)
        reached = (loss.detach() < tolerance) & ~done
        kept[reached] = u.detach()[reached]
        done |= reached
        if bool(done.all()):
            break
        optimizer.zero_grad()
        with torch.enable_grad():
            loss[~done].sum().backward()
        optimizer.step()
        with torch.no_grad():
            u[done] = kept[done]  # Adam's momentum would move them on
    out = u.detach().clone()
    out[done] = kept[done]
    return out


def null_text_embeddings(
    unet,
    pivot: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    grid: DDIMGrid,
    *,
    guidance_scale: float,
    stops: list[int] | None = None,
    inner_steps: int = 10,
    tolerance: float = 1e-5,
    lr: float = 1e-2,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Null-text inversion's per-step unconditional embeddings (Mokady et al. 2023, Alg. 1).

    pivot: (N + 1, B, C, h, w), a DDIM inversion with the source prompt at guidance 1; cond: (B, L, D) the source
    prompt; uncond: (B, L, D) the starting embedding (the decoding's negative prompt). stops[b]: the level row b
    starts from (default N). Returns (N, B, L, D), row k - 1 for the step from level k (zeros above a row's stop).
    """
    if guidance_scale == 1.0:
        raise ValueError("null-text inversion optimises the unconditional branch of guidance: it needs guidance_scale != 1")
    n, b = grid.num_steps, pivot.shape[1]
    stops = check_stops(stops, b, n)
    end = torch.tensor(stops, device=pivot.device)
    x = pivot[end, torch.arange(b, device=pivot.device)].clone()  # (B, C, h, w): each row's top level
    u = uncond.detach().clone()
    out = torch.zeros(n, *uncond.shape, device=uncond.device, dtype=uncond.dtype)
    for k in range(max(stops), 0, -1):
        rows = (end >= k).nonzero().flatten()
        t, alpha, alpha_next = int(grid.timesteps[k]), float(grid.alphas[k]), float(grid.alphas[k - 1])
        xk = x[rows]

        def step(output: torch.Tensor, xk=xk, alpha=alpha, alpha_next=alpha_next) -> torch.Tensor:
            return ddim_step(output, xk, alpha, alpha_next, grid.prediction_type)

        tt = torch.full((len(rows),), t, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out_cond = unet(xk, tt, encoder_hidden_states=cond[rows]).sample
        u[rows] = _fit_uncond(unet, xk, t, out_cond, u[rows], pivot[k - 1, rows], step, guidance_scale,
                              inner_steps, tolerance, lr)
        out[k - 1, rows] = u[rows]
        with torch.no_grad():  # the next step starts where this one lands, as the decoding will
            x[rows] = step(_guided(unet(xk, tt, encoder_hidden_states=u[rows]).sample, out_cond, guidance_scale))
        if callback is not None:
            callback(k)
    return out
