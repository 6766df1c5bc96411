"""`diffedit shapeworld train`, `evaluate`, `train-inpaint` and `train-flow`: the embedded models' training and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from diffedit.cli.common import check_range, check_seed, fail, quiet_libraries, require, resolve_device

MAX_CASES = 100_000  # captions or scenes of an evaluation: each costs a generation or a round trip

shapeworld_app = typer.Typer(no_args_is_help=True, help="The embedded model's synthetic world: train and evaluate.")


@shapeworld_app.command("train")
def shapeworld_train(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the model, sample grids and logs."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-clock budget, split between the stages."),
    config: str = typer.Option("small", "--config", help="tiny | small | full (full: ~15 min on one H100)."),
    stage: str = typer.Option("all", "--stage", help="vae | unet | all: run one stage (GPU calls of <= 10 min)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Folder of an earlier stage to continue from."),
    vae_steps: Optional[int] = typer.Option(None, "--vae-steps"),
    unet_steps: Optional[int] = typer.Option(None, "--unet-steps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    samples_every: Optional[int] = typer.Option(None, "--samples-every", help="UNet steps between sample grids."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    anneal: bool = typer.Option(
        False, "--anneal", help="Cosine-decay the UNet learning rate to 10 % over this call (a last run).",
    ),
    two_object_share: Optional[float] = typer.Option(
        None, "--two-object-share", help="Share of two-object scenes in fresh training latents (default: 0.5, the world's own).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train the embedded ShapeWorld model (VAE, then UNet + text encoder on precomputed latents)."""
    from diffedit.shapeworld.train import train

    check_seed(seed)
    check_range(minutes, "--minutes", 0.01, 7 * 24 * 60)
    for value, flag in ((vae_steps, "--vae-steps"), (unet_steps, "--unet-steps"), (batch_size, "--batch-size"),
                        (samples_every, "--samples-every")):
        check_range(value, flag, 1, 10**9)
    check_range(two_object_share, "--two-object-share", 0.0, 1.0)
    if output.exists() and not output.is_dir():
        fail(f"--output {output} is a file, not a folder")
    device = resolve_device(device)
    try:
        figures = train(output, config=config, device=device, minutes=minutes, vae_steps=vae_steps,
                        unet_steps=unet_steps, batch_size=batch_size, seed=seed, quiet=quiet,
                        samples_every=samples_every, stage=stage, resume=resume, threads=threads,
                        anneal=anneal, two_object_share=two_object_share)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(json.dumps(figures, indent=2, default=str))


