"""`diffedit edit`, `diffedit mask` and `diffedit demo`: the commands a user edits with."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffedit.cli.common import default_output, fail, indexed, load_editor, set_threads


def edit(
    image: Path = typer.Argument(..., help="Input image (any format PIL reads)."),
    source: str = typer.Option(..., "--source", "-s", help="What the image shows now ('' for nothing)."),
    target: list[str] = typer.Option(..., "--target", "-t", help="What it should show; repeat for several edits."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Edited image [default: <stem>_edited.png]."),
    mask_output: Optional[Path] = typer.Option(None, "--mask-output", help="Also write the binary mask PNG."),
    panel: Optional[Path] = typer.Option(None, "--panel", help="Also write a panel: input | mask overlay | output."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Use this mask (white = edit) instead of computing one."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Hub id, diffusers folder or .safetensors/.ckpt [default: embedded ShapeWorld model]."),
    config: Optional[str] = typer.Option(None, "--config", help="Diffusers config folder or hub id for a single-file checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the mask noises [default: random, saved in the sidecar]."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps over the full noise range."),
    strength: float = typer.Option(0.8, "--strength", "-r", help="Encoding ratio r in (0, 1]."),
    guidance: float = typer.Option(7.5, "--guidance", "-g", help="Classifier-free guidance scale."),
    extra_strength: list[float] = typer.Option([1.0], "--extra-strength", help="Also decode from this encoding ratio (repeat for several); the model keeps, per edit, the candidate its target prompt explains best."),
    noise_candidate: list[float] = typer.Option([], "--noise-candidate", help="Also decode from the top inverted level with this share of fresh noise inside the mask (repeatable; off by default)."),
    no_caption_candidate: bool = typer.Option(False, "--no-caption-candidate", help="Do not add the candidate inverted with the source prompt."),
    one_candidate: bool = typer.Option(False, "--one-candidate", help="The paper's single decoding at --strength: no extra candidates, no scoring (about 3x faster)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Mask threshold in [0, 1]: the composite's pixel mask; caps --decode-threshold."),
    decode_threshold: float = typer.Option(0.3, "--decode-threshold", help="Threshold of the latent mask decoding paints in; below --threshold it leaves room for new shapes (equal to it: the paper's single threshold)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="[default: the source prompt]"),
    mask_noises: int = typer.Option(10, "--mask-noises", help="Noises averaged for the mask."),
    whole_prompt_mask: bool = typer.Option(False, "--whole-prompt-mask", help="Map a target that changes several words as one change (the paper), not each change on its own."),
    smooth: float = typer.Option(1.0, "--smooth", help="Gaussian sigma of mask smoothing, latent cells (0: off)."),
    dilate: int = typer.Option(0, "--dilate", help="Grow the mask by this many latent cells."),
    no_composite: bool = typer.Option(False, "--no-composite", help="Keep the decoder's pixels outside the mask."),
    feather: int = typer.Option(2, "--feather", help="Width in pixels of the composite's opacity ramp inside the mask edge."),
    snap_edges: bool = typer.Option(False, "--snap-edges", help="Snap the pixel mask to the input's colour edges only (guided filter); implies --no-edit-snap."),
    edit_trim: float = typer.Option(0.12, "--edit-trim", help="With the edit snap: drop mask pixels whose input and edit colours match the background just around the region within this distance (RGB in [0, 1]; 0: off)."),
    no_edit_snap: bool = typer.Option(False, "--no-edit-snap", help="Composite inside the soft-trimmed latent cells instead of the mask snapped to the edges of input and edit."),
    max_pixels: int = typer.Option(2048 * 2048, "--max-pixels", help="Refuse larger images."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... [default: cuda if available]."),
    dtype: str = typer.Option("auto", "--dtype", help="fp32 | fp16 | bf16 [default: fp16 on cuda, fp32 on cpu]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch [default: torch's]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Edit IMAGE from --source to --target; writes the image, a JSON sidecar, and optionally mask and panel."""
    from diffedit import EditOptions
    from diffedit.images import load_image, make_panel, mask_overlay, save_image, save_json

    if not image.exists():
        fail(f"image file not found: {image}")
    try:
        options = EditOptions(
            num_inference_steps=steps, strength=strength, guidance_scale=guidance, mask_threshold=threshold,
            decode_threshold=decode_threshold, negative_prompt=negative_prompt, mask_noises=mask_noises, mask_smooth=smooth, mask_dilate=dilate,
            mask_per_change=not whole_prompt_mask, composite=not no_composite, feather=feather, mask_snap=snap_edges, max_pixels=max_pixels,
            edit_snap=not (no_edit_snap or snap_edges), edit_trim=edit_trim,
            extra_strengths=() if one_candidate else tuple(extra_strength),
            noise_candidates=() if one_candidate else tuple(noise_candidate),
            caption_candidate=not (one_candidate or no_caption_candidate),
        )
        load_image(image, max_pixels=max_pixels)  # fail on a bad image before loading the model
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
    input_image = load_image(image, max_pixels=max_pixels)
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
            typer.echo(f"kept candidate {', '.join(result.candidates[c] for c in result.chosen)} of {', '.join(result.candidates)}")


def mask_command(
    image: Path = typer.Argument(..., help="Input image."),
    source: str = typer.Option(..., "--source", "-s"),
    target: str = typer.Option(..., "--target", "-t"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Binary mask PNG [default: <stem>_mask.png]."),
    soft_output: Optional[Path] = typer.Option(None, "--soft-output", help="Also write the soft map PNG."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    config: Optional[str] = typer.Option(None, "--config"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    threshold: float = typer.Option(0.5, "--threshold"),
    mask_noises: int = typer.Option(10, "--mask-noises"),
    whole_prompt_mask: bool = typer.Option(False, "--whole-prompt-mask", help="Map a several-word change as one (the paper's map)."),
    smooth: float = typer.Option(1.0, "--smooth"),
    dilate: int = typer.Option(0, "--dilate"),
    snap_edges: bool = typer.Option(False, "--snap-edges", help="Snap the mask to the input's colour edges."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch [default: torch's]."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Compute the DiffEdit mask of IMAGE for --source -> --target and write it as a PNG."""
    from diffedit import EditOptions
    from diffedit.images import load_image, save_image, save_json

    if not image.exists():
        fail(f"image file not found: {image}")
    try:
        options = EditOptions(mask_threshold=threshold, mask_noises=mask_noises, mask_smooth=smooth, mask_dilate=dilate,
                              mask_per_change=not whole_prompt_mask,
                              mask_snap=snap_edges)
        load_image(image)
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
    model: Optional[str] = typer.Option(None, "--model", "-m", help="[default: the embedded ShapeWorld model]"),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch [default: torch's]."),
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
        typer.echo(f"kept candidate {result.candidates[result.chosen[0]]} of {', '.join(result.candidates)} (scored by the model)")
