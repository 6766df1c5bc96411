"""Stage (c): UNet + text encoder on the fixed latents.

DDPM (Ho et al. 2020, eq. 14): epsilon prediction on SD's noise schedule, Min-SNR-5 loss weighting
(Hang et al. 2023), 10 % empty captions for classifier-free guidance (Ho & Salimans 2022), EMA of the
UNet and text encoder weights for sampling and saving.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from diffedit.shapeworld.lr_schedule import lr_factor
from diffedit.shapeworld.model import ModelConfig
from diffedit.shapeworld.training_data import tokenize
from diffedit.shapeworld.training_log import Logger, progress_bar, sample_grid

SNR_GAMMA = 5.0  # Min-SNR weighting gamma (Hang et al. 2023)


def diffusion_loss(
    unet, text_encoder, z0: torch.Tensor, ids: torch.Tensor, alphas_cumprod: torch.Tensor, snr_gamma: float | None
) -> torch.Tensor:
    """Epsilon-prediction loss ||eps - eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, c)||^2 (DDPM eq. 14)."""
    b = z0.shape[0]
    t = torch.randint(0, alphas_cumprod.shape[0], (b,), device=z0.device)
    noise = torch.randn_like(z0)
    a = alphas_cumprod[t].view(b, 1, 1, 1)  # (B, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    states = text_encoder(ids)[0]  # (B, T, D)
    eps = unet(zt, t, encoder_hidden_states=states).sample  # (B, 4, h, w)
    per_sample = (eps.float() - noise).pow(2).mean(dim=(1, 2, 3))  # (B,)
    if snr_gamma is not None:
        snr = a.view(b) / (1 - a.view(b))
        per_sample = per_sample * torch.clamp(snr, max=snr_gamma) / snr
    return per_sample.mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def train_unet(
    components: dict,
    ema: dict,
    latents: torch.Tensor,
    ids: torch.Tensor,
    config: ModelConfig,
    *,
    steps: int | None,
    seconds: float | None,
    device: torch.device,
    seed: int,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    warmup_from: int = 0,
    anneal: bool = False,
    quiet: bool = False,
    samples_every: int | None = None,
    samples_dir: Path | None = None,
    log: Logger | None = None,
) -> dict:
    """Train UNet + text encoder on the fixed latents for `steps` steps or `seconds` seconds.

    The learning rate warms up over the first steps after `warmup_from` (the step a fresh optimizer
    starts at when a run continues from saved weights without optimizer state), then stays constant,
    or with `anneal` follows a cosine down to 10 % over this run's steps or seconds (a final run).
    """
    log = log or Logger(quiet)
    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    unet.to(device).train()
    text_encoder.to(device).train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    alphas_cumprod = components["scheduler"].alphas_cumprod.to(device)
    empty = tokenize(tokenizer, [""])[0].to(device)  # (T,)
    latents, ids = latents.to(device), ids.to(device)
    gen = torch.Generator().manual_seed(seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    sample_components = dict(components, unet=ema["unet"], text_encoder=ema["text_encoder"])

    start, step, ema_loss = time.time(), 0, None
    bar = progress_bar(steps, "unet", quiet)
    while True:
        elapsed = time.time() - start
        if (steps is not None and step >= steps) or (seconds is not None and elapsed >= seconds and step > 0):
            break  # a time budget always buys one step: a run whose earlier stages ate the budget still trains
        global_step = start_step + step
        progress = step / steps if steps is not None else elapsed / seconds if seconds else 0.0
        for group in opt.param_groups:
            group["lr"] = config.unet_lr * lr_factor(global_step - warmup_from, progress, cosine=anneal)
        idx = torch.randint(0, latents.shape[0], (config.unet_batch,), generator=gen).to(device)
        z0, c = latents[idx].float(), ids[idx]  # (B, 4, h, w), (B, T)
        drop = (torch.rand(config.unet_batch, generator=gen) < config.caption_dropout).to(device)
        c = torch.where(drop[:, None], empty[None], c)
        with autocast:
            loss = diffusion_loss(unet, text_encoder, z0, c, alphas_cumprod, SNR_GAMMA)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(config.ema_decay, (1 + global_step) / (10 + global_step))
        ema_update(ema["unet"], unet, decay)
        ema_update(ema["text_encoder"], text_encoder, decay)
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.99 * ema_loss + 0.01 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}")
        log(
            f"unet step {global_step + 1} loss {ema_loss:.4f} {(time.time() - start) / step:.3f} s/step "
            f"elapsed {(time.time() - start) / 60:.1f} min"
            + (f" of {seconds / 60:.1f}" if seconds else ""),
            force=False,
        )
        if samples_every and samples_dir is not None and (global_step + 1) % samples_every == 0:
            sample_grid(
                sample_components,
                samples_dir / f"step_{global_step + 1:06d}.png",
                n=16,
                steps=config.sample_steps,
                guidance=config.guidance_scale,
                seed=0,
            )
            unet.train()
            text_encoder.train()
    bar.close()
    unet.eval()
    text_encoder.eval()
    seconds_used = time.time() - start
    log(f"unet done: {step} steps ({start_step + step} total) in {seconds_used / 60:.1f} min, loss {ema_loss}")
    return {
        "steps": step,
        "total_steps": start_step + step,
        "seconds": round(seconds_used, 1),
        "final_loss": ema_loss,
        "anneal": anneal,
        "final_lr": opt.param_groups[0]["lr"],
        "optimizer": opt.state_dict(),
    }
