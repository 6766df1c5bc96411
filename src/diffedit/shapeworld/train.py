"""Train the ShapeWorld latent text-to-image model: VAE, then latents, then UNet + text encoder.

Stages (each writes what the next one needs under ``output/ckpt/``, so a GPU run can be split into
calls of a few minutes: ``stage="vae"`` then ``stage="unet", resume=output`` any number of times):

(a) VAE: AutoencoderKL on rendered scenes, L1 + L2 reconstruction and SD's small KL weight
    (Rombach et al. 2022, sec. 3 and appendix G); its ``scaling_factor`` is 1 / std of the latents.
(b) Latents: a fixed set of scenes encoded once (posterior mean x scaling factor) with captions.
(c) DDPM (Ho et al. 2020, eq. 14): epsilon prediction on SD's noise schedule, Min-SNR-5 loss
    weighting (Hang et al. 2023), 10 % empty captions for classifier-free guidance (Ho & Salimans
    2022), EMA of the UNet and text encoder weights for sampling and saving.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from diffedit.images import to_uint8
from diffedit.shapeworld import world
from diffedit.shapeworld.evaluate import eval_captions, generation_accuracy, images_to_tensor, render_scenes, vae_psnr
from diffedit.shapeworld.generate import generate
from diffedit.shapeworld.model import (
    ModelConfig,
    build_components,
    component_sizes,
    get_config,
    save_model,
)

STAGES = ("vae", "unet", "all")
HELD_OUT_SEED = 10_007  # scenes of the VAE PSNR; training scenes use other seeds
SNR_GAMMA = 5.0  # Min-SNR weighting gamma (Hang et al. 2023)
WARMUP_STEPS = 100  # linear learning-rate warmup of both stages


class _Logger:
    """Concise log lines (for files) every `every` seconds, silent when quiet."""

    def __init__(self, quiet: bool, every: float = 60.0):
        self.quiet, self.every, self.last = quiet, every, 0.0

    def __call__(self, msg: str, *, force: bool = True) -> None:
        if self.quiet or (not force and time.time() - self.last < self.every):
            return
        self.last = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _progress(total: int | None, desc: str, quiet: bool):
    return tqdm(total=total, desc=desc, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# (a) VAE


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


def _random_crops(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random crops (B, 3, size, size) at offsets on the 8-px latent grid."""
    if size >= x.shape[-1]:
        return x
    n = (x.shape[-1] - size) // 8 + 1
    offsets = rng.integers(0, n, size=(x.shape[0], 2)) * 8
    return torch.stack([img[:, oy : oy + size, ox : ox + size] for img, (oy, ox) in zip(x, offsets)])


