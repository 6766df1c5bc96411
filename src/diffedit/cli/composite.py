"""`diffedit composite INPUT EDITED`: any editor's output pasted into its input inside a mask (compositing.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffedit.cli.checks import check_files, check_prompts, nothing_to_edit, read_image, read_user_mask, unchanged
from diffedit.cli.checks import write_outputs
from diffedit.cli.common import SET_HELP, default_output, edit_options, fail, load_editor, set_threads, warn
from diffedit.cli.edit import CONFIG_OPTION, DEFAULTS, DEVICE_OPTION, DTYPE_OPTION, MAX_PIXELS_OPTION, MODEL_OPTION
from diffedit.cli.edit import OVERWRITE_OPTION, QUIET_OPTION, SEED_OPTION, THREADS_OPTION

MASK, OUTPUT = "Mask", "Output"


def _mask_source(source: str | None, target: str | None, from_diff: bool, mask: Path | None) -> str:
    """The one mask source the flags ask for (exit 2 when they ask for none, several, or half of the prompts)."""
    if (source is None) != (target is None):
        fail("give both --source and --target (or --mask-from-diff, or --mask FILE)")
    chosen = [name for name, on in (("--source/--target", source is not None), ("--mask-from-diff", from_diff),
                                     ("--mask", mask is not None)) if on]
    if len(chosen) != 1:
        fail(f"give exactly one mask source: --source and --target, --mask-from-diff, or --mask FILE "
             f"(got {' and '.join(chosen) if chosen else 'none'})")
    return {"--source/--target": "prompts", "--mask-from-diff": "difference", "--mask": "user"}[chosen[0]]


def composite(
    image: Path = typer.Argument(..., help="Input image (any format PIL reads)."),
    edited: Path = typer.Argument(..., help="The same image after any editor (resized to the input's size if it differs)."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="What the input shows (mask from the prompts)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="What the edited image shows instead."),
    mask_from_diff: bool = typer.Option(
        False, "--mask-from-diff", help="No prompts: the mask is where EDITED differs from the input once its global "
        "colour change is removed.", rich_help_panel=MASK,
    ),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Paste inside this mask (white = paste).", rich_help_panel=MASK),
    seed: Optional[int] = SEED_OPTION,
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Composite image (default: <stem>_composite.png).", rich_help_panel=OUTPUT,
    ),
    mask_output: Optional[Path] = typer.Option(
        None, "--mask-output", help="Also write the mask (every pixel that took EDITED's value).", rich_help_panel=OUTPUT,
    ),
    threshold: float = typer.Option(
        DEFAULTS.mask_threshold, "--threshold", help="Prompt mask: threshold of the rescaled map, in [0, 1].",
        rich_help_panel=MASK,
    ),
    no_snap: bool = typer.Option(
        not DEFAULTS.edit_snap, "--no-snap", help="Prompt mask: keep the latent cells, not snapped to the images' edges.",
        rich_help_panel=MASK,
    ),
    diff_threshold: Optional[float] = typer.Option(
        None, "--diff-threshold", help="Difference mask: colour distance in [0, 1] beyond the colour fit (default 0.1).",
        rich_help_panel=MASK,
    ),
    diff_grow: Optional[int] = typer.Option(
        None, "--diff-grow", help="Difference mask: grow it by this many pixels (default 0).", rich_help_panel=MASK,
    ),
    match_colors: bool = typer.Option(
        False, "--match-colors", help="Undo EDITED's global colour change inside the mask too.", rich_help_panel=MASK,
    ),
    feather: int = typer.Option(
        DEFAULTS.feather, "--feather", help="Width in pixels of an opacity ramp outside the mask (0: a hard edge).",
        rich_help_panel=MASK,
    ),
    quiet: bool = QUIET_OPTION,
    model: Optional[str] = MODEL_OPTION,
    config: Optional[str] = CONFIG_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    settings: Optional[list[str]] = typer.Option(None, "--set", metavar="NAME=VALUE", help=SET_HELP),
) -> None:
    """Paste EDITED (any editor's output) into IMAGE inside a mask: every pixel outside stays the input's.

    The mask: the DiffEdit mask of --source -> --target, or (--mask-from-diff) where EDITED differs from IMAGE beyond
    a global colour change, or --mask FILE. Writes the composite and a JSON sidecar. Exit codes: 0 done; 2 a bad
    input (nothing written); 3 the mask is empty (outputs written, a warning says so); 4 out of memory.
    """
    from diffedit.compositing import CompositeOptions, composite_edit
    from diffedit.files import OutputFile

    # 1. Everything that can be wrong, before any model loads: the mask source, options, images, prompts, outputs
    kind = _mask_source(source, target, mask_from_diff, mask)
    flags = dict(mask_threshold=threshold, edit_snap=not no_snap, feather=feather, max_pixels=max_pixels)
    options = edit_options(flags, settings)
    given = {"diff_threshold": diff_threshold, "diff_grow": diff_grow, "match_colors": match_colors}
    try:
        extra = CompositeOptions(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        fail(str(e).replace("diff_", "--diff-").replace("match_colors", "--match-colors"))
    input_image = read_image(image, options.max_pixels)
    edited_image = read_image(edited, options.max_pixels)
    user_mask = read_user_mask(mask, input_image.size)
    if kind == "prompts":
        check_prompts(source, [target], seed)
    elif seed is not None or model is not None:
        warn(f"--seed and --model are used by a mask from prompts only; the {kind} mask ignores them")
    set_threads(threads)
    output = output or default_output(image, "composite")
    size = input_image.size
    outputs = [OutputFile(output, "output", "RGB", size)]
    outputs += [OutputFile(mask_output, "mask output", "L", size)] if mask_output else []
    outputs += [OutputFile(output.with_suffix(".json"), "sidecar")]
    existing = check_files(outputs, [image, edited, mask, model], overwrite)
    if kind == "prompts":
        nothing_to_edit(source, [target])
    elif user_mask is not None:
        nothing_to_edit("", [], mask, user_mask)

    # 2. The mask and the paste
    editor = load_editor(model, device, dtype, config, quiet) if kind == "prompts" else None
    result = composite_edit(input_image, edited_image, source, target, editor=editor, mask=user_mask,
                            from_difference=kind == "difference", seed=seed, options=options, composite_options=extra)

    # 3. The outputs, all or none, with a sidecar that reproduces them
    record = {"input": str(image), "edited": str(edited), "output": str(output), **result.to_dict()}
    if mask is not None:
        record["user_mask"] = str(mask)
    contents = [result.image] + ([result.mask_image] if mask_output else []) + [record]
    write_outputs(outputs, contents, existing, quiet)
    if not quiet:
        typer.echo(f"{result.mask_source} mask covers {result.coverage:.1%}" +
                   (f" (seed {result.seed})" if result.seed is not None else ""))
    empty = not bool(result.mask.any())
    for message in result.warnings if not empty else []:
        warn(message)
    if empty:
        unchanged(result.warnings)
