"""What `edit`, `mask` and `demo` check before loading a model, and how they write their outputs as one set.

Before any model is loaded, every input that can be wrong (exit 2): the image (read and decoded once, its size
checked from the header first), the prompts, the seed, a user mask, the device, and every output path (format,
folder, collisions: diffedit.files.check_outputs). Then, still before the model, what would make the edit change
nothing (exit 3): a target equal to the source once case and spacing are ignored, an all-black mask. After the
edit, the outputs are written all or none (diffedit.files.write_files) with the user's umask.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from diffedit.cli.common import check_seed, fail, warn
from diffedit.cli.guard import EXIT_UNCHANGED

__all__ = ["read_image", "check_prompts", "read_user_mask", "nothing_to_edit", "check_files", "write_outputs", "panel_size",
           "unchanged"]


def read_image(image: Path, max_pixels: int | None):
    """The input as 8-bit RGB (exit 2 when it cannot be read or is outside the size limits)."""
    from diffedit.images import load_image

    try:
        return load_image(image, max_pixels=max_pixels)
    except (ValueError, OSError) as e:
        fail(str(e))


def unchanged(messages: list[str]) -> None:
    """Warn, one line each, and exit with code 3: the command ran (or need not run) but changes nothing."""
    for message in messages:
        warn(message)
    raise typer.Exit(EXIT_UNCHANGED)


def check_prompts(source: str, targets: list[str], seed: int | None) -> None:
    """Prompts and seed (exit 2: a prompt too long, an empty target, a seed out of range)."""
    from diffedit.bounds import check_prompt_text
    from diffedit.stages.batch import normalize_prompt

    check_seed(seed)
    try:
        check_prompt_text(source, "the source prompt")
        for t in targets:
            check_prompt_text(t, "the target prompt")
    except ValueError as e:
        fail(str(e))
    for t in targets:
        if not normalize_prompt(t):
            fail("target prompt is empty: say what the edited image should show")


def read_user_mask(mask: Path | None, size: tuple[int, int]):
    """A --mask as a bool array of the image's size (exit 2 when it cannot be read or has another size)."""
    if mask is None:
        return None
    from diffedit.images import load_mask

    try:
        return load_mask(mask, size)
    except (ValueError, OSError) as e:
        fail(f"--mask: {e}")


def nothing_to_edit(source: str, targets: list[str], mask: Path | None = None, user_mask=None) -> None:
    """Exit 3, before any work and after every other check, when the edit could change nothing: a target the text
    encoder reads as the source (same words once case and spacing are ignored), or an all-black --mask."""
    from diffedit.stages.batch import normalize_prompt

    messages = [f"target prompt {t!r} equals the source prompt {source!r} once case and spacing are ignored: "
                "nothing to edit, nothing written" for t in targets if normalize_prompt(t) == normalize_prompt(source)]
    if user_mask is not None and not user_mask.any():
        messages.append(f"the mask {mask} is all black (white = edit): nothing to edit, nothing written")
    if messages:
        unchanged(messages)


def panel_size(size: tuple[int, int], rows: int, cols: int, gap: int = 4) -> tuple[int, int]:
    """(W, H) of images.make_panel's grid of `rows` x `cols` images of `size`."""
    w, h = size
    return cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap


def check_files(outputs, inputs: list[Any], overwrite: bool) -> set[Path]:
    """Every output checked before the work (diffedit.files.check_outputs); exit 2 with the reason. Returns the
    outputs that exist already (they will be replaced)."""
    from diffedit.files import check_outputs

    files = [p for p in inputs if p is not None and Path(p).is_file()]  # a hub id is no file to protect
    try:
        return set(check_outputs(outputs, files, overwrite=overwrite))
    except ValueError as e:
        fail(str(e))


def strict_json(value: Any) -> Any:
    """`value` with every infinite or NaN float as the string "inf", "-inf" or "nan" (a PSNR of identical pixels is
    infinite): strict JSON has no such numbers, and a sidecar is read by other tools."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_outputs(outputs, contents: list[Any], existing: set[Path], quiet: bool) -> list[Path]:
    """Write every output (PIL images by their suffix, anything else as JSON), all or none; report each unless quiet."""
    from diffedit.files import image_format, write_files

    def writer(out, content):
        if out.mode is not None:
            fmt = image_format(out.path, out.mode, out.size)
            return lambda tmp: content.save(tmp, format=fmt)

        def write_json(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump(strict_json(content), f, indent=2, default=str, allow_nan=False)
                f.write("\n")

        return write_json

    paths = write_files([(out.path, writer(out, content)) for out, content in zip(outputs, contents)])
    if not quiet:
        for path in paths:
            typer.echo(f"wrote {path}" + (" (replaced the old file)" if path in existing else ""))
    return paths