def _lr_factor(step: int, progress: float, *, cosine: bool) -> float:
    """Linear warmup, then constant or cosine decay to 10 % over progress in [0, 1]."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    if not cosine:
        return warm
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_vae(
    vae,
    config: ModelConfig,
    *,
    steps: int | None,
    seconds: float | None,
    device: torch.device,
    seed: int,
    quiet: bool = False,
    log: _Logger | None = None,
) -> dict:
    """Train the VAE on freshly rendered scenes for `steps` steps or `seconds` seconds."""
    log = log or _Logger(quiet)
    rng = np.random.default_rng(seed)
    vae.to(device).train()
    opt = torch.optim.Adam(vae.parameters(), lr=config.vae_lr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    start, step, ema_loss = time.time(), 0, None
    bar = _progress(steps, "vae", quiet)
    while True:
        elapsed = time.time() - start
        progress = max(step / steps if steps else 0.0, elapsed / seconds if seconds else 0.0)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = config.vae_lr * _lr_factor(step, progress, cosine=True)
        images = np.stack([world.sample_scene(rng).render() for _ in range(config.vae_batch)])
        x = images_to_tensor(images)
        if progress < 1.0 - config.vae_full_frac:
            x = _random_crops(x, config.vae_crop, rng)
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


# ----------------------------------------------------------------------------------------------
# (b) Latents


@torch.no_grad()
def encode_dataset(
    vae,
    n: int,
    seed: int,
    *,
    batch_size: int = 64,
    quiet: bool = False,
    two_object_share: float | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """n fresh scenes encoded once: scaled latents (n, 4, 16, 16) float16 on the CPU, and captions.

    `two_object_share` is the probability of a two-object scene (None: the world's own 1/2).
    """
    if two_object_share is not None and not 0.0 <= two_object_share <= 1.0:
        raise ValueError(f"two_object_share must be in [0, 1], got {two_object_share}")
    rng = np.random.default_rng(seed)

    def scene():
        if two_object_share is None:
            return world.sample_scene(rng)
        return world.sample_scene(rng, num_objects=1 + int(rng.random() < two_object_share))

    latents, captions = [], []
    scale = vae.config.scaling_factor
    for i in tqdm(range(0, n, batch_size), desc="latents", disable=quiet or not sys.stderr.isatty()):
        scenes = [scene() for _ in range(min(batch_size, n - i))]
        x = images_to_tensor(np.stack([s.render() for s in scenes])).to(vae.device, vae.dtype)
        latents.append((vae.encode(x).latent_dist.mean.float() * scale).half().cpu())
        captions += [s.caption() for s in scenes]
    return torch.cat(latents), captions


# ----------------------------------------------------------------------------------------------
# (c) UNet + text encoder


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (B, T) padded to the tokenizer's max length."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


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
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def _sample_grid(components: dict, path: Path, *, n: int, steps: int, guidance: float, seed: int) -> None:
    """A grid PNG of generated samples with their captions in a txt beside it."""
    from PIL import Image

    captions = eval_captions(n, seed)
    generator = torch.Generator().manual_seed(seed)
    images = generate(components, captions, num_inference_steps=steps, guidance_scale=guidance, generator=generator)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    h, w = images.shape[1:3]
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    path.with_suffix(".txt").write_text("".join(f"{i // cols},{i % cols}: {c}\n" for i, c in enumerate(captions)))


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
    log: _Logger | None = None,
) -> dict:
    """Train UNet + text encoder on the fixed latents for `steps` steps or `seconds` seconds.

    The learning rate warms up over the first steps after `warmup_from` (the step a fresh optimizer
    starts at when a run continues from saved weights without optimizer state), then stays constant,
    or with `anneal` follows a cosine down to 10 % over this run's steps or seconds (a final run).
    """
    log = log or _Logger(quiet)
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
    bar = _progress(steps, "unet", quiet)
    while True:
        elapsed = time.time() - start
        if (steps is not None and step >= steps) or (seconds is not None and elapsed >= seconds and step > 0):
            break  # a time budget always buys one step: a run whose earlier stages ate the budget still trains
        global_step = start_step + step
        progress = step / steps if steps is not None else elapsed / seconds if seconds else 0.0
        for group in opt.param_groups:
            group["lr"] = config.unet_lr * _lr_factor(global_step - warmup_from, progress, cosine=anneal)
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
        _ema_update(ema["unet"], unet, decay)
        _ema_update(ema["text_encoder"], text_encoder, decay)
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
            _sample_grid(
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


def _state_from_model_dir(model_dir: Path, components: dict) -> dict:
    """A UNet stage's resume state from a saved fp16 model folder: its EMA weights start both the
    trained and the EMA copies (upcast to fp32); the optimizer starts afresh."""
    loaded = {
        "unet": UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=torch.float32),
        "text_encoder": CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", torch_dtype=torch.float32),
    }
    state = {}
    for name, module in loaded.items():
        ours = {k: v.shape for k, v in components[name].state_dict().items()}
        theirs = {k: v.shape for k, v in module.state_dict().items()}
        if ours != theirs:
            raise ValueError(f"the {name} in {model_dir} has other sizes than this config; pass the --config it was trained with")
        state[name] = state[f"ema_{name}"] = module.state_dict()
    info = json.loads((model_dir / "training.json").read_text()) if (model_dir / "training.json").exists() else {}
    return {**state, "optimizer": None, "step": int(info.get("unet_steps", 0))}


# ----------------------------------------------------------------------------------------------
# The whole run


def _load_history(ckpt: Path, model_dir: Path | None = None) -> list[dict]:
    """Stages run so far: ckpt/history.json, else the `stages` of a model folder's training.json."""
    path = ckpt / "history.json"
    if path.exists():
        return json.loads(path.read_text())
    if model_dir is not None and (model_dir / "training.json").exists():
        return json.loads((model_dir / "training.json").read_text()).get("stages", [])
    return []


def _resume_model_dir(resume: Path) -> Path | None:
    """The fp16 model folder to continue from when `resume` has no full checkpoint (ckpt/unet_state.pt).

    A GPU call can bring back only a few files of 16 MiB, so the model folder (sharded fp16 weights,
    EMA) is what travels between calls; `resume` may be that folder or a run folder holding `model/`.
    """
    if (resume / "ckpt" / "unet_state.pt").exists():
        return None
    for candidate in (resume, resume / "model"):
        if (candidate / "model_index.json").exists():
            return candidate
    return None


def train(
    output: str | Path,
    *,
    config: str = "small",
    device: str = "cpu",
    minutes: float | None = None,
    vae_steps: int | None = None,
    unet_steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    quiet: bool = False,
    samples_every: int | None = None,
    stage: str = "all",
    resume: str | Path | None = None,
    threads: int | None = None,
    anneal: bool = False,
    two_object_share: float | None = None,
) -> dict:
    """Train (a stage of) a ShapeWorld model into `output`; returns the final figures.

    `minutes` bounds the wall time of this call (split vae_time_frac / rest for stage "all"); without
    it the stages run `vae_steps` / `unet_steps` (config defaults when None). `batch_size` overrides
    the UNet batch. `stage="unet"` needs a trained VAE in `resume` (or `output`) and continues a
    UNet found there. The model is saved (fp16) to output/model after every stage that has a UNet.
    `anneal` decays the UNet's learning rate along a cosine over this call (for a last run);
    `two_object_share` sets the share of two-object scenes among the training latents; given, they are
    encoded afresh rather than taken from the cached set of `resume`.
    """
    # 1. Check inputs
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    cfg = get_config(config)
    if batch_size is not None:
        cfg = replace(cfg, unet_batch=batch_size)
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)
    output = Path(output)
    ckpt = output / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    source = Path(resume) / "ckpt" if resume is not None else ckpt
    model_dir = _resume_model_dir(Path(resume)) if resume is not None else None
    log = _Logger(quiet)
    t_start = time.time()
    deadline = t_start + 60 * minutes if minutes is not None else None
    reserve = 0.05 * 60 * minutes if minutes is not None else 0.0  # final evaluation and saving
    history = _load_history(source, model_dir)
    figures: dict = {}

    components = build_components(cfg)
    sizes = component_sizes(components)
    log(f"config {config}: {sizes} threads {torch.get_num_threads()} device {dev}")

    # 2. Stage (a): VAE
    vae = components["vae"]
    if stage in ("vae", "all"):
        if stage == "vae" and (source / "vae").exists() and resume is not None:
            vae = components["vae"] = AutoencoderKL.from_pretrained(source / "vae")
        if minutes is not None:
            share = cfg.vae_time_frac if stage == "all" else 1.0
            seconds = share * (60 * minutes - reserve)
            steps = vae_steps
        else:
            seconds, steps = None, vae_steps if vae_steps is not None else cfg.vae_steps
        info = train_vae(vae, cfg, steps=steps, seconds=seconds, device=dev, seed=seed, quiet=quiet, log=log)
        info["scaling_factor"] = compute_scaling_factor(vae, cfg.scale_scenes)
        vae.save_pretrained(ckpt / "vae")
        history.append({"stage": "vae", "device": str(dev), **info})
        figures["vae_psnr"] = vae_psnr(vae, cfg.eval_scenes, HELD_OUT_SEED)
        log(f"vae psnr {figures['vae_psnr']:.2f} dB, scaling factor {info['scaling_factor']:.4f}")
        _save_vae_recon(vae, output / "samples" / "vae_recon.png")
    else:
        if (source / "vae").exists():
            vae = AutoencoderKL.from_pretrained(source / "vae")
        elif model_dir is not None:
            vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", torch_dtype=torch.float32)
        else:
            raise ValueError(
                f"no trained VAE in {source}; run stage 'vae' first or pass resume=DIR (a run or model folder)"
            )
        vae = components["vae"] = vae.to(dev).eval()
        if source != ckpt:  # this run's folder must be enough to resume from in turn
            vae.save_pretrained(ckpt / "vae")
    vae.requires_grad_(False)

    if stage in ("unet", "all"):
        state_path = source / "unet_state.pt"
        state = torch.load(state_path, weights_only=False) if stage == "unet" and state_path.exists() else None
        if state is None and stage == "unet" and model_dir is not None:
            state = _state_from_model_dir(model_dir, components)
            log(f"continuing from the fp16 model in {model_dir} (step {state['step']}, fresh optimizer)")

        # 3. Stage (b): latents of a fixed dataset, encoded once and cached
        vae.to(dev)
        cache = source / "latents.pt"
        if cache.exists() and stage == "unet" and two_object_share is None:
            data = torch.load(cache)
            latents, captions = data["latents"], data["captions"]
        else:
            t0 = time.time()
            latents, captions = encode_dataset(
                vae, cfg.num_latents, seed + 1, quiet=quiet, two_object_share=two_object_share
            )
            log(f"encoded {len(captions)} scenes in {time.time() - t0:.0f} s, latent std {latents.float().std():.3f}")
        torch.save({"latents": latents, "captions": captions}, ckpt / "latents.pt")
        ids = tokenize(components["tokenizer"], captions)

        # 4. Stage (c): UNet + text encoder, continued from the checkpoint (read before the latents: a model
        #    of another config is refused at once; neither step draws from torch's generator between them)
        if state is not None:
            components["unet"].load_state_dict(state["unet"])
            components["text_encoder"].load_state_dict(state["text_encoder"])
        ema = {k: copy.deepcopy(components[k]).eval().requires_grad_(False) for k in ("unet", "text_encoder")}
        if state is not None:
            ema["unet"].load_state_dict(state["ema_unet"])
            ema["text_encoder"].load_state_dict(state["ema_text_encoder"])
        for m in ema.values():
            m.to(dev)
        if deadline is not None:
            seconds, steps = max(0.0, deadline - reserve - time.time()), unet_steps
        else:
            seconds, steps = None, unet_steps if unet_steps is not None else cfg.unet_steps
        info = train_unet(
            components,
            ema,
            latents,
            ids,
            cfg,
            steps=steps,
            seconds=seconds,
            device=dev,
            seed=seed,
            start_step=state["step"] if state is not None else 0,
            optimizer_state=state["optimizer"] if state is not None else None,
            warmup_from=state["step"] if state is not None and state["optimizer"] is None else 0,
            anneal=anneal,
            quiet=quiet,
            samples_every=samples_every,
            samples_dir=output / "samples",
            log=log,
        )
        torch.save(
            {
                "unet": components["unet"].state_dict(),
                "text_encoder": components["text_encoder"].state_dict(),
                "ema_unet": ema["unet"].state_dict(),
                "ema_text_encoder": ema["text_encoder"].state_dict(),
                "optimizer": info.pop("optimizer"),
                "step": info["total_steps"],
            },
            ckpt / "unet_state.pt",
        )
        two_share = sum(" and a " in c for c in captions) / len(captions)
        history.append(
            {"stage": "unet", "device": str(dev), "num_latents": len(captions), "two_object_share": round(two_share, 3), **info}
        )

        # 5. Final figures with the EMA weights, sample grid, and the fp16 model folder
        final = dict(components, unet=ema["unet"], text_encoder=ema["text_encoder"])
        if "vae_psnr" not in figures:
            figures["vae_psnr"] = vae_psnr(vae, cfg.eval_scenes, HELD_OUT_SEED)
        figures["generation_accuracy"] = generation_accuracy(
            final, cfg.eval_captions, cfg.sample_steps, cfg.guidance_scale, seed=0
        )
        log(f"figures {figures}")
        _sample_grid(
            final,
            output / "samples" / f"final_step_{info['total_steps']:06d}.png",
            n=16,
            steps=cfg.sample_steps,
            guidance=cfg.guidance_scale,
            seed=0,
        )
        call = {
            "config": config, "device": device, "minutes": minutes, "vae_steps": vae_steps,
            "unet_steps": unet_steps, "batch_size": batch_size, "seed": seed, "stage": stage,
            "resume": str(resume) if resume else None, "threads": torch.get_num_threads(),
            "anneal": anneal, "two_object_share": two_object_share,
        }
        if sys.argv and sys.argv[0] not in ("-c", ""):
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])  # no local path of the executable
        else:  # called from Python: write the call itself
            command = f"train({str(output)!r}, " + ", ".join(f"{k}={v!r}" for k, v in call.items()) + ")"
        training_info = {
            "command": command,
            "call": call,
            "config_name": config,
            "config": asdict(cfg),
            "stages": history,
            "vae_steps": sum(h["steps"] for h in history if h["stage"] == "vae"),
            "unet_steps": info["total_steps"],
            "seconds": round(sum(h["seconds"] for h in history), 1),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "figures": figures,
        }
        save_model(final, output / "model", training_info=training_info)
        log(f"saved {output / 'model'}")
    (ckpt / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    figures["seconds"] = round(time.time() - t_start, 1)
    figures["sizes"] = sizes
    (output / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


@torch.no_grad()
def _save_vae_recon(vae, path: Path, n: int = 8) -> None:
    """Held-out scenes (top row) and their reconstructions (bottom row) as one PNG."""
    from PIL import Image

    images, _ = render_scenes(n, HELD_OUT_SEED)
    x = images_to_tensor(images).to(vae.device, vae.dtype)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    recon = to_uint8(recon).permute(0, 2, 3, 1).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([np.concatenate(list(images), 1), np.concatenate(list(recon), 1)], 0)).save(path)
