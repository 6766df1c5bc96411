"""DiffEdit step 3: masked DDIM decoding, and the final pixel-space composite.

At every step the latent outside the mask is replaced by the inverted latent of the SAME noise level
(Couairon et al. 2023, sec. 3.2, "decoding with mask guidance"): after the step that lands on level k-1,
the background comes from inversion level k-1, and the last step lands on level 0, the image's own
latent. (diffusers' StableDiffusionDiffEditPipeline blends in level k, one step noisier, and so ends on
a noisy background.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .inversion import guided_unet_output
from .masks import dilate
from .schedule import DDIMGrid, ddim_step, ddpm_step

__all__ = ["masked_denoise", "feathered_alpha", "composite"]


@torch.no_grad()
def masked_denoise(
    unet,
    inverted: torch.Tensor,
    mask: torch.Tensor,
    cond: torch.Tensor,
    grid: DDIMGrid,
    *,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 7.5,
    job_image: list[int] | None = None,
    starts: list[int] | None = None,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
    step_uncond: torch.Tensor | None = None,
    step_offset: torch.Tensor | None = None,
    step_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode from the top inverted level to level 0, blending the background at every level.

    inverted: (N + 1, B, C, h, w) levels from `ddim_invert`. mask: (J, h, w) or (J, 1, h, w), 1 = edit.
    cond, uncond: (J, L, D), the target prompt and the negative prompt of each job (uncond None: no
    guidance). job_image[j] says which image job j edits (default: job j edits image j). starts[j]: the level
    job j starts from (default N, the top): decodings of several encoding ratios share one walk, a job joining
    the batch once the walk reaches its level. All jobs at or below the current level run as one batch (2 rows
    each with guidance). Returns (J, C, h, w) latents at level 0.

    An inversion's per-step state (inversion.Inversion.steps; (N, B, ...) rows like `inverted`'s, row k - 1 for the
    step from level k): step_uncond (N, B, L, D) replaces uncond at each step (null-text inversion), step_noise
    (N, B, C, h, w) makes each step DDPM's with that z (edit-friendly DDPM inversion), step_offset (N, B, C, h, w)
    is added after each step (direct inversion).
    """
    n, b = grid.num_steps, inverted.shape[1]
    if inverted.shape[0] != n + 1:
        raise ValueError(f"inverted holds {inverted.shape[0]} levels, the grid needs {n + 1}")
    job_image = list(range(b)) if job_image is None else list(job_image)
    starts = [n] * len(job_image) if starts is None else list(starts)
    if len(starts) != len(job_image) or not all(1 <= s <= n for s in starts):
        raise ValueError(f"starts must give each of the {len(job_image)} jobs a level in 1..{n}, got {starts}")
    index = torch.tensor(job_image, device=inverted.device)
    m = mask.reshape(len(job_image), 1, *inverted.shape[-2:]).to(inverted.dtype)  # (J, 1, h, w)
    begin = torch.tensor(starts, device=inverted.device)
    x = inverted[n][index] if min(starts) == n else inverted[begin, index]  # (J, C, h, w): each job's top level
    for k in range(max(starts), 0, -1):
        on = (begin >= k).nonzero().flatten()  # the jobs decoding at this level
        rows = slice(None) if len(on) == len(job_image) else on  # a slice keeps the usual path copy-free
        c, u = cond[rows], None if uncond is None else uncond[rows]
        if step_uncond is not None:
            u = step_uncond[k - 1][index[rows]]
        out = guided_unet_output(unet, x[rows], int(grid.timesteps[k]), c, u, guidance_scale)
        alpha, alpha_next = float(grid.alphas[k]), float(grid.alphas[k - 1])
        if step_noise is None:
            step = ddim_step(out, x[rows], alpha, alpha_next, grid.prediction_type)
        else:
            step = ddpm_step(out, x[rows], alpha, alpha_next, step_noise[k - 1][index[rows]], grid.prediction_type)
        if step_offset is not None:
            step = step + step_offset[k - 1][index[rows]]
        landed = m[rows] * step + (1 - m[rows]) * inverted[k - 1][index[rows]]  # same level k-1 for x and background
        if isinstance(rows, slice):
            x = landed
        else:  # a new tensor every step, as a callback may keep the last one
            x = x.clone()
            x[rows] = landed
        if callback is not None:  # it may return replacement latents (diffusers' callback_on_step_end)
            replaced = callback(k - 1, x)
            if replaced is not None:
                x = replaced
    return x


def feathered_alpha(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Opacity of the edit for (J, H, W) binary pixel masks: 1 on the mask, falling to 0 over `feather` px outside it.

    The ramp lies outside the mask, so no pixel of the mask keeps part of the old image (an old-colour fringe);
    the pixels with opacity above 0 are the mask grown by `feather` px, and every pixel beyond stays exact.
    """
    m = mask.float()
    if feather <= 0:
        return m
    return torch.stack([dilate(m, r) for r in range(feather + 1)]).mean(0)


def composite(original: torch.Tensor, edited: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Blend uint8 images (J, 3, H, W) with opacity (J, H, W); pixels of opacity 0 are the original's, bit-exact."""
    a = alpha.unsqueeze(1).to(torch.float32)
    blended = (a * edited.float() + (1 - a) * original.float()).round().clamp(0, 255).to(torch.uint8)
    return torch.where(a > 0, blended, original)
