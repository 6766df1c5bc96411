"""Train the ShapeWorld latent text-to-image model: VAE, then latents, then UNet + text encoder.

Stages (each writes what the next one needs under ``output/ckpt/``, so a GPU run can be split into
calls of a few minutes: ``stage="vae"`` then ``stage="unet", resume=output`` any number of times):

(a) VAE: AutoencoderKL on rendered scenes, L1 + L2 reconstruction and SD's small KL weight
    (Rombach et al. 2022, sec. 3 and appendix G); its ``scaling_factor`` is 1 / std of the latents.
(b) Latents: a fixed set of scenes encoded once (posterior mean x scaling factor) with captions.
(c) DDPM (Ho et al. 2020, eq. 14): epsilon prediction on SD's noise schedule, Min-SNR-5 loss
    weighting (Hang et al. 2023), 10 % empty captions for classifier-free guidance (Ho & Salimans
    2022), EMA of the UNet and text encoder weights for sampling and saving.

This module runs the stages in order; each stage's machinery lives in its own module: train_vae (a),
training_data (b), train_unet (c), with lr_schedule, training_log (log lines, sample grids) and
training_checkpoint (what a call continues from). The names callers used from here before
that split are re-exported below.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from diffedit.shapeworld.evaluate import generation_accuracy, vae_psnr
from diffedit.shapeworld.lr_schedule import WARMUP_STEPS, lr_factor
from diffedit.shapeworld.model import build_components, component_sizes, get_config, save_model
from diffedit.shapeworld.train_unet import SNR_GAMMA, diffusion_loss, train_unet
from diffedit.shapeworld.train_vae import HELD_OUT_SEED, compute_scaling_factor, save_vae_recon, train_vae, vae_loss
from diffedit.shapeworld.training_checkpoint import load_history, resume_model_dir, state_from_model_dir
from diffedit.shapeworld.training_data import encode_dataset, tokenize
from diffedit.shapeworld.training_log import Logger, sample_grid

STAGES = ("vae", "unet", "all")

_lr_factor = lr_factor  # the name tests import

__all__ = [
    "HELD_OUT_SEED",
    "SNR_GAMMA",
    "STAGES",
    "WARMUP_STEPS",
    "compute_scaling_factor",
    "diffusion_loss",
    "encode_dataset",
    "tokenize",
    "train",
    "train_unet",
    "train_vae",
    "vae_loss",
]


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
    model_dir = resume_model_dir(Path(resume)) if resume is not None else None
    log = Logger(quiet)
    t_start = time.time()
    deadline = t_start + 60 * minutes if minutes is not None else None
    reserve = 0.05 * 60 * minutes if minutes is not None else 0.0  # final evaluation and saving
    history = load_history(source, model_dir)
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
        save_vae_recon(vae, output / "samples" / "vae_recon.png")
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

        # 4. Stage (c): UNet + text encoder, continued from the checkpoint when there is one
        state_path = source / "unet_state.pt"
        state = torch.load(state_path, weights_only=False) if stage == "unet" and state_path.exists() else None
        if state is None and stage == "unet" and model_dir is not None:
            state = state_from_model_dir(model_dir, components)
            log(f"continuing from the fp16 model in {model_dir} (step {state['step']}, fresh optimizer)")
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
        sample_grid(
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
