"""Figures of a ShapeWorld model: VAE reconstruction PSNR and text-to-image generation accuracy."""

from __future__ import annotations

import numpy as np
import torch

from diffedit import metrics
from diffedit.images import from_uint8, to_uint8
from diffedit.inversion import ddim_invert
from diffedit.prompts import encode_prompts
from diffedit.sampling import masked_denoise
from diffedit.schedule import ddim_grid
from diffedit.shapeworld import world
from diffedit.shapeworld.generate import decode_latents, generate


PSNR_CAP = 100.0  # dB; a pixel-exact reconstruction has infinite PSNR, which would swamp a mean


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of one uint8 image against another, capped at PSNR_CAP so that means stay finite."""
    return min(metrics.psnr(a, b), PSNR_CAP)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> float tensor (B, 3, H, W) in [-1, 1]."""
    return from_uint8(images).permute(0, 3, 1, 2)


def render_scenes(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """n random scenes (n, 128, 128, 3) uint8 and their captions."""
    rng = np.random.default_rng(seed)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    return np.stack([s.render() for s in scenes]), [s.caption() for s in scenes]


@torch.no_grad()
def vae_psnr(vae, n: int = 256, seed: int = 12345, *, batch_size: int = 32) -> float:
    """Mean per-image PSNR (dB) of VAE reconstructions (posterior mean) of n held-out scenes."""
    images, _ = render_scenes(n, seed)
    scores = []
    for i in range(0, n, batch_size):
        batch = images[i : i + batch_size]
        x = images_to_tensor(batch).to(vae.device, vae.dtype)
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample  # (b, 3, H, W)
        recon = to_uint8(recon).permute(0, 2, 3, 1).cpu().numpy()
        scores += [psnr(a, b) for a, b in zip(recon, batch)]
    return float(np.mean(scores))


def eval_captions(n: int, seed: int) -> list[str]:
    """n distinct captions drawn from the grammar, half with one object and half with two."""
    rng = np.random.default_rng(seed)
    captions = world.all_captions()
    one = [c for c in captions if " and " not in c]
    two = [c for c in captions if " and " in c]
    n_one = min(len(one), n // 2)
    picked = list(rng.choice(one, n_one, replace=False)) + list(rng.choice(two, n - n_one, replace=False))
    return [str(c) for c in picked]


@torch.no_grad()
def generation_accuracy(
    components: dict,
    n_captions: int = 64,
    steps: int = 30,
    guidance: float = 5.0,
    seed: int = 0,
    *,
    batch_size: int = 32,
) -> dict:
    """Share of generated images that the checker reads back as their caption: overall, one-, two-object."""
    try:
        from diffedit.shapeworld.checker import check_caption
    except ImportError:  # the checker is optional for training
        return {}
    captions = eval_captions(n_captions, seed)
    generator = torch.Generator().manual_seed(seed)
    hits = []
    for i in range(0, len(captions), batch_size):
        batch = captions[i : i + batch_size]
        images = generate(components, batch, num_inference_steps=steps, guidance_scale=guidance, generator=generator)
        hits += [bool(check_caption(img, cap)) for img, cap in zip(images, batch)]
    two = np.array([" and " in c for c in captions])
    hits = np.array(hits)
    return {
        "overall": float(hits.mean()),
        "one_object": float(hits[~two].mean()) if (~two).any() else float("nan"),
        "two_object": float(hits[two].mean()) if two.any() else float("nan"),
        "n_captions": len(captions),
        "steps": steps,
        "guidance": guidance,
    }


@torch.no_grad()
def inversion_psnr(
    components: dict, n: int = 32, seed: int = 4242, *, steps: int = 50, strength: float = 1.0, batch_size: int = 16
) -> float:
    """Mean PSNR of scenes after unconditional DDIM inversion to `strength` and decoding back (no mask).

    This is the round trip DiffEdit's encoding relies on: the edit can only keep what inversion keeps.
    """
    vae, unet = components["vae"], components["unet"]
    grid = ddim_grid(components["scheduler"], steps, strength)
    images, _ = render_scenes(n, seed)
    scores = []
    for i in range(0, n, batch_size):
        batch = images[i : i + batch_size]
        x = images_to_tensor(batch).to(vae.device, vae.dtype)
        latents = (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).to(unet.dtype)  # (B, 4, h, w)
        cond = encode_prompts(components["tokenizer"], components["text_encoder"], [""] * len(batch)).to(unet.dtype)
        levels = ddim_invert(unet, latents, cond, grid)
        ones = torch.ones(len(batch), *latents.shape[-2:], device=latents.device)
        recon = decode_latents(vae, masked_denoise(unet, levels, ones, cond, grid, uncond=None))
        scores += [psnr(a, b) for a, b in zip(recon, batch)]
    return float(np.mean(scores))
