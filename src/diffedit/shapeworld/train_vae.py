"""Stage (a): the VAE, an AutoencoderKL trained on freshly rendered scenes.

L1 + L2 reconstruction and SD's small KL weight (Rombach et al. 2022, sec. 3 and appendix G), on random
crops for most of the run; its ``scaling_factor`` is 1 / std of the latents.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffedit.images import to_uint8
from diffedit.shapeworld import world
from diffedit.shapeworld.evaluate import images_to_tensor, render_scenes
from diffedit.shapeworld.lr_schedule import lr_factor
from diffedit.shapeworld.model import ModelConfig
from diffedit.shapeworld.training_log import Logger, progress_bar

HELD_OUT_SEED = 10_007  # scenes of the VAE PSNR; training scenes use other seeds


def vae_loss(vae, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict]:
    """L1 + L2 reconstruction of x (B, 3, H, W) in [-1, 1] from a posterior sample, plus weighted KL."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample  # (B, 3, H, W)
    l1 = (recon.float() - x).abs().mean()
    l2 = F.mse_loss(recon.float(), x)
    # LDM sums the reconstruction NLL over pixels and weighs the summed KL by 1e-6; with per-pixel
    # means the same balance is kl_weight * KL / (pixels per image).
    kl = posterior.kl().float().mean() / x[0].numel()
    loss = l1 + l2 + kl_weight * kl
    return loss, {"l1": l1.item(), "l2": l2.item(), "kl": kl.item()}


def random_crops(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random crops (B, 3, size, size) at offsets on the 8-px latent grid."""
    if size >= x.shape[-1]:
        return x
    n = (x.shape[-1] - size) // 8 + 1
    offsets = rng.integers(0, n, size=(x.shape[0], 2)) * 8
    return torch.stack([img[:, oy : oy + size, ox : ox + size] for img, (oy, ox) in zip(x, offsets)])


def train_vae(
    vae,
    config: ModelConfig,
    *,
    steps: int | None,
    seconds: float | None,
    device: torch.device,
    seed: int,
    quiet: bool = False,
    log: Logger | None = None,
) -> dict:
    """Train the VAE on freshly rendered scenes for `steps` steps or `seconds` seconds."""
    log = log or Logger(quiet)
    rng = np.random.default_rng(seed)
    vae.to(device).train()
    opt = torch.optim.Adam(vae.parameters(), lr=config.vae_lr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    start, step, ema_loss = time.time(), 0, None
    bar = progress_bar(steps, "vae", quiet)
    while True:
        elapsed = time.time() - start
        progress = max(step / steps if steps else 0.0, elapsed / seconds if seconds else 0.0)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = config.vae_lr * lr_factor(step, progress, cosine=True)
        images = np.stack([world.sample_scene(rng).render() for _ in range(config.vae_batch)])
        x = images_to_tensor(images)
        if progress < 1.0 - config.vae_full_frac:
            x = random_crops(x, config.vae_crop, rng)
        x = x.to(device, non_blocking=True)
        with autocast:
            loss, parts = vae_loss(vae, x, config.vae_kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}", size=x.shape[-1])
        log(
            f"vae step {step} loss {ema_loss:.4f} (l1 {parts['l1']:.4f} l2 {parts['l2']:.5f}) size {x.shape[-1]} "
            f"{(time.time() - start) / step:.3f} s/step progress {progress:.0%}",
            force=False,
        )
    bar.close()
    vae.eval()
    seconds_used = time.time() - start
    log(f"vae done: {step} steps in {seconds_used / 60:.1f} min, loss {ema_loss}")
    return {"steps": step, "seconds": round(seconds_used, 1), "final_loss": ema_loss}


@torch.no_grad()
def compute_scaling_factor(vae, n: int = 256, seed: int = 1, *, batch_size: int = 32) -> float:
    """1 / std of the latents (posterior mean) of n scenes, as SD's 0.18215; stored in the VAE config."""
    images, _ = render_scenes(n, seed)
    latents = []
    for i in range(0, n, batch_size):
        x = images_to_tensor(images[i : i + batch_size]).to(vae.device, vae.dtype)
        latents.append(vae.encode(x).latent_dist.mean.float().cpu())
    scale = float(1.0 / torch.cat(latents).std())
    vae.register_to_config(scaling_factor=scale)
    return scale


@torch.no_grad()
def save_vae_recon(vae, path: Path, n: int = 8) -> None:
    """Held-out scenes (top row) and their reconstructions (bottom row) as one PNG."""
    from PIL import Image

    images, _ = render_scenes(n, HELD_OUT_SEED)
    x = images_to_tensor(images).to(vae.device, vae.dtype)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    recon = to_uint8(recon).permute(0, 2, 3, 1).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([np.concatenate(list(images), 1), np.concatenate(list(recon), 1)], 0)).save(path)
