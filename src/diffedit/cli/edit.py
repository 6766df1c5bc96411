"""`diffedit edit`, `diffedit mask` and `diffedit demo`: the commands a user edits with."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffedit import EditOptions
from diffedit.cli.common import SET_HELP, default_output, edit_options, fail, indexed, load_editor, set_threads


EDIT, MASK, OUTPUT, MODEL, ADVANCED = "Edit", "Mask", "Output", "Model and device", "Advanced"
DEFAULTS = EditOptions()  # every default below is the library's: one place for them

# options edit and mask share (typer reads an Option's settings, it does not change them)
MODEL_OPTION = typer.Option(
    None, "--model", "-m", help="Hub id, diffusers folder or .safetensors/.ckpt (default: embedded ShapeWorld model).",
    rich_help_panel=MODEL,
)
CONFIG_OPTION = typer.Option(
    None, "--config", help="Diffusers config folder or hub id for a single-file checkpoint.", rich_help_panel=MODEL,
)
DEVICE_OPTION = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).", rich_help_panel=MODEL)
DTYPE_OPTION = typer.Option(
    "auto", "--dtype", help="fp32 | fp16 | bf16 (default: fp16 on cuda, fp32 on cpu).", rich_help_panel=MODEL,
)
THREADS_OPTION = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's).", rich_help_panel=MODEL)
SET_OPTION = typer.Option(None, "--set", metavar="NAME=VALUE", help=SET_HELP, rich_help_panel=ADVANCED)
SEED_OPTION = typer.Option(None, "--seed", help="Seed of the mask noises (default: random, saved in the sidecar).")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bars.", rich_help_panel=OUTPUT)
MASK_NOISES_OPTION = typer.Option(
    DEFAULTS.mask_noises, "--mask-noises", help="Noises averaged for the mask.", rich_help_panel=MASK,
)
SMOOTH_OPTION = typer.Option(
    DEFAULTS.mask_smooth, "--smooth", help="Gaussian sigma of mask smoothing, latent cells (0: off).", rich_help_panel=MASK,
)
DILATE_OPTION = typer.Option(
    DEFAULTS.mask_dilate, "--dilate", help="Grow the mask by this many latent cells.", rich_help_panel=MASK,
)


def edit(
    image: Path = typer.Argument(..., help="Input image (any format PIL reads)."),
    source: str = typer.Option(..., "--source", "-s", help="What the image shows now ('' for nothing)."),
    target: list[str] = typer.Option(..., "--target", "-t", help="What it should show; repeat for several edits."),
    seed: Optional[int] = SEED_OPTION,
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Edited image (default: <stem>_edited.png).", rich_help_panel=OUTPUT,
    ),
    mask_output: Optional[Path] = typer.Option(
        None, "--mask-output", help="Also write the binary mask PNG.", rich_help_panel=OUTPUT,
    ),
    panel: Optional[Path] = typer.Option(
        None, "--panel", help="Also write a panel: input | mask overlay | output.", rich_help_panel=OUTPUT,
    ),
    quiet: bool = QUIET_OPTION,
    steps: int = typer.Option(
        DEFAULTS.num_inference_steps, "--steps", help="DDIM steps over the full noise range.", rich_help_panel=EDIT,
    ),
    strength: float = typer.Option(
        DEFAULTS.strength, "--strength", "-r", help="Encoding ratio r in (0, 1]: how far the image is inverted.",
        rich_help_panel=EDIT,
    ),
    guidance: float = typer.Option(
        DEFAULTS.guidance_scale, "--guidance", "-g", help="Classifier-free guidance scale of the decoding.", rich_help_panel=EDIT,
    ),
    negative_prompt: Optional[str] = typer.Option(
        DEFAULTS.negative_prompt, "--negative-prompt", help="What the decoding steers away from (default: the source prompt).",
        rich_help_panel=EDIT,
    ),
    one_candidate: bool = typer.Option(
        False, "--one-candidate",
        help="The paper's single decoding at --strength: no extra candidates, no scoring (about 3x faster).",
        rich_help_panel=EDIT,
    ),
    mask: Optional[Path] = typer.Option(
        None, "--mask", help="Use this mask (white = edit) instead of computing one.", rich_help_panel=MASK,
    ),
    threshold: float = typer.Option(
        DEFAULTS.mask_threshold, "--threshold",
        help="Mask threshold in [0, 1]: the composite's pixel mask; caps --decode-threshold.", rich_help_panel=MASK,
    ),
    decode_threshold: float = typer.Option(
        DEFAULTS.decode_threshold, "--decode-threshold",
        help="Threshold of the latent mask decoding paints in; below --threshold it leaves room for new shapes "
        "(equal to it: the paper's single threshold).",
        rich_help_panel=MASK,
    ),
    mask_noises: int = MASK_NOISES_OPTION,
    smooth: float = SMOOTH_OPTION,
    dilate: int = DILATE_OPTION,
    no_composite: bool = typer.Option(
        not DEFAULTS.composite, "--no-composite", help="Keep the decoder's pixels outside the mask.", rich_help_panel=MASK,
    ),
    feather: int = typer.Option(
        DEFAULTS.feather, "--feather", help="Width in pixels of an opacity ramp outside the composite's mask (0: a hard edge).",
        rich_help_panel=MASK,
    ),
    model: Optional[str] = MODEL_OPTION,
    config: Optional[str] = CONFIG_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    max_pixels: int = typer.Option(DEFAULTS.max_pixels, "--max-pixels", help="Refuse larger images.", rich_help_panel=MODEL),
    settings: Optional[list[str]] = SET_OPTION,
) -> None:
    """Edit IMAGE from --source to --target; writes the image, a JSON sidecar, and optionally mask and panel."""
    from diffedit.images import load_image, make_panel, mask_overlay, save_image, save_json

    if not image.exists():
        fail(f"image file not found: {image}")
    flags = dict(
        num_inference_steps=steps, strength=strength, guidance_scale=guidance, negative_prompt=negative_prompt,
        mask_threshold=threshold, decode_threshold=decode_threshold, mask_noises=mask_noises, mask_smooth=smooth,
        mask_dilate=dilate, composite=not no_composite, feather=feather, max_pixels=max_pixels,
    )
    if one_candidate:
        flags.update(extra_strengths=(), noise_candidates=(), caption_candidate=False)
    options = edit_options(flags, settings)
    try:
        load_image(image, max_pixels=options.max_pixels)  # fail on a bad image before loading the model
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    set_threads(threads)
    editor = load_editor(model, device, dtype, config, quiet)
    try:
        result = editor.edit(image, source, list(target), mask=mask, seed=seed, options=options)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    output = output or default_output(image, "edited")
    n = len(result.images)
    written = []
    input_image = load_image(image, max_pixels=options.max_pixels)
    for i, (out_image, mask_image) in enumerate(zip(result.images, result.mask_images)):
        written.append(save_image(out_image, indexed(output, i, n)))
        if mask_output:
            written.append(save_image(mask_image, indexed(mask_output, i, n)))
    if panel:
        rows = [[input_image, mask_overlay(input_image, m), im] for im, m in zip(result.images, result.mask_images)]
        written.append(save_image(make_panel(rows), panel))
    sidecar = output.with_suffix(".json")
    record = {"input": str(image), "outputs": [str(indexed(output, i, n)) for i in range(n)], **result.to_dict()}
    if mask is not None:
        record["user_mask"] = str(mask)
    written.append(save_json(record, sidecar))
    if not quiet:
        for path in written:
            typer.echo(f"wrote {path}")
        typer.echo(f"seed {result.seed}; mask covers {', '.join(f'{m.float().mean():.1%}' for m in result.mask)}")
        if len(result.candidates) > 1:
            kept = ", ".join(result.candidates[c] for c in result.chosen)
            typer.echo(f"kept candidate {kept} of {', '.join(result.candidates)}")


def mask_command(
    image: Path = typer.Argument(..., help="Input image."),
    source: str = typer.Option(..., "--source", "-s", help="What the image shows now."),
    target: str = typer.Option(..., "--target", "-t", help="What it should show."),
    seed: Optional[int] = SEED_OPTION,
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Binary mask PNG (default: <stem>_mask.png).", rich_help_panel=OUTPUT,
    ),
    soft_output: Optional[Path] = typer.Option(
        None, "--soft-output", help="Also write the soft map PNG.", rich_help_panel=OUTPUT,
    ),
    quiet: bool = QUIET_OPTION,
    threshold: float = typer.Option(
        DEFAULTS.mask_threshold, "--threshold", help="Mask threshold in [0, 1].", rich_help_panel=MASK,
    ),
    mask_noises: int = MASK_NOISES_OPTION,
    smooth: float = SMOOTH_OPTION,
    dilate: int = DILATE_OPTION,
    model: Optional[str] = MODEL_OPTION,
    config: Optional[str] = CONFIG_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    settings: Optional[list[str]] = SET_OPTION,
) -> None:
    """Compute the DiffEdit mask of IMAGE for --source -> --target and write it as a PNG."""
    from diffedit.images import load_image, save_image, save_json

    if not image.exists():
        fail(f"image file not found: {image}")
    flags = dict(mask_threshold=threshold, mask_noises=mask_noises, mask_smooth=smooth, mask_dilate=dilate)
    options = edit_options(flags, settings)
    try:
        load_image(image, max_pixels=options.max_pixels)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    set_threads(threads)
    editor = load_editor(model, device, dtype, config, quiet)
    try:
        result = editor.mask(image, source, target, seed=seed, options=options)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    output = output or default_output(image, "mask")
    save_image(result.mask_image, output)
    if soft_output:
        save_image(result.soft_images[0], soft_output)
    save_json(
        {"input": str(image), "source": source, "target": target, "seed": result.seed, "model": editor.name,
         "options": options.to_dict(), "mask_fraction": float(result.mask.float().mean())},
        output.with_suffix(".json"),
    )
    if not quiet:
        typer.echo(f"wrote {output} (seed {result.seed}, mask covers {result.mask.float().mean():.1%})")


def demo(
    output_dir: Path = typer.Option(Path("diffedit-demo"), "--output-dir", "-o", help="Where to write the files."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scene and of the mask noises."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: the embedded ShapeWorld model."),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Draw a ShapeWorld scene, recolor one object with DiffEdit, write input, mask, output and a panel."""
    import numpy as np
    from PIL import Image

    from diffedit.images import make_panel, mask_overlay, save_image, save_json
    from diffedit.shapeworld.scoring import score_edit
    from diffedit.shapeworld.world import sample_edit

    case = sample_edit(np.random.default_rng(seed), kind="color", num_objects=1)
    set_threads(threads)
    editor = load_editor(model, device, "auto", None, quiet)
    result = editor.edit(case.source_image, case.source, case.target, seed=seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    source_image = Image.fromarray(case.source_image)
    paths = {
        "input": save_image(source_image, output_dir / "input.png"),
        "mask": save_image(result.mask_image, output_dir / "mask.png"),
        "output": save_image(result.image, output_dir / "output.png"),
        "ground_truth": save_image(Image.fromarray(case.target_image), output_dir / "ground_truth.png"),
        "panel": save_image(
            make_panel([[source_image, mask_overlay(source_image, result.mask_image), result.image,
                         Image.fromarray(case.target_image)]]),
            output_dir / "panel.png",
        ),
    }
    pred_mask = np.asarray(result.mask_image) > 127
    scores = score_edit(np.asarray(result.image), case, pred_mask)
    record = {"source": case.source, "target": case.target, "kind": case.kind, "scores": scores,
              "files": {k: str(v) for k, v in paths.items()}, **result.to_dict()}
    paths["json"] = save_json(record, output_dir / "result.json")
    typer.echo(f"edit: {case.source!r} -> {case.target!r}")
    for name, path in paths.items():
        typer.echo(f"  {name:13s} {path}")
    typer.echo(
        f"mask IoU {scores['mask_iou']:.3f}, background PSNR {scores['background_psnr']:.1f} dB, "
        f"target PSNR {scores['target_psnr']:.1f} dB, edit success {scores['success']}"
    )
    if len(result.candidates) > 1:
        kept = result.candidates[result.chosen[0]]
        typer.echo(f"kept candidate {kept} of {', '.join(result.candidates)} (scored by the model)")
