"""Any editor's output, composited (issue 25): `composite_edit(input, edited, source, target, editor=...)`.

An instruction editor that repaints the whole image (and often shifts its colours) changes pixels it was not asked
to. `composite_edit` pastes its output EDITED into INPUT inside a mask, so that every pixel outside stays INPUT's,
bit for bit. The mask is, by choice:
  - "prompts": the DiffEdit mask of INPUT for source -> target (`DiffEditor.mask`), snapped to the edges of INPUT
    and EDITED together as an edit's composite is (stages/finishing.snap_to_edit);
  - "difference": where EDITED differs from INPUT once its global colour change is removed (paste.difference_mask);
    no model, no prompts;
  - "user": a mask image (white = paste).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .images import ImageInput, from_uint8, load_image, load_mask
from .paste import difference_mask, fit_colors, match_size, paste, undo_colors
from .results import EditOptions, resolve_options
from .stages.batch import describe_prompt
from .stages.finishing import snap_to_edit

if TYPE_CHECKING:
    from .editor import DiffEditor

__all__ = ["CompositeOptions", "CompositeResult", "composite_edit"]

MASK_SOURCES = ("prompts", "difference", "user")


@dataclass(frozen=True)
class CompositeOptions:
    """What `composite_edit` adds to EditOptions (whose mask pass, edit snap and feather it uses as an edit does)."""

    diff_threshold: float = 0.1  # difference mask: colour distance (largest channel, in [0, 1]) beyond the colour fit
    diff_speck: float = 0.001  # difference mask: drop pieces smaller than this fraction of the image
    diff_grow: int = 0  # difference mask: grow it by this many pixels (its smoothing already reaches ~1 px past edges)
    match_colors: bool = False  # undo EDITED's global colour change inside the mask too (else its pixels as they are)

    def __post_init__(self) -> None:
        for name, low, high in (("diff_threshold", 0.0, 1.0), ("diff_speck", 0.0, 1.0), ("diff_grow", 0, 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        if not isinstance(self.diff_grow, int):
            raise ValueError(f"diff_grow must be an integer, got {self.diff_grow!r}")
        if not isinstance(self.match_colors, bool):
            raise ValueError(f"match_colors must be true or false, got {self.match_colors!r}")


@dataclass
class CompositeResult:
    """INPUT with EDITED pasted inside the mask, and everything that reproduces it."""

    image: Image.Image  # the composite, INPUT's size; outside `mask` INPUT's pixels bit for bit
    mask: torch.Tensor  # (H, W) bool: every pixel that took (some of) EDITED's value
    mask_source: str  # "prompts", "difference" or "user"
    options: CompositeOptions
    edit_options: EditOptions  # the mask pass (prompts), the edit snap (prompts) and the feather (all)
    source: str | None = None
    target: str | None = None
    seed: int | None = None  # the mask pass's seed (prompts)
    model: str | None = None
    color_fit: torch.Tensor | None = None  # (4, 3): edited ~ [input, 1] @ color_fit (difference, or match_colors)
    resized_from: tuple[int, int] | None = None  # EDITED's own (W, H) when it was resized to INPUT's
    warnings: list[str] = field(default_factory=list)

    @property
    def mask_image(self) -> Image.Image:
        """The mask as a binary "L" image (0 / 255)."""
        return Image.fromarray(self.mask.numpy().astype("uint8") * 255, mode="L")

    @property
    def coverage(self) -> float:
        """Fraction of INPUT's pixels that took EDITED's."""
        return float(self.mask.float().mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the mask's source, prompts, seed, options (EditOptions in full for a mask from prompts, else
        the feather alone: nothing else of them applies), coverage, colour fit, resize, warnings."""
        return {
            "mask_source": self.mask_source, "source": self.source, "target": self.target, "seed": self.seed,
            "model": self.model, "coverage": self.coverage, "options": asdict(self.options),
            "edit_options": (self.edit_options.to_dict() if self.mask_source == "prompts"
                             else {"feather": self.edit_options.feather}),
            "color_fit": None if self.color_fit is None else self.color_fit.tolist(),
            "resized_from": None if self.resized_from is None else list(self.resized_from), "warnings": list(self.warnings),
        }


def _mask_source(source, target, mask, from_difference: bool, editor) -> str:
    """Which mask the arguments ask for; a ValueError saying what to give when they ask for none or several."""
    prompts = source is not None or target is not None
    if prompts and (source is None or target is None):
        raise ValueError("give both a source and a target prompt (or from_difference=True, or a mask)")
    chosen = [name for name, on in zip(MASK_SOURCES, (prompts, from_difference, mask is not None)) if on]
    if len(chosen) != 1:
        given = " and ".join(chosen) if chosen else "none"
        raise ValueError(f"give exactly one mask source: source and target prompts, from_difference=True, or a mask "
                         f"(got {given})")
    if chosen[0] == "prompts" and editor is None:
        raise ValueError("a mask from prompts needs editor= a DiffEditor (or use from_difference=True)")
    return chosen[0]


