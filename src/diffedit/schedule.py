"""Deterministic DDIM in both directions on a diffusers scheduler's noise schedule.

DDIM (Song et al. 2021, arXiv 2010.02502, eq. 12 with sigma_t = 0) moves a latent between two noise
levels along the model's own estimate of the clean latent and of the noise; the same formula runs
forwards (inversion, DiffEdit step 2) and backwards (sampling, DiffEdit step 3), so this module holds it
once for both.

Notation (ties variables to the paper's eq. 12):

| here            | paper              | meaning                                                        |
|-----------------|--------------------|----------------------------------------------------------------|
| `alpha`         | alpha_t            | cumulative signal level alpha_bar of the level we are at       |
| `alpha_next`    | alpha_{t-1} (or t+1) | alpha_bar of the level we move to (lower: sampling, higher: inversion) |
| `eps`           | eps_theta(x_t, t)  | predicted noise                                                |
| `x0`            | f_theta(x_t)       | predicted clean latent, (x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t) |

A `DDIMGrid` numbers the levels an edit visits: level 0 is the clean latent, level k (1..N) the noisy
latent at UNet timestep `timesteps[k]`. Inversion walks 0 -> N, sampling walks N -> 0, and the step
between levels k-1 and k always evaluates the UNet at `timesteps[k]`, as diffusers'
DDIMScheduler/DDIMInverseScheduler pair does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, SchedulerMixin

__all__ = [
    "DDIMGrid", "ddim_grid", "steps_at", "ddim_scheduler", "ddim_step", "ddpm_sigma", "ddpm_step", "model_output_to_eps_x0",
    "sd_scheduler",
]


def sd_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion's noise schedule (scaled-linear betas 0.00085 to 0.012 over 1000 steps),
    for models built here: the random-weight benchmark models and the embedded ShapeWorld model."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )


def ddim_scheduler(scheduler: SchedulerMixin) -> DDIMScheduler:
    """Return a DDIMScheduler with the same noise schedule as `scheduler` (any diffusers scheduler)."""
    if isinstance(scheduler, DDIMScheduler):
        return scheduler
    return DDIMScheduler.from_config(scheduler.config)


@dataclass(frozen=True)
class DDIMGrid:
    """Noise levels of one edit: level 0 is clean, level k in 1..N sits at UNet timestep `timesteps[k]`."""

    timesteps: torch.Tensor  # (N + 1,) int64, ascending; timesteps[0] = -1 marks the clean level
    alphas: torch.Tensor  # (N + 1,) float64 alpha_bar per level; alphas[0] is the scheduler's final alpha
    prediction_type: str  # "epsilon", "v_prediction" or "sample", from the scheduler config

    @property
    def num_steps(self) -> int:
        """Number of DDIM steps N between the clean level and the top level."""
        return len(self.timesteps) - 1


def steps_at(num_inference_steps: int, strength: float) -> int:
    """DDIM steps N from the clean level up to encoding ratio `strength`: int(steps * strength), at most steps."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def ddim_grid(scheduler: SchedulerMixin, num_inference_steps: int, strength: float) -> DDIMGrid:
    """Levels 0..N of a DDIM schedule of `num_inference_steps` cut at `strength` (N = int(steps * strength)).

    This matches diffusers' `get_timesteps`: the top level of strength r is the timestep an img2img or
    DiffEdit pipeline of the same steps and strength starts from.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength (encoding ratio) must be in (0, 1], got {strength}")
    sched = DDIMScheduler.from_config(ddim_scheduler(scheduler).config)
    sched.set_timesteps(num_inference_steps, device="cpu")
    ascending = sched.timesteps.flip(0).to(torch.int64)  # (S,)
    n = steps_at(num_inference_steps, strength)
    if n < 1:
        raise ValueError(
            f"strength {strength} with {num_inference_steps} steps gives no DDIM step; raise either"
        )
    alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
    final_alpha = torch.as_tensor(sched.final_alpha_cumprod, dtype=torch.float64).reshape(1)
    timesteps = torch.cat([torch.tensor([-1]), ascending[:n]])
    alphas = torch.cat([final_alpha, alphas_cumprod[ascending[:n]]])
    return DDIMGrid(timesteps=timesteps, alphas=alphas, prediction_type=sched.config.prediction_type)


def model_output_to_eps_x0(
    output: torch.Tensor, x: torch.Tensor, alpha: float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a UNet output at signal level `alpha` into (eps, x0) for any diffusers prediction type."""
    a, s = alpha**0.5, (1.0 - alpha) ** 0.5
    if prediction_type == "epsilon":
        return output, (x - s * output) / a
    if prediction_type == "v_prediction":  # Salimans & Ho 2022: v = a * eps - s * x0
        return a * output + s * x, a * x - s * output
    if prediction_type == "sample":
        return (x - a * output) / s, output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def ddim_step(
    output: torch.Tensor, x: torch.Tensor, alpha: float, alpha_next: float, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """One deterministic DDIM move of x from level alpha to level alpha_next (eq. 12, sigma = 0)."""
    eps, x0 = model_output_to_eps_x0(output, x, alpha, prediction_type)
    return alpha_next**0.5 * x0 + (1.0 - alpha_next) ** 0.5 * eps


def ddpm_sigma(alpha: float, alpha_next: float) -> float:
    """sigma_t of DDIM eq. 16 with eta = 1: the standard deviation of DDPM's posterior from level alpha to the less
    noisy alpha_next (0 when alpha_next is 1)."""
    return ((1.0 - alpha_next) / (1.0 - alpha) * (1.0 - alpha / alpha_next)) ** 0.5


def ddpm_step(
    output: torch.Tensor, x: torch.Tensor, alpha: float, alpha_next: float, noise: torch.Tensor | None,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """One stochastic DDPM move of x from level alpha to alpha_next: DDIM eq. 12 with sigma_t of eq. 16 (eta = 1), the
    noise z given (None: the posterior mean)."""
    eps, x0 = model_output_to_eps_x0(output, x, alpha, prediction_type)
    sigma = ddpm_sigma(alpha, alpha_next)
    mean = alpha_next**0.5 * x0 + max(1.0 - alpha_next - sigma**2, 0.0) ** 0.5 * eps
    return mean if noise is None else mean + sigma * noise
