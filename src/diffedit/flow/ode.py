"""Flow-matching edits as tensor functions over velocity fields `v(x, sigma) -> (N, C, h, w)`.

The flow x_sigma = (1 - sigma) x_0 + sigma noise runs from the image (sigma 0) to noise (sigma 1); a model predicts
its velocity v = noise - x_0. Three uses, each the analogue of a DiffEdit step (docs/flow.md):

* the mask: |v_target - v_source| at one noise level, averaged over noises and channels (DiffEdit's noise difference);
* FlowEdit (Kulikov et al. 2024): an ODE from the source image driven by the difference of the target and source
  velocities at freshly noised points, no inversion; our mask keeps the source outside it at every step;
* inverted flow: Euler inversion of the source ODE up to sigma = r, every level kept, then Euler decoding with the
  target prompt, the background taken from the inversion's same level after every step (DiffEdit's blending).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["noised", "velocity_difference_maps", "flowedit", "invert_flow", "masked_flow_decode", "start_index"]

Field = Callable[[torch.Tensor, float], torch.Tensor]


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The flow's point at noise level sigma: (1 - sigma) x0 + sigma noise."""
    return (1.0 - sigma) * x0 + sigma * noise


def start_index(sigmas: torch.Tensor, strength: float) -> int:
    """Index into the descending sigmas (N + 1,) of the first step of an edit of strength r: int(N r) steps remain."""
    n = sigmas.shape[0] - 1
    steps = int(n * strength)
    if steps < 1:
        raise ValueError(f"strength {strength} x {n} steps leaves no step")
    return n - steps


@torch.no_grad()
def velocity_difference_maps(
    v_source: Field, v_target: Field, latents: torch.Tensor, noise: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Mean over noises and channels of |v_target - v_source| at level sigma, one (h, w) map per job.

    latents: (J, C, h, w), each job's image latent; noise: (J, n, C, h, w). The fields take the J * n noised latents
    job-major (each job's prompt repeated n times). No guidance: it scales the difference by a constant that the
    map's rescaling removes. Returns (J, h, w) float32; zero where the two prompts agree."""
    j, n = noise.shape[:2]
    x = noised(latents.unsqueeze(1), noise, sigma).flatten(0, 1)  # (J * n, C, h, w)
    diff = (v_target(x, sigma).float() - v_source(x, sigma).float()).abs()
    return diff.reshape(j, n, *diff.shape[1:]).mean(dim=(1, 2))


@torch.no_grad()
def flowedit(
    v_source: Field, v_target: Field, x_src: torch.Tensor, sigmas: torch.Tensor, start: int,
    noise: Callable[[int], torch.Tensor], mask: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """FlowEdit from sigmas[start] down to 0: Z starts at x_src (J, C, h, w); at each level t with noise n_t,
    x_src_t = (1 - t) x_src + t n_t, x_tar_t = Z + x_src_t - x_src, Z += (t_next - t) (v_target(x_tar_t) - v_source(x_src_t)).

    noise(i): the (J, C, h, w) noise of step i. mask (J, h, w) or (J, 1, h, w), 1 = edit: outside it Z is put back to
    x_src after every step (so the background latent is the source's exactly). Returns Z, (J, C, h, w)."""
    z = x_src.clone()
    m = None if mask is None else mask.reshape(x_src.shape[0], 1, *x_src.shape[-2:]).to(x_src.dtype)
    for i in range(start, sigmas.shape[0] - 1):
        t, t_next = float(sigmas[i]), float(sigmas[i + 1])
        xs_t = noised(x_src, noise(i).to(x_src), t)
        xt_t = xs_t + (z - x_src)  # exactly xs_t while Z is x_src (z + xs_t - x_src rounds): equal prompts edit nothing
        z = z + (t_next - t) * (v_target(xt_t, t) - v_source(xs_t, t)).to(z.dtype)
        if m is not None:
            z = m * z + (1 - m) * x_src
        if callback is not None:
            callback(i, z)
    return z


@torch.no_grad()
def invert_flow(v: Field, x0: torch.Tensor, sigmas: torch.Tensor, start: int) -> torch.Tensor:
    """Euler inversion of the ODE of field v from x0 (sigma 0) up to sigmas[start], through the descending sigmas
    (N + 1,) read backwards. Returns the levels (K + 1, B, C, h, w), K = N - start: level k at sigmas[N - k]
    (level 0 is x0 itself)."""
    n = sigmas.shape[0] - 1
    levels, x = [x0], x0
    for i in range(n, start, -1):  # sigma from sigmas[i] up to sigmas[i - 1]
        s, s_up = float(sigmas[i]), float(sigmas[i - 1])
        x = x + (s_up - s) * v(x, s).to(x.dtype)
        levels.append(x)
    return torch.stack(levels)


@torch.no_grad()
def masked_flow_decode(
    v: Field, levels: torch.Tensor, sigmas: torch.Tensor, mask: torch.Tensor, job_image: list[int] | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Euler decoding of field v from the top level of `levels` (invert_flow's) down to sigma 0, each job's latent
    outside mask (J, h, w) replaced after every step by its image's inverted latent of the same level: the last step
    lands on level 0, the image's own latent, so the background ends exact. Returns (J, C, h, w)."""
    k_top, b = levels.shape[0] - 1, levels.shape[1]
    n = sigmas.shape[0] - 1
    index = torch.tensor(list(range(b)) if job_image is None else list(job_image), device=levels.device)
    m = mask.reshape(len(index), 1, *levels.shape[-2:]).to(levels.dtype)
    x = levels[k_top][index]
    for k in range(k_top, 0, -1):  # level k sits at sigmas[n - k]
        s, s_down = float(sigmas[n - k]), float(sigmas[n - k + 1])
        x = x + (s_down - s) * v(x, s).to(x.dtype)
        x = m * x + (1 - m) * levels[k - 1][index]
        if callback is not None:
            callback(k - 1, x)
    return x
