"""Inverters (DiffEdit step 2): walk the clean latents up the noise levels, keeping every level and what the decoding
needs at each step to come back.

Protocol: `inverter(parts, latents, prompts, grid, guidance_scale, stops, *, guide) -> Inversion`: levels
(N + 1, B, C, h, w), level 0 the clean latents, row b walking up to level stops[b] (walks of several ratios share one
batch) and keeping it above; and per-step state for the decoder (inversion.Inversion.steps). `guide` says how the
decoding will treat the source (its prompt, negative prompt, guidance and the edit's noise streams); only the
inverters whose state is fitted to it (INVERSIONS[...].guided) are given one.
`ddim` is deterministic DDIM (the paper), `null_text`, `direct` and `ddpm` hand the decoder per-step unconditional
embeddings, offsets and noise maps. `EditOptions.inversion` names an inversion (stages/registry.py INVERSIONS): an
inverter and the prompt it walks with. docs/inversions.md compares them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..components import Components, Prompt
from ..errors import check_finite
from ..inversion import Inversion, ddim_invert, ddpm_invert, direct_offsets
from ..null_text import null_text_embeddings
from ..schedule import DDIMGrid, ddim_grid, steps_at
from .batch import Batch, describe_prompt
from .noise import NoiseStreams
from .registry import INVERSIONS, inverter_of, register, stage

__all__ = [
    "DDIMInverter", "NullTextInverter", "DirectInverter", "DDPMInverter", "Guide", "source_guide", "plan_walks",
    "invert_walks", "check_walks", "guide_record",
]


@dataclass(frozen=True)
class Guide:
    """How the decoding will treat each row's source: what a guided inversion fits its per-step state to."""

    cond: torch.Tensor  # (B, L, D) the source prompt's embeddings
    uncond: torch.Tensor | None  # (B, L, D) the decoding's negative prompt (the source by default); None: no guidance
    guidance_scale: float  # the decoding's
    noise: NoiseStreams  # the edit's noise streams
    images: list[int]  # the input image of each row (whose streams it draws from)


def _need_guide(name: str, guide: Guide | None) -> Guide:
    if guide is None:
        raise ValueError(f"the {name} inverter fits its state to the decoding: give it a guide (stages/inverting.Guide)")
    return guide


@register("inverter", "ddim")
class DDIMInverter:
    """Deterministic DDIM inversion (Song et al. 2021, eq. 12 run forwards), one prompt per image."""

    @torch.no_grad()
    def __call__(
        self, parts: Components, latents: torch.Tensor, prompts: list[Prompt], grid: DDIMGrid, guidance_scale: float = 1.0,
        stops: list[int] | None = None, *, guide: Guide | None = None,
    ) -> Inversion:
        cond = parts.encode_prompts(prompts)
        uncond = parts.encode_prompts([""] * latents.shape[0]) if guidance_scale != 1.0 else None
        with parts.bar(max(stops) if stops else grid.num_steps, "invert") as bar:
            return Inversion(ddim_invert(
                parts.denoiser, latents, cond, grid, uncond=uncond, guidance_scale=guidance_scale, stops=stops,
                callback=lambda k, x: bar.update(),
            ))


