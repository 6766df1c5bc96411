"""Plain text-to-image sampling with DDIM and classifier-free guidance, for grids and evaluation."""

from __future__ import annotations

import numpy as np
import torch

from diffedit.images import to_uint8
from diffedit.prompts import encode_prompts as _encode


def encode_prompts(components: dict, prompts: list[str]) -> torch.Tensor:
    """CLIP text states of the prompts, padded to the tokenizer's max length: (B, T, D)."""
    return _encode(components["tokenizer"], components["text_encoder"], prompts)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """Decode scaled latents (B, 4, h, w) into uint8 images (B, H, W, 3)."""
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample  # (B, 3, H, W) in [-1, 1]
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(
    components: dict,
    captions: list[str],
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Images for the captions (B, H, W, 3) uint8: the model's scheduler (DDIM for the noise models, Euler for the
    flow model) with classifier-free guidance."""
    if not captions:
        raise ValueError("captions is empty; pass at least one caption")
    vae, unet, scheduler = components["vae"], components["unet"], components["scheduler"]
    device, dtype = unet.device, unet.dtype

    # 1. Encode the captions and the empty prompt (the unconditional branch of guidance)
    cond = encode_prompts(components, list(captions)).to(dtype)  # (B, T, D)
    do_cfg = guidance_scale != 1.0
    if do_cfg:
        uncond = encode_prompts(components, [""] * len(captions)).to(dtype)
        cond = torch.cat([uncond, cond])  # (2B, T, D)

    # 2. Initial noise x_T, drawn on the CPU so a seed gives the same images on every device
    shape = (len(captions), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)
    latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # a flow scheduler starts at unit noise

    # 3. Denoising loop
    scheduler.set_timesteps(num_inference_steps, device=device)
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        if hasattr(scheduler, "scale_model_input"):
            model_input = scheduler.scale_model_input(model_input, t)
        eps = unet(model_input, t, encoder_hidden_states=cond).sample
        if do_cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents).prev_sample

    # 4. Decode
    return decode_latents(vae, latents)
