"""`diffedit edit --source auto` and `--instruction`: their options, their checks before a model loads, and the prompts
derived once it has (diffedit.prompts_auto)."""

from __future__ import annotations

from pathlib import Path

import typer

from diffedit.cli.checks import nothing_to_edit
from diffedit.cli.common import fail

__all__ = ["INSTRUCTION_OPTION", "CAPTIONER_OPTION", "plan_prompts", "derive_cli_prompts"]

AUTO, ZERO_SHOT = "auto", "shapeworld"  # prompts_auto's, without importing torch before the checks

INSTRUCTION_OPTION = typer.Option(
    None, "--instruction", help="Instead of --target: 'make the red circle blue', 'turn the circle into a square'... "
    "(ShapeWorld captions; the source is captioned unless --source is given). docs/prompts.md",
)
CAPTIONER_OPTION = typer.Option(
    None, "--captioner", help="For --source auto: a local transformers image-to-text folder (BLIP), or 'shapeworld' "
    "(the zero-shot captioner; the default with the embedded model).",
)


def plan_prompts(source: str | None, targets: list[str], instruction: str | None, captioner: str | None):
    """Before the model loads (exit 2): one of --target and --instruction, a readable instruction, an existing
    captioner folder. Returns (source, targets) to check as text: "auto" and [instruction] where they are derived."""
    from diffedit.instructions import parse_instruction

    if instruction is not None and targets:
        fail("give --target or --instruction, not both")
    if instruction is None and not targets:
        fail("give --target (repeatable) or --instruction")
    if source is None and instruction is None:
        fail("give --source, or --source auto to caption the image")
    if instruction is not None:
        try:
            parse_instruction(instruction)
        except ValueError as e:
            fail(str(e))
    if captioner not in (None, ZERO_SHOT) and not Path(captioner).is_dir():
        fail(f"--captioner {captioner}: not a folder (a local transformers image-to-text model, or 'shapeworld')")
    return source or AUTO, [instruction] if instruction is not None else targets


def derive_cli_prompts(editor, image, source: str, targets: list[str], instruction: str | None, captioner: str | None,
                       seed: int | None, quiet: bool) -> tuple[str, list[str], dict | None]:
    """(source, targets, the sidecar's "prompts" record or None) once the editor is loaded; exit 2 when the caption or
    the instruction fails, exit 3 when the derived target equals the source."""
    if source != AUTO and instruction is None:
        return source, targets, None
    from diffedit.captioning import ImageToTextCaptioner
    from diffedit.prompts_auto import derive_prompts

    try:
        if captioner not in (None, ZERO_SHOT):
            captioner = ImageToTextCaptioner.from_pretrained(captioner, device=editor.device)
        derived = derive_prompts(editor, image, source=source, target=None if instruction else targets,
                                 instruction=instruction, captioner=captioner, seed=seed or 0)
    except (ValueError, OSError) as e:
        fail(str(e))
    nothing_to_edit(derived.source, derived.targets)
    if not quiet:
        typer.echo(f"source ({derived.record['source_from']}): {derived.source}")
        for t in derived.targets:
            typer.echo(f"target ({derived.record['target_from']}): {t}")
    return derived.source, derived.targets, derived.record
