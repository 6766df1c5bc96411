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


def optimizer_step(opt, model: torch.nn.Module, ema: torch.nn.Module, loss: torch.Tensor, ema_decay: float,
                   global_step: int) -> None:
    """Backward, clip the gradient norm to 1, step, then the EMA update with its warm-up (decay capped by
    (1 + step) / (10 + step)): the step of the fine-tuning runs (train_inpaint, train_flow)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema_update(ema, model, min(ema_decay, (1 + global_step) / (10 + global_step)))


class _UnetSteps:
    """The UNet + text encoder in training, their optimizer and EMA copies, the latents on the device,
    and one optimisation step on a batch drawn from them."""

    def __init__(
        self,
        components: dict,
        ema: dict,
        latents: torch.Tensor,
        ids: torch.Tensor,
        config: ModelConfig,
        *,
        device: torch.device,
        seed: int,
        optimizer_state: dict | None,
    ):
        self.unet, self.text_encoder, self.ema, self.config = components["unet"], components["text_encoder"], ema, config
        self.unet.to(device).train()
        self.text_encoder.to(device).train()
        self.params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=config.unet_lr, weight_decay=0.01)
        if optimizer_state is not None:
            self.opt.load_state_dict(optimizer_state)
        self.alphas_cumprod = components["scheduler"].alphas_cumprod.to(device)
        self.empty = tokenize(components["tokenizer"], [""])[0].to(device)  # (T,)
        self.latents, self.ids, self.device = latents.to(device), ids.to(device), device
        self.gen = torch.Generator().manual_seed(seed)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.sample_components = dict(components, unet=ema["unet"], text_encoder=ema["text_encoder"])

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def draw_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, 4, h, w) and token ids (B, T), a `caption_dropout` share of them the empty caption."""
        config = self.config
        idx = torch.randint(0, self.latents.shape[0], (config.unet_batch,), generator=self.gen).to(self.device)
        z0, c = self.latents[idx].float(), self.ids[idx]  # (B, 4, h, w), (B, T)
        drop = (torch.rand(config.unet_batch, generator=self.gen) < config.caption_dropout).to(self.device)
        return z0, torch.where(drop[:, None], self.empty[None], c)

    def step(self, global_step: int) -> torch.Tensor:
        """One optimizer step on a fresh batch, then the EMA update; returns the loss."""
        z0, c = self.draw_batch()
        with self.autocast:
            loss = diffusion_loss(self.unet, self.text_encoder, z0, c, self.alphas_cumprod, SNR_GAMMA)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        decay = min(self.config.ema_decay, (1 + global_step) / (10 + global_step))
        ema_update(self.ema["unet"], self.unet, decay)
        ema_update(self.ema["text_encoder"], self.text_encoder, decay)
        return loss

    def save_samples(self, path: Path) -> None:
        """A sample grid from the EMA weights; the trained modules go back to training mode."""
        config = self.config
        sample_grid(self.sample_components, path, n=16, steps=config.sample_steps, guidance=config.guidance_scale, seed=0)
        self.unet.train()
        self.text_encoder.train()

    def finish(self) -> None:
        self.unet.eval()
        self.text_encoder.eval()


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
    run = _UnetSteps(components, ema, latents, ids, config, device=device, seed=seed, optimizer_state=optimizer_state)
    start, step, ema_loss = time.time(), 0, None
    bar = progress_bar(steps, "unet", quiet)
    while True:
        elapsed = time.time() - start
        if (steps is not None and step >= steps) or (seconds is not None and elapsed >= seconds and step > 0):
            break  # a time budget always buys one step: a run whose earlier stages ate the budget still trains
        global_step = start_step + step
        progress = step / steps if steps is not None else elapsed / seconds if seconds else 0.0
        run.set_lr(config.unet_lr * lr_factor(global_step - warmup_from, progress, cosine=anneal))
        loss = run.step(global_step)
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.99 * ema_loss + 0.01 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}")
        _log_step(log, global_step + 1, ema_loss, start, step, seconds)
        if samples_every and samples_dir is not None and (global_step + 1) % samples_every == 0:
            run.save_samples(samples_dir / f"step_{global_step + 1:06d}.png")
    bar.close()
    run.finish()
    seconds_used = time.time() - start
    log(f"unet done: {step} steps ({start_step + step} total) in {seconds_used / 60:.1f} min, loss {ema_loss}")
    return {
        "steps": step,
        "total_steps": start_step + step,
        "seconds": round(seconds_used, 1),
        "final_loss": ema_loss,
        "anneal": anneal,
        "final_lr": run.opt.param_groups[0]["lr"],
        "optimizer": run.opt.state_dict(),
    }


def _log_step(log: Logger, done: int, ema_loss: float, start: float, step: int, seconds: float | None) -> None:
    """A progress line at most every minute: `done` steps in all, `step` of them in this run since `start`."""
    log(
        f"unet step {done} loss {ema_loss:.4f} {(time.time() - start) / step:.3f} s/step "
        f"elapsed {(time.time() - start) / 60:.1f} min"
        + (f" of {seconds / 60:.1f}" if seconds else ""),
        force=False,
    )
