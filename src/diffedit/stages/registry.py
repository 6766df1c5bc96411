"""Stages by name: each kind of stage (mask sources, inverters, decoders, selectors, finishers) has one
protocol and a table of implementations, and a method is a choice of one stage of each kind.

A new method (an attention-controlled decoder, a null-text inverter, an inpainting UNet) is a class that
follows its kind's protocol, registered here by name with `@register(kind, name)`, and a `METHODS` entry;
the editor looks stages up by the names in `EditOptions.method`, never by branching on them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "KINDS", "METHODS", "INVERSIONS", "Method", "InversionKind", "register", "stage", "method", "inverter_of", "decoder_for",
    "MASK_SOURCES", "mask_of",
]

KINDS = ("mask", "inverter", "decoder", "selector", "finisher")
_TABLES: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str):
    """Class decorator: make a stage class available as `name` among stages of `kind`."""
    if kind not in _TABLES:
        raise ValueError(f"unknown stage kind {kind!r}; kinds: {', '.join(KINDS)}")

    def add(cls: type) -> type:
        _TABLES[kind][name] = cls
        cls.name = name
        return cls

    return add


def stage(kind: str, name: str) -> type:
    """The stage class registered as `name` for `kind`, or a ValueError listing the registered ones."""
    table = _TABLES[kind]
    if name not in table:
        raise ValueError(f"no {kind} stage named {name!r}; registered: {', '.join(sorted(table))}")
    return table[name]


def decoder_for(name: str, batch, options):
    """The decoder registered as `name`, built for one edit: by its class's `for_edit(batch, options)` when it has one
    (a decoder that reads the jobs' prompts and the options, as attention control does), else with no arguments."""
    cls = stage("decoder", name)
    return cls.for_edit(batch, options) if hasattr(cls, "for_edit") else cls()


@dataclass(frozen=True)
class Method:
    """A method is one stage of each kind, by name."""

    mask: str
    inverter: str
    decoder: str
    selector: str
    finisher: str
    inpaint: bool = True  # the inpainting candidate may decode (it paints a hole: a method that edits inside a mask)


METHODS: dict[str, Method] = {
    # DiffEdit (Couairon et al. 2023): noise-difference mask, DDIM inversion, masked DDIM decoding with
    # same-level blending; candidates scored by the model; edge-snapped pixel composite
    "diffedit": Method("noise_difference", "ddim", "masked_ddim", "model_score", "composite"),
    # DiffEdit decoding inside a mask from the changed words' cross-attention (one pass; issue 20)
    "diffedit_attention_mask": Method("cross_attention", "ddim", "masked_ddim", "model_score", "composite"),
    # Prompt-to-Prompt (Hertz et al. 2022) over DDIM inversion: source and target branches under attention control,
    # the source branch kept outside the changed words' attention (local blend); no mask, so no inpainting candidate
    "p2p": Method("whole", "ddim", "p2p", "model_score", "composite", inpaint=False),
    # DiffEdit's mask and same-level background blending around a Prompt-to-Prompt-controlled decoding
    "diffedit_p2p": Method("noise_difference", "ddim", "masked_p2p", "model_score", "composite"),
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


@dataclass(frozen=True)
class InversionKind:
    """An inversion (`EditOptions.inversion`): which inverter stage walks up, and with which prompt."""

    inverter: str  # the registered inverter stage ("ddim": the method's own)
    source_walk: bool  # walks with the source prompt; every candidate reads that one walk (the caption one included)
    guided: bool = False  # per-step state fitted to the decoding's guidance and negative prompt (stages/inverting.Guide)


INVERSIONS: dict[str, InversionKind] = {
    # the paper: DDIM with `inversion_prompt` (unconditional), plus the caption candidate's DDIM walk with the source
    "ddim": InversionKind("ddim", source_walk=False),
    # DDIM with the source prompt for every candidate (the paper's caption encoding)
    "caption": InversionKind("ddim", source_walk=True),
    # the caption inversion decoded with the source prompt as the negative one (Miyake et al. 2023): `caption` with
    # `negative_prompt` left at the source, named
    "negative-prompt": InversionKind("ddim", source_walk=True),
    # DDIM with the source prompt as the pivot, per-step unconditional embeddings optimised onto it (Mokady et al. 2023)
    "null-text": InversionKind("null_text", source_walk=True, guided=True),
    # DDIM with the source prompt, each step's drift from it added back while decoding (Ju et al. 2023)
    "direct": InversionKind("direct", source_walk=True, guided=True),
    # edit-friendly DDPM: levels drawn independently, per-step noise maps that retrace them (Huberman-Spiegelglas et al.)
    "ddpm": InversionKind("ddpm", source_walk=True, guided=True),
}


def inverter_of(options) -> str:
    """The inverter stage of an edit: its inversion's, or for a DDIM inversion the method's own."""
    if options.inversion not in INVERSIONS:
        raise ValueError(f"unknown inversion {options.inversion!r}; available: {', '.join(INVERSIONS)}")
    name = INVERSIONS[options.inversion].inverter
    return method(options.method).inverter if name == "ddim" else name


MASK_SOURCES: dict[str, str] = {  # EditOptions.mask_source -> the mask stage it runs in place of the method's own
    "noise": "noise_difference",  # the paper's noise difference
    "attention": "cross_attention",  # the changed words' cross-attention, one pass (InstDiffEdit's manner)
    "both": "noise_and_attention",  # both maps rescaled and combined (stages/attention_mask.py CombinedMask)
}


def mask_of(options) -> str:
    """The mask stage of an edit: its `mask_source`'s, or the method's own; a method without a mask (`whole`: its
    decoder alone decides what changes) takes no mask source."""
    own = method(options.method).mask
    if options.mask_source is None:
        return own
    if options.mask_source not in MASK_SOURCES:
        raise ValueError(f"unknown mask source {options.mask_source!r}; available: {', '.join(MASK_SOURCES)}")
    if own == "whole":
        raise ValueError(f"method {options.method!r} edits without a mask (its decoder decides what changes): a mask "
                         "source applies to the masked methods, e.g. diffedit_p2p")
    return MASK_SOURCES[options.mask_source]
