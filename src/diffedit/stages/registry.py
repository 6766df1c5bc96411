"""Stages by name: each kind of stage (mask sources, inverters, decoders, selectors, finishers) has one
protocol and a table of implementations, and a method is a choice of one stage of each kind.

A new method (an attention-controlled decoder, a null-text inverter, an inpainting UNet) is a class that
follows its kind's protocol, registered here by name with `@register(kind, name)`, and a `METHODS` entry;
the editor looks stages up by the names in `EditOptions.method`, never by branching on them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "METHODS", "Method", "register", "stage", "method"]

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


@dataclass(frozen=True)
class Method:
    """A method is one stage of each kind, by name."""

    mask: str
    inverter: str
    decoder: str
    selector: str
    finisher: str


METHODS: dict[str, Method] = {
    # DiffEdit (Couairon et al. 2023): noise-difference mask, DDIM inversion, masked DDIM decoding with
    # same-level blending; candidates scored by the model; edge-snapped pixel composite
    "diffedit": Method("noise_difference", "ddim", "masked_ddim", "model_score", "composite"),
    # DiffEdit decoding inside a mask from the changed words' cross-attention (one pass; issue 20)
    "diffedit_attention_mask": Method("cross_attention", "ddim", "masked_ddim", "model_score", "composite"),
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]
