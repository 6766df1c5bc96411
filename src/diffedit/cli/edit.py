"""`diffedit edit`, `diffedit mask` and `diffedit demo`: the commands a user edits with."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffedit import EditOptions
from diffedit.cli.auto_prompts import CAPTIONER_OPTION, INSTRUCTION_OPTION, PROMPT_LM_OPTION, SOURCE_SET_OPTION
from diffedit.cli.auto_prompts import TARGET_SET_OPTION, PromptRequest
from diffedit.cli.checks import check_files, check_prompts, nothing_to_edit, panel_size, read_image, read_user_mask
from diffedit.cli.checks import unchanged, write_outputs
from diffedit.cli.common import SET_HELP, check_seed, default_output, edit_options, indexed, load_editor, set_threads
from diffedit.cli.common import check_flow_decoder, embedded_model, fail, resolve_device, resolve_dtype
from diffedit.stages.registry import MASK_SOURCES, METHODS


EDIT, MASK, OUTPUT, MODEL, ADVANCED = "Edit", "Mask", "Output", "Model and device", "Advanced"
DEFAULTS = EditOptions()  # every default below is the library's: one place for them


def mask_source_flag(value: str | None, mask: Path | None) -> tuple[str | None, Path | None]:
    """--mask-source: (EditOptions.mask_source, user mask path): a registered source, or else a user mask's path (the
    --mask route); with --mask too, a one-line error."""
    if value is None or value in MASK_SOURCES:
        return value, mask
    if mask is not None:
        fail(f"--mask-source {value} and --mask {mask} both name a mask file: give one")
    return None, Path(value)

# options edit and mask share (typer reads an Option's settings, it does not change them)
FLOW_DECODER_OPTION = typer.Option(
    None, "--flow-decoder", help="Flow models (SD3, FLUX, shapeworld-flow): flowedit (default) | inverted (docs/flow.md).",
    rich_help_panel=EDIT,
)
MODEL_OPTION = typer.Option(
    None, "--model", "-m",
    help="Hub id, diffusers folder, .safetensors/.ckpt, or an embedded model: shapeworld (default), shapeworld-flow.",
    rich_help_panel=MODEL,
)
CONFIG_OPTION = typer.Option(
    None, "--config", help="Diffusers config folder or hub id for a single-file checkpoint.", rich_help_panel=MODEL,
)
INPAINT_OPTION = typer.Option(
    "auto", "--inpaint-model",
    help="Inpainting model (folder, .safetensors, hub id) whose UNet decodes one more candidate under the mask; "
    "'same': the model itself from fresh noise; 'none'; 'auto': the embedded inpainter with the embedded model.",
    rich_help_panel=MODEL,
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
    None, "--mask-noises", help=f"Noises averaged for the mask (default: the preset's; {DEFAULTS.mask_noises} by default).",
    rich_help_panel=MASK,
)
PRESET_OPTION = typer.Option(
    "default", "--preset", help="fast | default | quality: speed against quality (docs/benchmarks.md has their figures).",
    rich_help_panel=EDIT,
)
SMOOTH_OPTION = typer.Option(
    DEFAULTS.mask_smooth, "--smooth", help="Gaussian sigma of mask smoothing, latent cells (0: off).", rich_help_panel=MASK,
)
DILATE_OPTION = typer.Option(
    DEFAULTS.mask_dilate, "--dilate", help="Grow the mask by this many latent cells.", rich_help_panel=MASK,
)
MAX_PIXELS_OPTION = typer.Option(DEFAULTS.max_pixels, "--max-pixels", help="Refuse larger images.", rich_help_panel=MODEL)
OVERWRITE_OPTION = typer.Option(
    False, "--overwrite", help="Allow an output to replace an input file (the image, --mask).", rich_help_panel=OUTPUT,
)


def _prepare(image: Path, source: str, targets: list[str], seed, options, mask: Path | None, device, dtype, threads):
    """The inputs checked before the model loads (exit 2): the image (read once), prompts, seed, user mask, threads,
    device and dtype. Returns (input image, user mask array or None, device, dtype)."""
    input_image = read_image(image, options.max_pixels)
    check_prompts(source, targets, seed)
    user_mask = read_user_mask(mask, input_image.size)
    set_threads(threads)
    device = resolve_device(device)
    return input_image, user_mask, device, resolve_dtype(dtype, device)


def edit(
    image: Path = typer.Argument(..., help="Input image (any format PIL reads)."),
    source: Optional[str] = typer.Option(
        None, "--source", "-s", help="What the image shows now ('' for nothing; 'auto': a caption of the image).",
    ),
    target: Optional[list[str]] = typer.Option(None, "--target", "-t", help="What it should show; repeat for several edits."),
    instruction: Optional[str] = INSTRUCTION_OPTION,
    captioner: Optional[str] = CAPTIONER_OPTION,
    source_set: Optional[str] = SOURCE_SET_OPTION,
    target_set: Optional[str] = TARGET_SET_OPTION,
    prompt_lm: Optional[str] = PROMPT_LM_OPTION,
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
    preset: str = PRESET_OPTION,
    steps: Optional[int] = typer.Option(
        None, "--steps", help=f"DDIM steps over the full noise range (default: the preset's; {DEFAULTS.num_inference_steps} "
        "by default).", rich_help_panel=EDIT,
    ),
    strength: Optional[float] = typer.Option(
        None, "--strength", "-r",
        help=f"Encoding ratio r in (0, 1]: how far the image is inverted (default: the preset's; {DEFAULTS.strength} "
        "by default).",
        rich_help_panel=EDIT,
    ),
    guidance: float = typer.Option(
        DEFAULTS.guidance_scale, "--guidance", "-g", help="Classifier-free guidance scale of the decoding.", rich_help_panel=EDIT,
    ),
    negative_prompt: Optional[str] = typer.Option(
        DEFAULTS.negative_prompt, "--negative-prompt", help="What the decoding steers away from (default: the source prompt).",
        rich_help_panel=EDIT,
    ),
    inversion: Optional[str] = typer.Option(
        None, "--inversion",
        help="ddim | caption | negative-prompt | null-text | direct | ddpm: how the image is inverted (default: "
        f"{DEFAULTS.inversion}, the paper's; docs/inversions.md).",
        rich_help_panel=EDIT,
    ),
    method: Optional[str] = typer.Option(
        None, "--method", help=f"Which stages run: {' | '.join(METHODS)} (default: {DEFAULTS.method}; docs/engine.md).",
        rich_help_panel=EDIT,
    ),
    reweight: Optional[str] = typer.Option(
        None, "--reweight", metavar="WORD=FACTOR ...",
        help="Scale target words' attention, e.g. 'blue=2' (methods p2p, diffedit_p2p; docs/attention.md).",
        rich_help_panel=EDIT,
    ),
    one_candidate: bool = typer.Option(
        False, "--one-candidate",
        help="The paper's single decoding at --strength: no extra candidates, no scoring.",
        rich_help_panel=EDIT,
    ),
    flow_decoder: Optional[str] = FLOW_DECODER_OPTION,
    mask: Optional[Path] = typer.Option(
        None, "--mask", help="Use this mask (white = edit) instead of computing one.", rich_help_panel=MASK,
    ),
    mask_source: Optional[str] = typer.Option(
        None, "--mask-source", metavar="noise|attention|both|FILE",
        help="Where the mask comes from: the noise difference, the changed words' cross-attention (one pass), both "
        "combined, or a mask file (as --mask) (default: the method's; docs/engine.md).",
        rich_help_panel=MASK,
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
    inpaint_model: str = INPAINT_OPTION,
    config: Optional[str] = CONFIG_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    settings: Optional[list[str]] = SET_OPTION,
) -> None:
    """Edit IMAGE from --source to --target; writes the image, a JSON sidecar, and optionally mask and panel.

    Exit codes: 0 edited; 2 a bad input (nothing written); 3 nothing to edit (a warning says why); 4 out of memory
    or NaN/inf (nothing written). Every output is checked before the model loads and written all or none.
    """
    from diffedit.files import OutputFile
    from diffedit.images import make_panel, mask_overlay

    mask_source, mask = mask_source_flag(mask_source, mask)  # a FILE takes the --mask route
    flags = dict(
        num_inference_steps=steps, strength=strength, guidance_scale=guidance, negative_prompt=negative_prompt,
        inversion=inversion, mask_threshold=threshold, decode_threshold=decode_threshold, mask_noises=mask_noises,
        mask_smooth=smooth, mask_dilate=dilate, composite=not no_composite, feather=feather, max_pixels=max_pixels,
        method=method, reweight=reweight, mask_source=mask_source,
    )
    if one_candidate:
        flags.update(extra_strengths=(), noise_candidates=(), caption_candidate=False, inpaint_candidate=False)
    elif inpaint_model == "same":  # the plain model as an inpainter: decoded from fresh noise inside the mask
        flags.update(noise_candidates=(1.0,))
    request = PromptRequest(source, target or [], instruction, captioner, source_set, target_set, prompt_lm)
    source, target = request.check()  # --source auto, --instruction, prompt sets: cli/auto_prompts.py
    options, targets = edit_options(flags, settings, preset), list(target)
    input_image, user_mask, device, dtype = _prepare(image, source, targets, seed, options, mask, device, dtype, threads)
    output, n, size = output or default_output(image, "edited"), len(targets), input_image.size
    outputs = [OutputFile(indexed(output, i, n), "output", "RGB", size) for i in range(n)]
    outputs += [OutputFile(indexed(mask_output, i, n), "mask output", "L", size) for i in range(n)] if mask_output else []
    outputs += [OutputFile(panel, "panel", "RGB", panel_size(size, n, 3))] if panel else []
    outputs += [OutputFile(output.with_suffix(".json"), "sidecar")]
    existing = check_files(outputs, [image, mask, model], overwrite)
    nothing_to_edit(source, targets, mask, user_mask)
    check_flow_decoder(embedded_model(model), flow_decoder)
    editor = load_editor(model, device, dtype, config, quiet, inpaint_model)
    source, targets, prompts = request.derive(editor, input_image, seed, quiet)
    result = editor.edit(input_image, source, targets, mask=mask, seed=seed, options=options,
                         **({} if flow_decoder is None else {"decoder": flow_decoder}))
    contents = list(result.images) + (list(result.mask_images) if mask_output else [])
    if panel:
        contents.append(make_panel([[input_image, mask_overlay(input_image, m), im]
                                    for im, m in zip(result.images, result.mask_images)]))
    record = {"input": str(image), "outputs": [str(o.path) for o in outputs[:n]], **result.to_dict()}
    if mask is not None:
        record["user_mask"] = str(mask)
    if prompts is not None:
        record["prompts"] = prompts
    write_outputs(outputs, contents + [record], existing, quiet)
    if not quiet:
        typer.echo(f"seed {result.seed}; mask covers {', '.join(f'{m.float().mean():.1%}' for m in result.mask)}")
        if len(result.candidates) > 1:
            kept = ", ".join(result.candidates[c] for c in result.chosen)
            typer.echo(f"kept candidate {kept} of {', '.join(result.candidates)}")
    if result.warnings:
        unchanged(result.warnings)


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
    preset: str = PRESET_OPTION,
    threshold: float = typer.Option(
        DEFAULTS.mask_threshold, "--threshold", help="Mask threshold in [0, 1].", rich_help_panel=MASK,
    ),
    mask_source: Optional[str] = typer.Option(
        None, "--mask-source", metavar="noise|attention|both",
        help="The noise difference, the changed words' cross-attention (one pass), or both combined (default: the "
        "method's; docs/engine.md).",
        rich_help_panel=MASK,
    ),
    mask_noises: int = MASK_NOISES_OPTION,
    smooth: float = SMOOTH_OPTION,
    dilate: int = DILATE_OPTION,
    model: Optional[str] = MODEL_OPTION,
    config: Optional[str] = CONFIG_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    settings: Optional[list[str]] = SET_OPTION,
) -> None:
    """Compute the DiffEdit mask of IMAGE for --source -> --target and write it as a PNG (exit 3: the mask is empty)."""
    from diffedit.files import OutputFile

    flags = dict(mask_threshold=threshold, mask_noises=mask_noises, mask_smooth=smooth, mask_dilate=dilate,
                 max_pixels=max_pixels, mask_source=mask_source)
    options = edit_options(flags, settings, preset)
    input_image, _, device, dtype = _prepare(image, source, [target], seed, options, None, device, dtype, threads)
    output = output or default_output(image, "mask")
    outputs = [OutputFile(output, "mask output", "L", input_image.size)]
    outputs += [OutputFile(soft_output, "soft output", "L", input_image.size)] if soft_output else []
    outputs += [OutputFile(output.with_suffix(".json"), "sidecar")]
    existing = check_files(outputs, [image, model], overwrite)
    nothing_to_edit(source, [target])
    editor = load_editor(model, device, dtype, config, quiet)
    result = editor.mask(input_image, source, target, seed=seed, options=options)
    record = {"input": str(image), "source": source, "target": target, "seed": result.seed, "model": editor.name,
              "options": options.to_dict(), "mask_fraction": float(result.mask.float().mean()),
              "empty": result.empty[0], "warnings": result.warnings}
    contents = [result.mask_image] + ([result.soft_images[0]] if soft_output else []) + [record]
    write_outputs(outputs, contents, existing, quiet)
    if not quiet:
        typer.echo(f"seed {result.seed}, mask covers {result.mask.float().mean():.1%}")
    if result.warnings:
        unchanged(result.warnings)


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

    from diffedit.files import OutputFile
    from diffedit.images import make_panel, mask_overlay
    from diffedit.shapeworld.scoring import score_edit
    from diffedit.shapeworld.world import sample_edit

    check_seed(seed)
    set_threads(threads)
    device = resolve_device(device)
    case = sample_edit(np.random.default_rng(seed), kind="color", num_objects=1)
    size = case.source_image.shape[1::-1]
    names = {"input": "RGB", "mask": "L", "output": "RGB", "ground_truth": "RGB", "panel": "RGB", "json": None}
    outputs = [OutputFile(output_dir / (f"{name}.png" if mode else "result.json"), name, mode,
                          panel_size(size, 1, 4) if name == "panel" else size) for name, mode in names.items()]
    existing = check_files(outputs, [model], overwrite=False)
    editor = load_editor(model, device, "auto", None, quiet)
    result = editor.edit(case.source_image, case.source, case.target, seed=seed)
    source_image, target_image = Image.fromarray(case.source_image), Image.fromarray(case.target_image)
    panel = make_panel([[source_image, mask_overlay(source_image, result.mask_image), result.image, target_image]])
    scores = score_edit(np.asarray(result.image), case, np.asarray(result.mask_image) > 127)
    record = {"source": case.source, "target": case.target, "kind": case.kind, "scores": scores,
              "files": {o.what: str(o.path) for o in outputs[:-1]}, **result.to_dict()}
    write_outputs(outputs, [source_image, result.mask_image, result.image, target_image, panel, record], existing, True)
    typer.echo(f"edit: {case.source!r} -> {case.target!r}")
    for out in outputs:
        typer.echo(f"  {out.what:13s} {out.path}")
    typer.echo(
        f"mask IoU {scores['mask_iou']:.3f}, background PSNR {scores['background_psnr']:.1f} dB, "
        f"target PSNR {scores['target_psnr']:.1f} dB, edit success {scores['success']}"
    )
    if len(result.candidates) > 1:
        kept = result.candidates[result.chosen[0]]
        typer.echo(f"kept candidate {kept} of {', '.join(result.candidates)} (scored by the model)")
    if result.warnings:
        unchanged(result.warnings)