@register("inverter", "null_text")
class NullTextInverter:
    """Null-text inversion (Mokady et al. 2023): DDIM with the prompts at guidance 1 as the pivot, then per step the
    unconditional embedding (from the negative prompt's) that brings the decoding's guided step back onto it."""

    def __init__(self, *, inner_steps: int = 10, tolerance: float = 1e-5, lr: float = 1e-2):
        self.inner_steps = inner_steps  # Adam steps per level at most (the paper's N)
        self.tolerance = tolerance  # early stop: mean squared distance to the pivot's level (the paper's epsilon)
        self.lr = lr  # Adam's step size (the paper's)

    @torch.no_grad()
    def __call__(
        self, parts: Components, latents: torch.Tensor, prompts: list[Prompt], grid: DDIMGrid, guidance_scale: float = 1.0,
        stops: list[int] | None = None, *, guide: Guide | None = None,
    ) -> Inversion:
        guide = _need_guide("null_text", guide)
        if guide.uncond is None:
            raise ValueError("null-text inversion optimises the unconditional branch of guidance: it needs guidance_scale != 1")
        pivot = DDIMInverter()(parts, latents, prompts, grid, stops=stops).levels
        with parts.bar(max(stops) if stops else grid.num_steps, "null-text") as bar:
            uncond = null_text_embeddings(  # the plain UNet: gradients flow through it, not through a traced one
                parts.unet, pivot, guide.cond, guide.uncond, grid, guidance_scale=guide.guidance_scale, stops=stops,
                inner_steps=self.inner_steps, tolerance=self.tolerance, lr=self.lr, callback=lambda k: bar.update(),
            )
        return Inversion(pivot, {"uncond": uncond})


@register("inverter", "direct")
class DirectInverter:
    """Direct inversion (Ju et al. 2023, PnP Inversion): DDIM with the prompts, and per step the offset between the
    decoding's guided step from each level and the level below it, added back while decoding."""

    @torch.no_grad()
    def __call__(
        self, parts: Components, latents: torch.Tensor, prompts: list[Prompt], grid: DDIMGrid, guidance_scale: float = 1.0,
        stops: list[int] | None = None, *, guide: Guide | None = None,
    ) -> Inversion:
        guide = _need_guide("direct", guide)
        levels = DDIMInverter()(parts, latents, prompts, grid, guidance_scale, stops).levels
        offsets = direct_offsets(parts.denoiser, levels, guide.cond, grid, uncond=guide.uncond,
                                 guidance_scale=guide.guidance_scale, stops=stops)
        return Inversion(levels, {"offset": offsets})


@register("inverter", "ddpm")
class DDPMInverter:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024): levels drawn independently from each image's
    "ddpm" noise stream, and the per-step noise maps with which the decoding's DDPM steps retrace them."""

    @torch.no_grad()
    def __call__(
        self, parts: Components, latents: torch.Tensor, prompts: list[Prompt], grid: DDIMGrid, guidance_scale: float = 1.0,
        stops: list[int] | None = None, *, guide: Guide | None = None,
    ) -> Inversion:
        guide = _need_guide("ddpm", guide)
        shape = (grid.num_steps, *latents.shape[1:])
        noises = torch.stack([guide.noise.randn("ddpm", b, shape) for b in guide.images], dim=1).to(latents)  # (N, B, ...)
        levels, z = ddpm_invert(parts.denoiser, latents, guide.cond, grid, noises, uncond=guide.uncond,
                                guidance_scale=guide.guidance_scale, stops=stops)
        return Inversion(levels, {"noise": z})


def source_guide(parts: Components, sources: list[Prompt], options, noise: NoiseStreams) -> Guide:
    """How the decoding treats each image's source prompt: the negative prompt it is decoded against (the source's
    own unless `negative_prompt`) and the guidance scale, as the editor's decoding encodes them."""
    negative = [options.negative_prompt if options.negative_prompt is not None else s for s in sources]
    uncond = parts.encode_prompts(negative) if options.guidance_scale != 1.0 else None
    return Guide(parts.encode_prompts(sources), uncond, options.guidance_scale, noise, list(range(len(sources))))


def guide_record(options) -> dict:
    """What a guided inversion's state was fitted to, so that an edit reusing it can check its own ({} for the rest)."""
    if not INVERSIONS[options.inversion].guided:
        return {}
    return {"guidance_scale": options.guidance_scale, "negative_prompt": options.negative_prompt}


