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
training_data (b), train_unet (c), with lr_schedule, training_log (log lines, sample grids),
training_checkpoint (what a call continues from and leaves behind), training_run (the call's arguments
and what they resolve to) and training_record (training.json). The names callers used from here before
that split are re-exported below.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from diffedit.shapeworld.evaluate import generation_accuracy, vae_psnr
from diffedit.shapeworld.lr_schedule import WARMUP_STEPS, lr_factor
from diffedit.shapeworld.model import build_components, component_sizes, save_model
from diffedit.shapeworld.train_unet import SNR_GAMMA, diffusion_loss, train_unet
from diffedit.shapeworld.train_vae import HELD_OUT_SEED, compute_scaling_factor, save_vae_recon, train_vae, vae_loss
from diffedit.shapeworld.training_checkpoint import load_trained_vae, load_unet_state, restore_weights, save_unet_state
from diffedit.shapeworld.training_data import encode_dataset, tokenize, two_object_share_of
from diffedit.shapeworld.training_log import sample_grid
from diffedit.shapeworld.training_record import training_info
from diffedit.shapeworld.training_run import STAGES, TrainingArgs, TrainingRun, start_run

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
    # 1. Check the inputs; set up torch and the folders; the time budget and the stages run so far
    args = TrainingArgs(
        output=output, config=config, device=device, minutes=minutes, vae_steps=vae_steps, unet_steps=unet_steps,
        batch_size=batch_size, seed=seed, quiet=quiet, samples_every=samples_every, stage=stage, resume=resume,
        threads=threads, anneal=anneal, two_object_share=two_object_share,
    )
    run = start_run(args)
    # 2. The components, their initial weights drawn from the seed just set
    components = build_components(run.cfg)
    sizes = component_sizes(components)
    run.log(f"config {config}: {sizes} threads {torch.get_num_threads()} device {run.dev}")
    figures: dict = {}
    # 3. Stage (a): train the VAE, or take the one an earlier stage trained
    vae = _vae_stage(run, components, figures) if stage in ("vae", "all") else _trained_vae(run, components)
    vae.requires_grad_(False)
    if stage in ("unet", "all"):
        # 4. Stage (b): latents of a fixed dataset, encoded once and cached; the checkpoint to continue from is read
        #    first, so that a model of another config is refused at once (neither draws from torch's generator)
        state = load_unet_state(run.source, run.model_dir, components, run.log) if stage == "unet" else None
        latents, captions = _latents_stage(run, vae)
        ids = tokenize(components["tokenizer"], captions)
        # 5. Stage (c): UNet + text encoder, continued from that checkpoint when there is one
        ema, info = _unet_stage(run, components, latents, ids, captions, state)
        # 6. Final figures with the EMA weights, sample grid, and the fp16 model folder
        _final_model(run, dict(components, unet=ema["unet"], text_encoder=ema["text_encoder"]), info, figures)
    # 7. This call's history beside the checkpoint, and its figures
    (run.ckpt / "history.json").write_text(json.dumps(run.history, indent=2) + "\n")
    figures["seconds"] = round(time.time() - run.t_start, 1)
    figures["sizes"] = sizes
    (run.output / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _vae_stage(run: TrainingRun, components: dict, figures: dict) -> AutoencoderKL:
    """Train the VAE (continuing the one in `resume` for stage "vae"), set its scaling factor, save it to
    ckpt/vae, record its PSNR in `figures` and a reconstruction PNG in samples/."""
    args, cfg = run.args, run.cfg
    vae = components["vae"]
    if args.stage == "vae" and (run.source / "vae").exists() and args.resume is not None:
        vae = components["vae"] = AutoencoderKL.from_pretrained(run.source / "vae")
    if args.minutes is not None:
        share = cfg.vae_time_frac if args.stage == "all" else 1.0
        seconds, steps = share * (60 * args.minutes - run.reserve), args.vae_steps
    else:
        seconds, steps = None, args.vae_steps if args.vae_steps is not None else cfg.vae_steps
    info = train_vae(vae, cfg, steps=steps, seconds=seconds, device=run.dev, seed=args.seed, quiet=args.quiet, log=run.log)
    info["scaling_factor"] = compute_scaling_factor(vae, cfg.scale_scenes)
    vae.save_pretrained(run.ckpt / "vae")
    run.history.append({"stage": "vae", "device": str(run.dev), **info})
    figures["vae_psnr"] = vae_psnr(vae, cfg.eval_scenes, HELD_OUT_SEED)
    run.log(f"vae psnr {figures['vae_psnr']:.2f} dB, scaling factor {info['scaling_factor']:.4f}")
    save_vae_recon(vae, run.output / "samples" / "vae_recon.png")
    return vae


def _trained_vae(run: TrainingRun, components: dict) -> AutoencoderKL:
    """The VAE an earlier stage trained, on the device; copied into this call's ckpt when it came from elsewhere."""
    vae = components["vae"] = load_trained_vae(run.source, run.model_dir).to(run.dev).eval()
    if run.source != run.ckpt:  # this run's folder must be enough to resume from in turn
        vae.save_pretrained(run.ckpt / "vae")
    return vae


def _latents_stage(run: TrainingRun, vae) -> tuple[torch.Tensor, list[str]]:
    """The training latents and captions: the cached set of `resume` for stage "unet" (unless a
    two_object_share asks for fresh ones), else freshly encoded; cached in this call's ckpt either way."""
    args = run.args
    vae.to(run.dev)
    cache = run.source / "latents.pt"
    if cache.exists() and args.stage == "unet" and args.two_object_share is None:
        data = torch.load(cache)
        latents, captions = data["latents"], data["captions"]
    else:
        t0 = time.time()
        latents, captions = encode_dataset(
            vae, run.cfg.num_latents, args.seed + 1, quiet=args.quiet, two_object_share=args.two_object_share
        )
        run.log(f"encoded {len(captions)} scenes in {time.time() - t0:.0f} s, latent std {latents.float().std():.3f}")
    torch.save({"latents": latents, "captions": captions}, run.ckpt / "latents.pt")
    return latents, captions


def _unet_stage(
    run: TrainingRun, components: dict, latents: torch.Tensor, ids: torch.Tensor, captions: list[str], state: dict | None
) -> tuple[dict, dict]:
    """Train UNet + text encoder (continuing `state`, read from `resume` for stage "unet") for the time left or
    the steps asked; save ckpt/unet_state.pt and append the stage to the history. Returns (EMA copies, info)."""
    args = run.args
    ema = restore_weights(components, state, run.dev)
    if run.deadline is not None:
        seconds, steps = max(0.0, run.deadline - run.reserve - time.time()), args.unet_steps
    else:
        seconds, steps = None, args.unet_steps if args.unet_steps is not None else run.cfg.unet_steps
    info = train_unet(
        components,
        ema,
        latents,
        ids,
        run.cfg,
        steps=steps,
        seconds=seconds,
        device=run.dev,
        seed=args.seed,
        start_step=state["step"] if state is not None else 0,
        optimizer_state=state["optimizer"] if state is not None else None,
        warmup_from=state["step"] if state is not None and state["optimizer"] is None else 0,
        anneal=args.anneal,
        quiet=args.quiet,
        samples_every=args.samples_every,
        samples_dir=run.output / "samples",
        log=run.log,
    )
    save_unet_state(run.ckpt / "unet_state.pt", components, ema, info.pop("optimizer"), info["total_steps"])
    two_share = two_object_share_of(captions)
    run.history.append(
        {"stage": "unet", "device": str(run.dev), "num_latents": len(captions), "two_object_share": round(two_share, 3), **info}
    )
    return ema, info


def _final_model(run: TrainingRun, final: dict, info: dict, figures: dict) -> None:
    """With the EMA weights (`final`): the VAE PSNR unless stage (a) ran here, the generation accuracy,
    a sample grid, and the fp16 model folder output/model with its training.json."""
    cfg = run.cfg
    if "vae_psnr" not in figures:
        figures["vae_psnr"] = vae_psnr(final["vae"], cfg.eval_scenes, HELD_OUT_SEED)
    figures["generation_accuracy"] = generation_accuracy(final, cfg.eval_captions, cfg.sample_steps, cfg.guidance_scale, seed=0)
    run.log(f"figures {figures}")
    sample_grid(
        final,
        run.output / "samples" / f"final_step_{info['total_steps']:06d}.png",
        n=16,
        steps=cfg.sample_steps,
        guidance=cfg.guidance_scale,
        seed=0,
    )
    save_model(final, run.output / "model", training_info=training_info(run, info["total_steps"], figures))
    run.log(f"saved {run.output / 'model'}")
