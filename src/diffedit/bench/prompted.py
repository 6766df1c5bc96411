"""ShapeEdit rows whose prompts are derived, not given: `ours_auto_source` (the source prompt from the zero-shot
captioner, the case's target) and `ours_instruction` (the source from the captioner, told that the image shows the object the
instruction names, and the target that caption rewritten by an instruction made from the case by a template: "make
the red circle blue / a square / a blue square").

Case i is captioned and edited with seed `seed + i`. A case whose prompts cannot be derived (the caption lacks the
object the instruction names, or equals the target) counts as an edit that changed nothing: the input, an empty mask.
"""

from __future__ import annotations

import numpy as np

from diffedit.prompts_auto import derive_prompts
from diffedit.stages.batch import same_prompt

__all__ = ["PROMPTED", "case_instruction", "prompted_edit"]

PROMPTED = ("ours_auto_source", "ours_instruction")


def case_instruction(case) -> str:
    """The instruction a person would give for a ShapeEdit case."""
    old, new = case.before, case.after
    if case.kind == "color":
        return f"make the {old.color} {old.shape} {new.color}"
    if case.kind == "shape":
        return f"make the {old.color} {old.shape} a {new.shape}"
    return f"make the {old.color} {old.shape} a {new.color} {new.shape}"


def _prompts(method: str, editor, case, seed: int) -> tuple[str, str | None]:
    """(source caption, target) as derive_prompts gives them, the target None when it cannot be derived."""
    if method == "ours_auto_source":
        derived = derive_prompts(editor, case.source_image, source="auto", target=case.target, captioner="shapeworld",
                                 seed=seed)
    else:
        try:
            derived = derive_prompts(editor, case.source_image, instruction=case_instruction(case), captioner="shapeworld",
                                     seed=seed)
        except ValueError:  # the caption lacks the object the instruction names: no source to show
            return "", None
    source, target = derived.source, derived.targets[0]
    return source, None if same_prompt(source, target) else target


def prompted_edit(method: str, editor, cases, *, seed: int, options, batch_size: int, bar, notes: dict):
    """(edited uint8 image, predicted bool mask) per case, as quality._edit_method returns them; `notes` gets how many
    captions were exact, how many targets equal the case's, and how many cases had no prompts."""
    out: list = [None] * len(cases)
    notes.update(caption_exact=0, target_exact=0, not_derived=0)
    for start in range(0, len(cases), batch_size):
        chunk = range(start, min(len(cases), start + batch_size))
        prompts = {i: _prompts(method, editor, cases[i], seed + i) for i in chunk}
        for i, (source, target) in prompts.items():
            notes["caption_exact"] += source == cases[i].source
            notes["target_exact"] += target == cases[i].target
            if target is None:
                notes["not_derived"] += 1
                out[i] = (cases[i].source_image, np.zeros(cases[i].mask.shape, bool))
        kept = [i for i in chunk if prompts[i][1] is not None]
        if kept:
            result = editor.edit([cases[i].source_image for i in kept], [prompts[i][0] for i in kept],
                                 [prompts[i][1] for i in kept], seed=[seed + i for i in kept], options=options)
            for i, im, m in zip(kept, result.images, result.mask_images):
                out[i] = (np.asarray(im), np.asarray(m) > 127)
        bar.update(len(chunk))
    return out