@shapeworld_app.command("evaluate")
def shapeworld_evaluate(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder (default: the embedded model)."),
    captions: int = typer.Option(200, "--captions", help="Captions sampled for generation accuracy."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps of generation and inversion."),
    guidance: float = typer.Option(7.5, "--guidance", help="Guidance of generation."),
    scenes: int = typer.Option(64, "--scenes", help="Held-out scenes for the VAE and inversion PSNR."),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """The embedded model's figures: generation accuracy, VAE PSNR, inversion-reconstruction PSNR (r = 1)."""
    import time

    import torch

    from diffedit.images import save_json
    from diffedit.loading import embedded_model_path
    from diffedit.shapeworld.evaluate import generation_accuracy, inversion_psnr, vae_psnr
    from diffedit.shapeworld.model import load_model

    require("scipy", "train", "shapeworld evaluate (its caption checker)")
    check_range(captions, "--captions", 1, MAX_CASES)
    check_range(scenes, "--scenes", 1, MAX_CASES)
    check_range(steps, "--steps", 1, 1000)
    check_range(guidance, "--guidance", 0.0, None)
    check_seed(seed)
    path = model or embedded_model_path()
    if not (Path(path) / "model_index.json").is_file():
        fail(f"no model folder at {path} (model_index.json missing)")
    if json_path is not None:
        from diffedit.cli.checks import check_files
        from diffedit.files import OutputFile

        check_files([OutputFile(json_path, "--json")], [], overwrite=False)
    quiet_libraries()
    device = resolve_device(device)
    components = load_model(path, device=device, dtype=torch.float32)
    start = time.perf_counter()
    figures = {"model": str(path), "device": device}
    figures["generation_accuracy"] = generation_accuracy(components, captions, steps, guidance, seed)
    figures["vae_psnr_db"] = vae_psnr(components["vae"], scenes, seed + 12345)
    figures["inversion_psnr_db"] = inversion_psnr(components, scenes, seed + 4242, steps=steps, strength=1.0)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    acc = figures["generation_accuracy"]
    typer.echo(f"generation accuracy {acc['overall']:.1%} (one object {acc['one_object']:.1%}, "
               f"two objects {acc['two_object']:.1%}; {captions} captions, {steps} steps, guidance {guidance})")
    typer.echo(f"VAE reconstruction PSNR {figures['vae_psnr_db']:.2f} dB ({scenes} held-out scenes)")
    typer.echo(f"DDIM inversion-reconstruction PSNR at r = 1.0: {figures['inversion_psnr_db']:.2f} dB")
    if json_path:
        save_json(figures, json_path)
        typer.echo(f"wrote {json_path}")


@shapeworld_app.command("train-inpaint")
def shapeworld_train_inpaint(
    output: Path = typer.Option(..., "--output", "-o", help="Run folder; a call continues the state found there."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-clock budget of this call."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Steps of this call (instead of --minutes)."),
    base: Optional[Path] = typer.Option(None, "--base", help="ShapeWorld model folder to widen (default: the embedded one)."),
    init: Optional[str] = typer.Option(None, "--init", help="First call: start from this inpainter (folder, 'embedded')."),
    examples: int = typer.Option(10_000, "--examples", help="Training examples encoded once (first call only)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(2e-4, "--lr", help="AdamW learning rate."),
    pixel_holes: float = typer.Option(0.0, "--pixel-holes", help="Share of edits holed at their pixels, not cells (first call)."),
    source_visible: float = typer.Option(0.0, "--source-visible", help="Share of edits shown unholed (first call)."),
    hole_weight: float = typer.Option(1.0, "--hole-weight", help="Loss weight of the mask's latent cells against the others."),
    edit_share: float = typer.Option(0.7, "--edit-share", help="Share of examples that are edits (first call)."),
    anneal: bool = typer.Option(False, "--anneal", help="Cosine-decay the learning rate to 10 % over this call (a last run)."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Fine-tune the embedded model's 9-channel inpainting UNet (issue 21); writes OUTPUT/model, resumable."""
    from diffedit.shapeworld.train_inpaint import train_inpaint

    check_seed(seed)
    check_range(minutes, "--minutes", 0.01, 7 * 24 * 60)
    for value, flag in ((steps, "--steps"), (examples, "--examples"), (batch_size, "--batch-size")):
        check_range(value, flag, 1, 10**9)
    check_range(lr, "--lr", 1e-8, 1.0)
    check_range(pixel_holes, "--pixel-holes", 0.0, 1.0)
    check_range(source_visible, "--source-visible", 0.0, 1.0)
    check_range(hole_weight, "--hole-weight", 1.0, 100.0)
    check_range(edit_share, "--edit-share", 0.0, 1.0)
    if (minutes is None) == (steps is None):
        fail("give exactly one of --minutes and --steps")
    if output.exists() and not output.is_dir():
        fail(f"--output {output} is a file, not a folder")
    quiet_libraries()
    try:
        figures = train_inpaint(output, base=base, init=init, minutes=minutes, steps=steps, examples=examples,
                                batch_size=batch_size, lr=lr, anneal=anneal, pixel_holes=pixel_holes,
                                source_visible=source_visible, hole_weight=hole_weight, edit_share=edit_share,
                                seed=seed,
                                threads=threads, quiet=quiet)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(json.dumps(figures, indent=2, default=str))


@shapeworld_app.command("train-flow")
def shapeworld_train_flow(
    output: Path = typer.Option(..., "--output", "-o", help="Run folder; a call continues the state found there."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-clock budget of this call."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Steps of this call (instead of --minutes)."),
    base: Optional[Path] = typer.Option(None, "--base", help="ShapeWorld model whose VAE and text encoder it uses "
                                        "(default: the embedded one)."),
    init: str = typer.Option("embedded", "--init", help="First call: embedded (the base's UNet weights) | scratch."),
    latents: int = typer.Option(8000, "--latents", help="Training scenes encoded once (first call only)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(3e-4, "--lr", help="AdamW learning rate."),
    anneal: bool = typer.Option(False, "--anneal", help="Cosine-decay the learning rate to 10 % over this call (a last run)."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Generation accuracy of the saved model."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train the ShapeWorld rectified-flow model (issue 25, docs/flow.md); writes OUTPUT/model, resumable."""
    from diffedit.shapeworld.train_flow import train_flow

    check_seed(seed)
    check_range(minutes, "--minutes", 0.01, 7 * 24 * 60)
    for value, flag in ((steps, "--steps"), (latents, "--latents"), (batch_size, "--batch-size")):
        check_range(value, flag, 1, 10**9)
    check_range(lr, "--lr", 1e-8, 1.0)
    if (minutes is None) == (steps is None):
        fail("give exactly one of --minutes and --steps")
    if output.exists() and not output.is_dir():
        fail(f"--output {output} is a file, not a folder")
    quiet_libraries()
    try:
        figures = train_flow(output, base=base, init=init, minutes=minutes, steps=steps, latents=latents,
                             batch_size=batch_size, lr=lr, anneal=anneal, seed=seed, threads=threads, quiet=quiet,
                             evaluate=evaluate)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(json.dumps(figures, indent=2, default=str))
