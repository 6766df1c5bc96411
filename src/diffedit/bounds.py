"""The type and bounds of every EditOptions field: one table that validation, docs/options.md and the tests read.

Each field is checked on its own here (type, finiteness, range, and for tuples the number of items); the
checks that tie fields together (enough steps for a strength, a known method) stay in EditOptions. Upper bounds
sit where larger values only burn time or memory (the `why` of each says what grows), or where a range ends.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

__all__ = ["Bound", "BOUNDS", "MAX_PROMPT_CHARS", "check_field", "check_prompt_text", "bounds_table"]

MAX_PROMPT_CHARS = 10_000  # a CLIP text encoder reads 77 tokens (~300 characters); longer text only costs tokenizing


@dataclass(frozen=True)
class Bound:
    """kind: "int", "float", "bool", "str" or "floats" (a tuple of floats, each within low..high)."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded
    high_open: bool = False  # high itself is excluded
    optional: bool = False  # None is allowed
    max_items: int | None = None  # "floats": at most this many
    min_items: int = 0
    choices: tuple[str, ...] = ()
    why: str = ""
    shown: str = ""  # the allowed values in words, when the bounds above do not say it
    off_or_above: float | None = None  # values in (0, this) are refused: 0 means off, anything smaller is a mistake

    def describe(self) -> str:
        """The allowed values in words, as docs/options.md shows them."""
        if self.shown:
            return self.shown
        if self.off_or_above is not None:
            return f"0 (off), or a number in [{_num(self.off_or_above)}, {_num(self.high)}]"
        kind = {"int": "integer", "float": "number", "bool": "true or false", "str": "text", "floats": "list"}[self.kind]
        if self.choices:
            text = " or ".join(f'"{c}"' for c in self.choices)
        elif self.low is None and self.high is None:
            text = kind
        else:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open or self.high is None else "]"
            rng = f"{lo}{_num(self.low)}, {_num(self.high) if self.high is not None else 'inf'}{hi}"
            text = f"{kind} in {rng}" if self.kind != "floats" else f"numbers in {rng}"
        if self.kind == "floats":
            text += f", {self.min_items} to {self.max_items} of them"
        elif self.kind == "str" and not self.choices:
            text += f" of at most {MAX_PROMPT_CHARS} characters"
        return text + (" or null" if self.optional else "")


def _num(x: float | None) -> str:
    return "inf" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


UNIT = dict(low=0.0, high=1.0)
BOUNDS: dict[str, Bound] = {
    "method": Bound("str", shown="a registered method's name", why="stages/registry.py METHODS (docs/engine.md)"),
    "num_inference_steps": Bound("int", 1, 1000, why="a scheduler has 1000 training timesteps; more steps repeat them"),
    "strength": Bound("float", **UNIT, low_open=True, why="a fraction of the noise range"),
    "guidance_scale": Bound("float", 0.0, 100.0, why="1 turns guidance off; far above, the guided estimate overflows"),
    "negative_prompt": Bound("str", optional=True, why="text is read up to 77 tokens"),
    "inversion": Bound("str", choices=("ddim", "caption", "negative-prompt", "null-text", "direct", "ddpm"),
                       why="stages/registry.py INVERSIONS (docs/inversions.md)"),
    "inversion_prompt": Bound("str", why="text is read up to 77 tokens"),
    "extra_strengths": Bound("floats", **UNIT, low_open=True, max_items=8, why="each is one more decoding"),
    "caption_candidate": Bound("bool"),
    "caption_strength": Bound("float", **UNIT, low_open=True, optional=True, why="a fraction of the noise range"),
    "inpaint_candidate": Bound("bool"),
    "inpaint_pixel_hole": Bound("bool"),
    "inpaint_source": Bound("bool", optional=True),
    "inpaint_threshold": Bound("float", 0.0, 1.0, optional=True, why="the map is rescaled to [0, 1]"),
    "rerank_noises": Bound("int", 1, 64, why="UNet rows of the scoring grow with it"),
    "rerank_levels": Bound("floats", **UNIT, high_open=True, min_items=1, max_items=16,
                           why="fractions of the training timesteps; UNet rows of the scoring grow with their number"),
    "mask_source": Bound("str", choices=("noise", "attention", "both"), optional=True,
                         why="stages/registry.py MASK_SOURCES; null: the method's own (docs/engine.md)"),
    "mask_noises": Bound("int", 1, 64, why="UNet rows (and memory, unchunked) of the mask pass grow with it"),
    "mask_strength": Bound("float", **UNIT, low_open=True, why="a fraction of the noise range"),
    "mask_reference": Bound("str", optional=True, why="text is read up to 77 tokens"),
    "mask_threshold": Bound("float", **UNIT, why="the map is rescaled to [0, 1]"),
    "decode_threshold": Bound("float", **UNIT, optional=True, why="the map is rescaled to [0, 1]"),
    "mask_per_change": Bound("bool"),
    "mask_smooth": Bound("float", 0.0, 32.0, off_or_above=0.01,
                         why="a wider blur only flattens the map and costs more; below 0.01 it blurs nothing (1e-40: NaN)"),
    "mask_dilate": Bound("int", 0, 64, why="the dilation's window grows with its square"),
    "mask_batch_size": Bound("int", 1, 65536, optional=True, why="a chunk larger than the rows is all at once"),
    "composite": Bound("bool"),
    "edit_snap": Bound("bool"),
    "edit_trim": Bound("float", 0.0, 2.5, why="colour distances over 6 channels in [0, 1] end at 2.45: above, all is trimmed"),
    "edit_cover": Bound("float", 0.0, 1.8, why="colour distances over 3 channels in [0, 1] end at 1.73: above, nothing grows"),
    "edit_spill": Bound("int", 0, 16, why="a sliver past 32 px is no longer a pixel-off edge"),
    "feather": Bound("int", 0, 16, why="the ramp's cost grows with the cube of its width (16 px: ~1 s at 512 x 512)"),
    "max_pixels": Bound("int", 1, 2**26, optional=True,
                        why="8192 x 8192: an edit's memory grows with the pixels (null: PIL's 179-megapixel bomb check only)"),
    "cross_replace": Bound("float", **UNIT, why="a fraction of the decoding's steps"),
    "self_replace": Bound("float", **UNIT, why="a fraction of the decoding's steps"),
    "reweight": Bound("str", shown='"word=factor ..." with factors in [0, 10], or ""',
                      why="attention scaled further takes a layer far outside what it was trained on"),
    "local_blend": Bound("bool"),
    "blend_threshold": Bound("float", **UNIT, why="the maps are scaled to a maximum of 1"),
    "noise_candidates": Bound("floats", **UNIT, low_open=True, max_items=8, why="each is one more decoding"),
    "rerank_unconditional": Bound("float", 0.0, 100.0, why="a weight; far above, the scores overflow"),
    "mask_clamp": Bound("str", choices=("quantile", "mean_ratio")),
    "mask_quantile": Bound("float", **UNIT, low_open=True, why="a quantile"),
    "mask_mean_ratio": Bound("float", 0.01, 1000.0, why="a multiple of the mean: below 0.01 or above 1000 the mask is empty"),
    "mask_per_image": Bound("bool"),
    "mask_refine": Bound("bool"),
    "mask_snap": Bound("bool"),
}


