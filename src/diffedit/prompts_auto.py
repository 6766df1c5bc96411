"""Automatic prompts: the source prompt from a captioner (`source="auto"`), the target from an edit instruction.

`derive_prompts(editor, image, source="auto", instruction="make the red circle blue")` captions the image (with the
embedded model: the zero-shot ShapeWorld captioner of captioning.py; otherwise an image-to-text `captioner`), and
rewrites the caption by the instruction's rules (instructions.py). An instruction that names its object by colour and
shape tells the zero-shot captioner that the image shows it: the search keeps it in every caption it scores. What it
returns says how each prompt was made, for the sidecar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .captioning import caption_shapeworld
from .images import ImageInput
from .instructions import parse_instruction, rewrite_caption
from .loading import EMBEDDED_MODEL_NAME
from .shapeworld.world import parse_caption
from .stages.batch import describe_prompt

__all__ = ["AUTO", "DerivedPrompts", "derive_prompts", "caption_image"]

AUTO = "auto"  # the source prompt that asks for a caption
ZERO_SHOT = "shapeworld"  # the captioner that scores ShapeWorld captions with the editor's own model


@dataclass
class DerivedPrompts:
    """An edit's source and targets, and how they were made (`record`: the sidecar's "prompts")."""

    source: str
    targets: list[str]
    record: dict = field(default_factory=dict)


def caption_image(
    editor, image: ImageInput, captioner: str | Callable | None = None, *, seed: int = 0, shows: tuple[str, str] | None = None,
) -> tuple[str, dict]:
    """(caption, how it was made) of one image. captioner: a callable image -> str (ImageToTextCaptioner), "shapeworld"
    (the zero-shot captioner on the editor's model), or None: "shapeworld" with the embedded model, else an error.
    shows: a (colour, shape) the image is known to show (the object an instruction names), for the zero-shot captioner."""
    if captioner is None and editor.name != EMBEDDED_MODEL_NAME:
        raise ValueError("a source prompt of 'auto' needs a captioner with this model: an image-to-text model folder "
                         "(--captioner PATH, e.g. BLIP), or 'shapeworld' for a model trained on ShapeWorld")
    if captioner is None or captioner == ZERO_SHOT:
        found = caption_shapeworld(editor.components, image, seed=seed, shows=shows)
        return found.caption, {"captioner": "zero-shot shapeworld", "caption_seed": seed,
                               **({"caption_shows": " ".join(shows)} if shows else {}),
                               "caption_candidates": [[c, round(e, 6)] for c, e in found.candidates[:3]]}
    if not callable(captioner):
        raise ValueError(f"captioner must be 'shapeworld' or a callable image -> caption, got {captioner!r}")
    caption = captioner(image)
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"the captioner gave no caption for the image (got {caption!r})")
    return caption, {"captioner": getattr(captioner, "name", type(captioner).__name__)}


def derive_prompts(
    editor, image: ImageInput, *, source: str | None = None, target: str | list[str] | None = None,
    instruction: str | None = None, captioner: str | Callable | None = None, seed: int = 0,
    rewriter: Callable[[str, str], str] | None = None,
) -> DerivedPrompts:
    """The source and targets of an edit: `source` as given, or "auto" (default with an instruction) for a caption of
    the image; `target` as given, or the source rewritten by `instruction` (not both). ValueError for an instruction
    the rules cannot read or apply to the caption, unless a `rewriter(caption, instruction)` (a local language model:
    `Seq2SeqPrompter.rewrite`) is given, which then rewrites it."""
    if (target is None) == (instruction is None):
        raise ValueError("give a target prompt or an instruction (one of the two)")
    source = AUTO if source is None else source
    record: dict = {}
    if source == AUTO:
        named = _named(instruction, rewriter)
        shows = (named.color, named.shape) if named is not None and named.color and named.shape else None
        source, made = caption_image(editor, image, captioner, seed=seed, shows=shows)
        record.update(source_from="captioner", **made)
    else:
        record["source_from"] = "given"
    if instruction is not None:
        try:
            try:
                parse_caption(source)
            except ValueError:
                raise ValueError(f"an instruction rewrites a caption of the ShapeWorld grammar by rules, and the source "
                                 f"prompt {source!r} is not one: give the target prompt (or a language model)") from None
            targets = [rewrite_caption(source, instruction)]
            record.update(target_from="instruction", instruction=instruction)
        except ValueError:
            if rewriter is None:
                raise
            targets = [rewriter(source, instruction)]
            record.update(target_from="language model", instruction=instruction,
                          rewriter=getattr(getattr(rewriter, "__self__", None), "name", "a language model"))
    else:
        targets = [target] if isinstance(target, str) else list(target)
        record["target_from"] = "given"
    return DerivedPrompts(source, targets, {"source": source, "targets": [describe_prompt(t) for t in targets], **record})


def _named(instruction: str | None, rewriter) -> object | None:
    """The instruction read by the rules (None without one, or when a language model will read it instead)."""
    if instruction is None:
        return None
    try:
        return parse_instruction(instruction)
    except ValueError:
        if rewriter is None:
            raise
        return None
