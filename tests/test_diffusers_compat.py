"""Our pipeline against diffusers' StableDiffusionDiffEditPipeline on the same tiny model and seeds.

Differences explained here, each by a test:
1. Masks: configured like diffusers (latents sampled from the VAE posterior, clamp to 3x the mean, no
   smoothing) our mask equals theirs bit for bit, although we run no classifier-free guidance in the mask
   pass (2n UNet rows instead of 4n): any guidance with a shared unconditional prediction multiplies the
   difference eps_target - eps_source by a constant, which the normalisation divides away. (diffusers'
   pass is not even the guidance it names: it unpacks (cond, uncond) swapped, scaling by 1 - g instead.)
2. Blending: diffusers' decoding loop blends the background with the inverted latent one level too
   noisy (`image_latents[i]` after stepping from level i), so with an all-background mask it ends on a
   noisy latent; ours ends on the image's own latent.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, StableDiffusionDiffEditPipeline
from PIL import Image

from diffedit.images import from_uint8
from diffedit.masks import noise_difference_maps, normalize_maps, threshold_maps
from diffedit.schedule import ddim_grid

from tiny import tiny_components


@pytest.fixture(scope="module")
def pipe():
    c = tiny_components()
    pipe = StableDiffusionDiffEditPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
        inverse_scheduler=DDIMInverseScheduler.from_config(c.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _our_mask_like_diffusers(pipe, image, source, target, seed, steps=10, n=10):
    """Reproduce diffusers' random draws (posterior sample, then noise), then run our mask functions."""
    pixels = from_uint8(np.asarray(image)).permute(2, 0, 1)[None]
    g = torch.Generator().manual_seed(seed)
    posterior = pipe.vae.encode(pixels.repeat(n, 1, 1, 1)).latent_dist
    latents = posterior.sample(g) * pipe.vae.config.scaling_factor  # (n, C, h, w)
    noise = torch.randn(latents.shape, generator=g)
    grid = ddim_grid(pipe.scheduler, steps, 0.5)
    alpha = float(grid.alphas[-1])
    noisy = (alpha**0.5 * latents + (1 - alpha) ** 0.5 * noise)[None]  # (1, n, C, h, w)
    embeds = pipe.encode_prompt([source, target], "cpu", 1, False)[0]
    maps = noise_difference_maps(pipe.unet, noisy, int(grid.timesteps[-1]), embeds[:1], embeds[1:], [0])
    return maps, threshold_maps(normalize_maps(maps, clamp="mean_ratio", mean_ratio=3.0), 0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_equals_diffusers_generate_mask(pipe, image, seed):
    source, target = "a red square", "a blue circle"
    theirs = pipe.generate_mask(image=Image.fromarray(image), source_prompt=source, target_prompt=target,
                                generator=torch.Generator().manual_seed(seed), num_inference_steps=10)
    _, ours = _our_mask_like_diffusers(pipe, image, source, target, seed)
    assert theirs.shape == (1, 16, 16)
    assert 0 < ours.sum() < ours.numel()  # a real mask, not all or nothing
    assert np.array_equal(ours[0].numpy().astype(np.int64), theirs[0])


def test_diffusers_guided_mask_pass_is_a_scaled_copy_of_the_unguided_one(pipe, image):
    """Why guidance in the mask pass is wasted: with uncond u, (u + g(t-u)) - (u + g(s-u)) = g (t - s)."""
    unet, calls = pipe.unet, []
    orig_forward = unet.forward

    def recording_forward(sample, timestep, encoder_hidden_states, **kw):
        out = orig_forward(sample, timestep, encoder_hidden_states, **kw)
        calls.append(out.sample if hasattr(out, "sample") else out[0])
        return out

    unet.forward = recording_forward
    try:
        pipe.generate_mask(image=Image.fromarray(image), source_prompt="a red square", target_prompt="a blue circle",
                           generator=torch.Generator().manual_seed(0), num_inference_steps=10, guidance_scale=7.5)
    finally:
        unet.forward = orig_forward
    rows = calls[0].chunk(4)
    assert calls[0].shape[0] == 40  # 4n rows for n = 10: twice what the mask needs
    # diffusers unpacks encode_prompt's (cond, uncond) pair swapped, so its rows are
    # [source, "", target, ""], not [neg_src, source, uncond, target] as its names say: rows 1 and 3
    # are the same unconditional prediction.
    src, uncond_a, tgt, uncond_b = rows
    assert torch.allclose(uncond_a, uncond_b, atol=1e-5)
    assert not torch.allclose(src, uncond_a, atol=1e-3)
    # what it then computes as "guided target - guided source": (1 - g) (target - source), a constant factor
    g = 7.5
    guided = (src + g * (uncond_a - src)) - (tgt + g * (uncond_b - tgt))
    assert torch.allclose(guided, (1 - g) * (src - tgt), atol=1e-4)


def test_default_mask_differs_from_diffusers_only_by_design(pipe, image, editor):
    """Our defaults use the posterior mean (no VAE sampling noise) and a quantile clamp + smoothing: on the same
    weights, seed and grid both give a real mask of the same latent shape, but not the same one (configured like
    diffusers, ours is bit-equal: test_mask_equals_diffusers_generate_mask)."""
    source, target = "a red square", "a blue circle"
    theirs = pipe.generate_mask(image=Image.fromarray(image), source_prompt=source, target_prompt=target,
                                generator=torch.Generator().manual_seed(0), num_inference_steps=10)
    ours = editor.mask(image, source, target, seed=0, num_inference_steps=10).mask.numpy().astype(np.int64)
    assert ours.shape == theirs.shape == (1, 16, 16)
    assert 0 < ours.sum() < 256 and 0 < theirs.sum() < 256
    assert not np.array_equal(ours, theirs)


def test_diffusers_blends_one_level_too_noisy_and_we_do_not(pipe, image, editor):
    """All-background mask: the decoding must return the image's clean latent. diffusers returns the
    inverted latent of the lowest noisy level instead: its off-by-one."""
    pil = Image.fromarray(image)
    inv = pipe.invert(prompt="", image=pil, num_inference_steps=10, inpaint_strength=0.8,
                      generator=torch.Generator().manual_seed(0)).latents  # (1, N, C, h, w), noisiest first
    zero_mask = np.zeros((1, 16, 16), np.float32)
    theirs = pipe(prompt="a blue circle", mask_image=zero_mask, image_latents=inv, negative_prompt="a red square",
                  num_inference_steps=10, inpaint_strength=0.8, output_type="latent").images
    assert torch.allclose(theirs, inv[:, -1])  # ends on level 1 (noisy), not level 0
    clean = pipe.vae.config.scaling_factor * pipe.vae.encode(
        from_uint8(image).permute(2, 0, 1)[None]).latent_dist.mean
    assert not torch.allclose(theirs, clean, atol=1e-2)

    res = editor.edit(image, "a red square", "a blue circle", mask=np.zeros((32, 32), np.uint8), seed=0,
                      num_inference_steps=10, composite=False)
    ours_latent = editor.components.encode_images(from_uint8(np.asarray(res.image)).permute(2, 0, 1)[None])
    # decoded-then-re-encoded background: close to the clean latent, far from diffusers' noisy one
    assert (ours_latent - clean).abs().mean() < (theirs - clean).abs().mean()