def _prompt_mask(editor: "DiffEditor", image: Image.Image, edited: torch.Tensor, source, target, seed, options):
    """(pixel mask (H, W), MaskResult): the DiffEdit mask of INPUT, snapped to the edges of INPUT and EDITED."""
    result = editor.mask(image, source, target, seed=seed, options=options)
    pixel = result.pixel[0]
    if options.edit_snap:
        original = from_uint8(torch.from_numpy(np.array(image, dtype=np.uint8))).permute(2, 0, 1)[None]  # (1, 3, H, W) in [-1, 1]
        guide_edit = from_uint8(edited).unsqueeze(0)
        pixel = snap_to_edit(result.soft, result.mask, original, guide_edit, options.mask_threshold, options.edit_trim,
                             editor.vae_scale_factor, editor.device, cover=options.edit_cover,
                             spill=options.edit_spill)[0]
    return pixel, result


def _user_mask(mask: ImageInput, size: tuple[int, int]) -> np.ndarray:
    """A user's mask as (H, W) bool: a bool array as it is, anything else read as an image (white = paste)."""
    if isinstance(mask, np.ndarray) and mask.dtype == bool:
        if mask.shape != (size[1], size[0]):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}")
        return mask
    return load_mask(mask, size)


def composite_edit(
    image: ImageInput,
    edited: ImageInput,
    source: str | None = None,
    target: str | None = None,
    *,
    editor: "DiffEditor | None" = None,
    mask: ImageInput | None = None,
    from_difference: bool = False,
    seed: int | None = None,
    options: EditOptions | None = None,
    composite_options: CompositeOptions | None = None,
    **overrides,
) -> CompositeResult:
    """Paste `edited` (any editor's output) into `image` inside one mask: of source -> target (needs `editor`), of
    where they differ (`from_difference=True`), or `mask` (white = paste). EDITED of another size is resized to
    INPUT's (a warning says so). Overrides: EditOptions fields (mask pass, edit_snap, feather) and CompositeOptions
    fields (diff_threshold, diff_speck, diff_grow, match_colors)."""
    # 1. Check inputs: one mask source, the options, both images (EDITED at INPUT's size)
    kind = _mask_source(source, target, mask, from_difference, editor)
    names = {f.name for f in fields(CompositeOptions)}
    composite_options = CompositeOptions(**{**asdict(composite_options or CompositeOptions()),
                                            **{k: v for k, v in overrides.items() if k in names}})
    options = resolve_options(options, {k: v for k, v in overrides.items() if k not in names})
    input_image = load_image(image, max_pixels=options.max_pixels)
    edited_image = load_image(edited, max_pixels=options.max_pixels)
    original_size = edited_image.size
    edited_image, note = match_size(edited_image, input_image.size)
    warnings = [note] if note else []
    pixels = torch.from_numpy(np.array(input_image, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W) uint8
    paint = torch.from_numpy(np.array(edited_image, dtype=np.uint8)).permute(2, 0, 1)

    # 2. The mask
    fit, mask_result = None, None
    if kind == "prompts":
        region, mask_result = _prompt_mask(editor, input_image, paint, source, target, seed, options)
        warnings += mask_result.warnings
    elif kind == "difference":
        c = composite_options
        region, fit = difference_mask(pixels, paint, threshold=c.diff_threshold, grow=c.diff_grow, speck=c.diff_speck)
    else:
        region = torch.from_numpy(_user_mask(mask, input_image.size))
    if not bool(region.any()):
        warnings.append("the mask is empty: the composite is the input unchanged")

    # 3. Paste, EDITED's global colour change undone first when asked
    if composite_options.match_colors:
        fit = fit if fit is not None else fit_colors(pixels, paint, tolerance=composite_options.diff_threshold, exclude=region)
        paint = undo_colors(paint, fit)
    out, touched = paste(pixels, paint, region, options.feather)
    return CompositeResult(
        image=Image.fromarray(out.permute(1, 2, 0).numpy()), mask=touched, mask_source=kind, options=composite_options,
        edit_options=options, source=None if source is None else describe_prompt(source),
        target=None if target is None else describe_prompt(target),
        seed=None if mask_result is None else mask_result.seed, model=None if editor is None else editor.name,
        color_fit=fit, resized_from=original_size if note else None, warnings=warnings,
    )
