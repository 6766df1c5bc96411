"""Choosing among candidate edits with the model itself: which one does the target prompt explain best?

DiffEdit's decoding depends on the encoding ratio r and on how the input was encoded (unconditionally
or with its caption), and no single choice suits every image: from a low r the old object's outline
survives, from a high r the new one can drift. The editor can decode several candidates and keep, per
edit, the one the diffusion model itself judges most like the target and least like the source, in the
manner of a diffusion classifier (Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier",
ICCV 2023): noise the candidate's latent at a few levels, predict the noise with the source prompt and
with the target prompt, and compare the errors inside the edit region. The lower the target's error
against the source's, the better the target prompt describes the candidate. Every candidate of an edit
sees the same noises, so their scores differ by what they show, not by the draw.
"""

from __future__ import annotations

import torch

from .schedule import model_output_to_eps_x0

__all__ = ["denoising_errors", "rerank_scores"]


@torch.no_grad()
def denoising_errors(
    unet,
    latents: torch.Tensor,
    embeddings: torch.Tensor,
    region: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    noises: torch.Tensor,
    *,
    prediction_type: str = "epsilon",
    max_batch: int = 256,
) -> torch.Tensor:
    """Mean squared noise-prediction error of each latent under each prompt, inside its region.

    latents: (K, C, h, w) clean latents of K candidates. embeddings: (P, L, D) prompts. region: (K, h, w)
    bool cells over which errors are averaged (an empty region counts every cell). noises: (T, S, C, h, w),
    S noises per timestep, shared by all candidates. Returns (K, P): the error averaged over timesteps,
    noises, channels and region cells.
    """
    k, p = latents.shape[0], embeddings.shape[0]
    t_count, s = noises.shape[:2]
    if noises.shape[0] != len(timesteps):
        raise ValueError(f"got noises for {noises.shape[0]} timesteps, {len(timesteps)} timesteps")
    weights = region.reshape(k, 1, *latents.shape[-2:]).to(torch.float32)
    weights = torch.where(weights.sum((1, 2, 3), keepdim=True) > 0, weights, torch.ones_like(weights))
    weights = weights / weights.sum((1, 2, 3), keepdim=True)  # (K, 1, h, w), sums to 1 per candidate
    # Every timestep's rows (timestep, noise, prompt, candidate) in one batch, chunked by max_batch
    alphas = [float(alphas_cumprod[t]) for t in timesteps]
    eps_true = noises.to(latents)[:, :, None, None]  # (T, S, 1, 1, C, h, w)
    signal = torch.tensor([a**0.5 for a in alphas], dtype=torch.float64).to(latents).reshape(-1, 1, 1, 1, 1, 1, 1)
    noise = torch.tensor([(1 - a) ** 0.5 for a in alphas], dtype=torch.float64).to(latents).reshape(-1, 1, 1, 1, 1, 1, 1)
    noisy = (signal * latents + noise * eps_true).expand(t_count, s, p, k, *latents.shape[1:])
    emb = embeddings[None, None, :, None].expand(t_count, s, p, k, *embeddings.shape[1:])
    x, emb = noisy.reshape(-1, *latents.shape[1:]), emb.reshape(-1, *embeddings.shape[1:])
    tt = torch.tensor(timesteps, device=x.device, dtype=torch.long).repeat_interleave(s * p * k)
    out = torch.cat([
        unet(x[i : i + max_batch], tt[i : i + max_batch], encoder_hidden_states=emb[i : i + max_batch]).sample
        for i in range(0, len(x), max_batch)
    ]).reshape(t_count, -1, *latents.shape[1:])
    errors = torch.zeros(k, p, dtype=torch.float32, device=latents.device)
    for ti, alpha in enumerate(alphas):
        rows = x.reshape(t_count, -1, *latents.shape[1:])[ti]
        eps, _ = model_output_to_eps_x0(out[ti].float(), rows.float(), alpha, prediction_type)
        se = (eps.reshape(s, p, k, *latents.shape[1:]) - eps_true[ti].float()).pow(2).mean(3, keepdim=True)  # (S, P, K, 1, h, w)
        errors += (se * weights.to(se)).sum((3, 4, 5)).sum(0).T  # (K, P)
    return errors / (t_count * s)


def rerank_scores(
    errors: torch.Tensor, source: int = 0, target: int = 1, unconditional: int | None = None, weight: float = 0.0
) -> torch.Tensor:
    """(K, P) errors -> (K,) scores, higher is more target-like: the source prompt's error minus the target's,
    plus `weight` times the empty prompt's (column `unconditional`) minus the target's.

    The second term asks that the target prompt explain the candidate better than no prompt at all, not only
    better than the source: a blob that is neither the old object nor the new one scores low on it.
    """
    score = errors[:, source] - errors[:, target]
    if unconditional is not None and weight:
        score = score + weight * (errors[:, unconditional] - errors[:, target])
    return score