def plan_walks(options, sources: list[Prompt], candidates: list) -> dict[str, tuple[float, list[Prompt]]]:
    """The walks the candidates read: kind -> (ratio, prompt per image). The ddim inversion walks with
    `inversion_prompt` up to the highest ratio ("unconditional") and, for the caption candidate, with the source
    prompts at its ratio ("caption"); the others walk once with the source prompts ("source"), every candidate
    reading its levels up to its own ratio."""
    top = max(c.strength for c in candidates if not c.caption)
    if INVERSIONS[options.inversion].source_walk:
        return {"source": (top, list(sources))}
    plan = {"unconditional": (top, [options.inversion_prompt] * len(sources))}
    for c in candidates:
        if c.caption:
            plan["caption"] = (c.strength, list(sources))
    return plan


def invert_walks(
    parts: Components, latents: torch.Tensor, plan: dict, options, sources: list[Prompt], noise: NoiseStreams,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Every walk of `plan` as one batch (a walk of a lower ratio leaves it at its level) with the edit's inverter:
    walks kind -> (N_k + 1, B, C, h, w), and per-step state kind -> {name: (N_k, B, ...)} ({} for DDIM)."""
    b = latents.shape[0]
    inverter = stage("inverter", inverter_of(options))()
    steps = {kind: steps_at(options.num_inference_steps, r) for kind, (r, _) in plan.items()}
    grid = ddim_grid(parts.scheduler, options.num_inference_steps, max(r for r, _ in plan.values()))
    prompts = [p for _, kind_prompts in plan.values() for p in kind_prompts]
    stops = [steps[kind] for kind in plan for _ in range(b)]
    rows = latents if len(plan) == 1 else torch.cat([latents] * len(plan))
    guided = {}
    if INVERSIONS[options.inversion].guided:
        one = source_guide(parts, sources, options, noise)
        cat = lambda t: None if t is None else torch.cat([t] * len(plan))  # noqa: E731
        guided["guide"] = Guide(cat(one.cond), cat(one.uncond), one.guidance_scale, noise, one.images * len(plan))
    out = inverter(parts, rows, prompts, grid, stops=stops, **guided)
    check_finite(out.levels, "the inversion")
    walks = {kind: out.levels[: steps[kind] + 1, i * b : (i + 1) * b] for i, kind in enumerate(plan)}
    state = {kind: {name: t[: steps[kind], i * b : (i + 1) * b] for name, t in out.steps.items()}
             for i, kind in enumerate(plan)}
    return walks, {kind: s for kind, s in state.items() if s}


def check_walks(inversion, batch: Batch, pixels_key: str, options, candidates: list) -> torch.Tensor:
    """The clean latents (B, C, h, w) of a given InversionResult, after checking that it holds every walk this edit's
    candidates read, made for these images with this edit's steps, inversion and prompts (and, for a guided
    inversion, its guidance); a ValueError says what differs."""
    if inversion.pixels_key != pixels_key:
        raise ValueError("the inversion was computed for other images: invert these images first")
    if inversion.num_inference_steps != options.num_inference_steps:
        raise ValueError(
            f"the inversion has {inversion.num_inference_steps} steps, the edit {options.num_inference_steps}: "
            "invert with the edit's options"
        )
    if inversion.inversion != options.inversion or inversion.decoding != guide_record(options):
        raise ValueError(
            f"the inversion is {inversion.inversion!r} {inversion.decoding or ''}, the edit asks for {options.inversion!r} "
            f"{guide_record(options) or ''}: invert with the edit's options"
        )
    sources = [describe_prompt(p) for p in batch.sources]
    for kind, (r, prompts) in plan_walks(options, sources, candidates).items():
        walk = inversion.walks.get(kind)
        if walk is None or walk.shape[0] < steps_at(options.num_inference_steps, r) + 1 or inversion.prompts.get(kind) != prompts:
            raise ValueError(
                f"the inversion lacks the {kind} walk at r={r:g} (with these prompts): call "
                "invert(image, source, options=...) with the edit's source prompt and options"
            )
    return inversion.latents[0]
