"""DDIM grid and step: known values from the maths, and agreement with diffusers' schedulers."""

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, PNDMScheduler

from diffedit.inversion import ddim_invert
from diffedit.sampling import masked_denoise
from diffedit.schedule import ddim_grid, ddim_step, model_output_to_eps_x0, steps_at

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
          set_alpha_to_one=False, steps_offset=1)


def test_grid_matches_diffusers_timesteps():
    sched = DDIMScheduler(**SD)
    grid = ddim_grid(sched, 50, 0.8)
    assert grid.num_steps == 40 == steps_at(50, 0.8) and steps_at(10, 1.0) == 10 and steps_at(20, 0.04) == 0
    sched.set_timesteps(50)
    # decoding visits the last 40 timesteps of the descending schedule, exactly as diffusers' get_timesteps
    assert grid.timesteps[1:].flip(0).tolist() == sched.timesteps[10:].tolist()
    assert grid.timesteps[1:4].tolist() == [1, 21, 41]
    assert grid.alphas[0] == pytest.approx(float(sched.alphas_cumprod[0]))  # set_alpha_to_one=False
    # any scheduler's noise schedule is reused (SD 1.5 folders ship PNDM)
    pndm = PNDMScheduler(**{k: v for k, v in SD.items() if k != "clip_sample"})
    assert torch.equal(ddim_grid(pndm, 50, 0.8).timesteps, grid.timesteps)


def test_grid_rejects_bad_arguments():
    sched = DDIMScheduler(**SD)
    for steps, strength in [(0, 0.8), (50, 0.0), (50, 1.5), (2, 0.2)]:
        with pytest.raises(ValueError):
            ddim_grid(sched, steps, strength)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_model_output_conversions_recover_eps_and_x0(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps, alpha = torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g), 0.3
    x = alpha**0.5 * x0 + (1 - alpha) ** 0.5 * eps
    output = {"epsilon": eps, "sample": x0, "v_prediction": alpha**0.5 * eps - (1 - alpha) ** 0.5 * x0}[prediction_type]
    eps_hat, x0_hat = model_output_to_eps_x0(output, x, alpha, prediction_type)
    assert torch.allclose(eps_hat, eps, atol=1e-5) and torch.allclose(x0_hat, x0, atol=1e-5)


def test_ddim_step_matches_diffusers_both_directions():
    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    grid = ddim_grid(DDIMScheduler(**SD), 50, 1.0)
    sched = DDIMScheduler(**SD)
    sched.set_timesteps(50)
    k = 10  # step from level k at timestep t_k down to level k-1
    ours = ddim_step(out, x, float(grid.alphas[k]), float(grid.alphas[k - 1]))
    theirs = sched.step(out, int(grid.timesteps[k]), x).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    inv = DDIMInverseScheduler(**SD)
    inv.set_timesteps(50)
    ours_up = ddim_step(out, x, float(grid.alphas[k - 1]), float(grid.alphas[k]))
    theirs_up = inv.step(out, int(grid.timesteps[k]), x).prev_sample
    assert torch.allclose(ours_up, theirs_up, atol=1e-5)


class ConstantNoiseUNet(torch.nn.Module):
    """eps depends on the timestep only: DDIM inversion is then exactly invertible."""

    class Out:
        def __init__(self, sample):
            self.sample = sample

    def __init__(self, shape):
        super().__init__()
        self.table = torch.randn(1000, *shape, generator=torch.Generator().manual_seed(3))

    def forward(self, x, t, encoder_hidden_states=None):
        return self.Out(self.table[t.long()].to(x.dtype))


def test_inversion_then_decoding_is_exact_when_eps_ignores_x():
    unet = ConstantNoiseUNet((4, 6, 6))
    grid = ddim_grid(DDIMScheduler(**SD), 20, 1.0)
    x0 = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cond = torch.zeros(2, 3, 8)
    levels = ddim_invert(unet, x0, cond, grid)
    assert levels.shape == (21, 2, 4, 6, 6) and torch.equal(levels[0], x0)
    out = masked_denoise(unet, levels, torch.ones(2, 6, 6), cond, grid, uncond=None)
    assert torch.allclose(out, x0, atol=1e-9)


class LinearNoiseUNet(ConstantNoiseUNet):
    """eps = 0.3 x + table[t]: depends smoothly on x, so DDIM inversion errs at first order in the step."""

    def forward(self, x, t, encoder_hidden_states=None):
        return self.Out(0.3 * x + self.table[t.long()].to(x.dtype))


def test_inversion_error_shrinks_with_steps_for_a_smooth_model():
    unet = LinearNoiseUNet((4, 6, 6))
    x0 = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cond = torch.zeros(1, 3, 8)
    errors = []
    for steps in (10, 40, 160):
        grid = ddim_grid(DDIMScheduler(**SD), steps, 0.8)
        levels = ddim_invert(unet, x0, cond, grid)
        errors.append(float((masked_denoise(unet, levels, torch.ones(1, 6, 6), cond, grid) - x0).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.5 * errors[1]  # roughly first order: 4x the steps, well under half the error


def test_walks_and_decodings_of_several_ratios_in_one_batch_equal_separate_runs():
    """ddim_invert's stops and masked_denoise's starts: rows of a lower ratio join or leave the batch at their
    level, and each row ends exactly where a run of its own ratio would (a row-wise model, float64)."""
    unet = LinearNoiseUNet((4, 6, 6))
    sched = DDIMScheduler(**SD)
    full, low = ddim_grid(sched, 10, 1.0), ddim_grid(sched, 10, 0.6)
    x0 = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    cond = torch.zeros(2, 3, 8)
    joint = ddim_invert(unet, x0, cond, full, stops=[10, 6])
    alone = ddim_invert(unet, x0[1:], cond[1:], low)
    assert torch.allclose(joint[:7, 1:], alone) and torch.equal(joint[10, 1], joint[6, 1])  # kept above its stop
    assert torch.allclose(joint[:, :1], ddim_invert(unet, x0[:1], cond[:1], full))
    mask = (torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(7)) > 0.5).float()
    out = masked_denoise(unet, joint, mask, cond, full, uncond=None, starts=[10, 6])
    assert torch.allclose(out[1:], masked_denoise(unet, alone, mask[1:], cond[1:], low, uncond=None))
    assert torch.allclose(out[:1], masked_denoise(unet, joint[:, :1], mask[:1], cond[:1], full, uncond=None))
    seen = []
    masked_denoise(unet, joint, mask, cond, full, uncond=None, starts=[10, 6], callback=lambda k, x: seen.append(k))
    assert seen == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="starts"):
        masked_denoise(unet, joint, mask, cond, full, uncond=None, starts=[11, 6])
    with pytest.raises(ValueError, match="stops"):
        ddim_invert(unet, x0, cond, full, stops=[0, 6])