def _number(name: str, value: Any, bound: Bound, what: str) -> float:
    """A finite real number within the bound, or a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")
    lo, hi = bound.low, bound.high
    if bound.off_or_above is not None and 0 < value < bound.off_or_above:
        raise ValueError(f"{what} must be 0 (off) or at least {_num(bound.off_or_above)}, got {value:g}")
    if lo is not None and (value < lo or (bound.low_open and value == lo)):
        raise ValueError(f"{what} must be {'>' if bound.low_open else '>='} {_num(lo)}, got {_num(value)}")
    if hi is not None and (value > hi or (bound.high_open and value == hi)):
        because = f" ({bound.why})" if bound.why else ""
        raise ValueError(f"{what} must be {'<' if bound.high_open else '<='} {_num(hi)}{because}, got {_num(value)}")
    return value


def check_prompt_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{what} has {len(value)} characters, above the limit of {MAX_PROMPT_CHARS} (the text encoder reads 77 tokens)"
        )
    return value


def check_field(name: str, value: Any) -> Any:
    """The field's value, normalised (numpy scalars to Python, lists to tuples, ints in float fields to floats),
    or a ValueError that names the field, the allowed range and the value."""
    bound = BOUNDS[name]
    if value is None and bound.optional:
        return None
    if bound.kind == "bool":
        if type(value).__name__ not in ("bool", "bool_"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return bool(value)
    if bound.kind == "str":
        if bound.choices and value not in bound.choices:
            raise ValueError(f"{name} must be {bound.describe()}, got {value!r}")
        return check_prompt_text(value, name)
    if bound.kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(_number(name, int(value), bound, name))
    if bound.kind == "float":
        return _number(name, value, bound, name)
    items = (value,) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value
    if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__iter__"):
        raise ValueError(f"{name} must be a list of numbers, got {value!r}")
    items = tuple(items)
    if not bound.min_items <= len(items) <= bound.max_items:
        raise ValueError(f"{name} must hold {bound.min_items} to {bound.max_items} numbers ({bound.why}), got {len(items)}")
    return tuple(_number(name, v, bound, f"every item of {name}") for v in items)


def bounds_table() -> str:
    """The Markdown table of docs/options.md's "Bounds" section (tests/test_robust.py checks the doc against it)."""
    rows = ["| field | allowed | why the bound |", "|---|---|---|"]
    rows += [f"| `{name}` | {b.describe()} | {b.why or '-'} |" for name, b in BOUNDS.items()]
    return "\n".join(rows)
