"""Options with commented defaults, and the results an edit returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from PIL import Image

from .bounds import check_field
from .images import DEFAULT_MAX_PIXELS

__all__ = ["EditOptions", "MaskResult", "InversionResult", "EditResult", "OUTPUT_TYPES", "PRESETS", "resolve_options"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass(frozen=True)
class EditOptions:
    """Every knob of one edit, grouped by step. Defaults follow the paper unless ShapeEdit says otherwise;
    docs/option-history.md tells how each was chosen. The last group is for ablations and comparisons."""

    method: str = "diffedit"  # which stages run (stages/registry.py METHODS)
    # decoding (DiffEdit step 3)
    num_inference_steps: int = 20  # DDIM steps over the full noise range (paper: 50; 20 keeps ShapeEdit's success)
    strength: float = 1.0  # encoding ratio r of the unconditional candidate: how far up the image is inverted (paper: 0.5-0.8)
    guidance_scale: float = 7.5  # classifier-free guidance of the decoding (paper: 7.5)
    negative_prompt: str | None = None  # what the decoding steers away from; None: the source prompt
    # inversion (step 2)
    inversion: str = "ddim"  # how the image is inverted (stages/registry.py INVERSIONS; docs/inversions.md); ddim: the paper
    inversion_prompt: str = ""  # "": unconditional encoding (paper); or a caption of the input
    # candidates, one kept per edit by the model's own score (stages/candidates.py)
    extra_strengths: tuple[float, ...] = ()  # also decode from these ratios; () with no caption candidate: one decoding
    caption_candidate: bool = True  # also decode from an inversion with the source prompt (the paper's caption encoding)
    caption_strength: float | None = 0.8  # encoding ratio of the caption candidate; None: strength
    inpaint_candidate: bool = True  # with an inpainting UNet loaded (--inpaint-model), it decodes the first candidate
    inpaint_pixel_hole: bool = True  # the inpainter's masked image holes the pixel mask (over the old object), not whole cells
    inpaint_source: bool | None = None  # the inpainter's masked image is the whole input (an inpainter trained to redraw
    #   what it sees under the mask: train-inpaint --source-visible); None: as the inpainter's folder says
    inpaint_threshold: float | None = None  # threshold of the latent mask the inpainting UNet paints in; None: decode's
    rerank_noises: int = 4  # noises per level when scoring candidates
    rerank_levels: tuple[float, ...] = (0.4, 0.6, 0.8)  # noise levels (fractions of training steps) of the score
    # mask (step 1)
    mask_source: str | None = None  # "noise", "attention" or "both" (stages/registry.py MASK_SOURCES); None: the method's own
    mask_noises: int = 10  # noises averaged for the map (paper: n = 10)
    mask_strength: float = 0.5  # noise level of the mask pass (paper: 50 %)
    mask_reference: str | None = None  # prompt the target is compared with; None: the source prompt; "": empty
    mask_threshold: float = 0.5  # threshold of the rescaled map: the composite's pixel mask (paper: 0.5)
    decode_threshold: float | None = 0.3  # threshold of the latent mask decoding paints in (capped at mask_threshold)
    mask_per_change: bool = True  # also map each word changed on its own, so one change does not drown another
    mask_smooth: float = 1.0  # Gaussian sigma of the map before thresholding, latent cells; 0 = none
    mask_dilate: int = 0  # grow the mask by this many latent cells
    mask_batch_size: int | None = None  # UNet rows per chunk in the mask pass and scoring; None = all at once
    # output (pixel space)
    composite: bool = True  # paste the edit into the input: every pixel outside the mask stays exact
    edit_snap: bool = True  # snap the composite's mask to the edges of the input and the edit together
    edit_trim: float = 0.12  # drop mask pixels within this RGB distance of the background around it; 0 = off
    edit_cover: float = 0.12  # grow the mask over input pixels farther than this from that background (the old
    #   object's whole footprint, so none of it survives as a ghost); 0 = off
    edit_spill: int = 2  # keep the input in slivers up to 2x this many pixels thick just outside the old object
    #   (found as edit_cover finds it): the new object's edge drawn a pixel or two past the old one's; 0 = off
    feather: int = 0  # width in pixels of an opacity ramp outside the composite's mask; 0 = a hard edge
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # refuse larger inputs with a clear error
    # attention control, Prompt-to-Prompt (methods p2p and diffedit_p2p; docs/attention.md)
    cross_replace: float = 0.8  # fraction of the decoding's steps whose target cross-attention is the source's (paper: 0.8)
    self_replace: float = 0.4  # fraction of the steps whose target self-attention is the source's: the layout (paper: 0.2-0.6)
    reweight: str = ""  # target words whose attention is scaled, "word=factor ..." (the paper's re-weighting); "": none
    local_blend: bool = True  # p2p: keep the source branch outside the changed words' attention (diffedit_p2p: DiffEdit's mask)
    blend_threshold: float = 0.3  # threshold of the local blend's word maps, each scaled to a maximum of 1 (paper: 0.3)
    # advanced: ablations and diffusers-compatible variants (the benchmark's `ours_*` rows set these)
    noise_candidates: tuple[float, ...] = ()  # also decode from the top level with this share of fresh noise in the mask
    rerank_unconditional: float = 0.0  # weight of (empty prompt's error - target's) in the candidates' score
    mask_clamp: str = "quantile"  # "quantile": clip extremes, then min-max (paper); "mean_ratio": diffusers'
    mask_quantile: float = 0.99  # upper clip of clamp "quantile"
    mask_mean_ratio: float = 3.0  # upper clip of clamp "mean_ratio", as a multiple of the mean (diffusers)
    mask_per_image: bool = True  # rescale each image's map on its own; False pools a batch (diffusers)
    mask_refine: bool = True  # pixel mask = latent cells trimmed by the smoothly upsampled soft map
    mask_snap: bool = False  # snap the pixel mask to the input's edges alone (trims a changed shape's new parts)

    def __post_init__(self) -> None:
        """Every field on its own against bounds.BOUNDS (type, finite, range; normalised), then the fields together."""
        from .stages.p2p import check_attention_options
        from .stages.registry import METHODS, mask_of

        for f in fields(self):
            object.__setattr__(self, f.name, check_field(f.name, getattr(self, f.name)))
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; available: {', '.join(sorted(METHODS))}")
        self._check_inversion()
        mask_of(self)
        check_attention_options(self)
        if int(self.num_inference_steps * self.strength) < 1:
            raise ValueError(
                f"strength {self.strength} x {self.num_inference_steps} steps leaves no denoising step"
            )
        if int(self.num_inference_steps * self.mask_strength) < 1:
            raise ValueError(
                f"mask_strength {self.mask_strength} x {self.num_inference_steps} steps leaves the mask pass no step"
            )
        if any(int(self.num_inference_steps * r) < 1 for r in (*self.extra_strengths, self.caption_strength or 1.0)):
            raise ValueError(
                f"an extra or caption strength in {self.extra_strengths}, {self.caption_strength} x {self.num_inference_steps} "
                "steps leaves no denoising step"
            )

    def _check_inversion(self) -> None:
        """The inversion against the fields it ties: its prompt, the negative prompt, the guidance."""
        from .stages.registry import INVERSIONS

        if self.inversion not in INVERSIONS:
            raise ValueError(f"unknown inversion {self.inversion!r}; available: {', '.join(INVERSIONS)}")
        if self.inversion_prompt and INVERSIONS[self.inversion].source_walk:
            raise ValueError(
                f"inversion_prompt is the ddim inversion's prompt; the {self.inversion} inversion walks with the source "
                "prompt: leave inversion_prompt empty"
            )
        if self.inversion == "negative-prompt" and self.negative_prompt is not None:
            raise ValueError(
                "the negative-prompt inversion decodes with the source prompt as the negative prompt: leave "
                "negative_prompt unset, or use inversion 'caption' with your negative prompt"
            )
        if self.inversion == "null-text" and self.guidance_scale == 1.0:
            raise ValueError(
                "null-text inversion optimises the unconditional branch of guidance, which guidance_scale 1 turns off: "
                "raise guidance_scale, or use inversion 'direct' or 'ddpm'"
            )

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "EditOptions":
        """The options of a preset (PRESETS: "fast", "default", "quality"), then `changes`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
        return cls(**PRESETS[name]).replace(**changes)

    def replace(self, **changes: Any) -> "EditOptions":
        """A copy with `changes`; unknown names raise a ValueError listing the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown edit option(s) {unknown}; known: {sorted(known)}")
        return EditOptions(**{**asdict(self), **changes})

    @property
    def latent_threshold(self) -> float:
        """Threshold of the latent mask that decoding paints in: decode_threshold, capped at mask_threshold."""
        if self.decode_threshold is None:
            return self.mask_threshold
        return min(self.decode_threshold, self.mask_threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Presets: speed against quality in one word (`edit(..., preset="fast")`, `diffedit edit --preset fast`); each is a
# set of EditOptions fields over the defaults. docs/benchmarks.md has their seconds and ShapeEdit figures.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": dict(  # one decoding, 10 steps
        num_inference_steps=10, strength=0.9, caption_candidate=False, inpaint_candidate=False, mask_noises=5,
    ),
    "default": {},  # EditOptions() itself: two candidates over 20 steps, scored at 3 levels x 4 noises
    "quality": dict(  # the default until 2026-12-02: three candidates over 50 steps, scored at 5 levels x 8 noises
        num_inference_steps=50, strength=0.8, extra_strengths=(1.0,), caption_strength=None, rerank_noises=8,
        rerank_levels=(0.4, 0.5, 0.6, 0.7, 0.8),
    ),
}


def resolve_options(options: EditOptions | None, overrides: dict[str, Any]) -> EditOptions:
    """An edit's options: `options` or the preset named by overrides["preset"] (default "default"), then the
    other overrides (EditOptions fields)."""
    overrides = dict(overrides)
    preset = overrides.pop("preset", None)
    if preset is not None and options is not None:
        raise ValueError("give either options= or preset=, not both (EditOptions.preset(name) gives a preset's options)")
    return (options or EditOptions.preset(preset or "default")).replace(**overrides)


@dataclass
class MaskResult:
    """The mask of each job (image, target prompt); `DiffEditor.edit(..., mask=result)` edits with it."""

    soft: torch.Tensor  # (J, h, w) float in [0, 1] at latent resolution, after clamping and smoothing
    mask: torch.Tensor  # (J, h, w) bool at latent resolution: the cells decoding paints in
    pixel: torch.Tensor  # (J, H, W) bool at the input's size: the composite's mask before the edit snap
    mask_images: list[Image.Image]  # J binary masks ("L", 0/255) at the input's pixel size
    soft_images: list[Image.Image]  # J soft maps ("L") at the input's pixel size
    seed: int | None = None  # the base seed (None when seeds were given per image)
    seeds: list[int] = field(default_factory=list)  # per input image: the seed of its noise streams
    changes: list[list[str]] = field(default_factory=list)  # per job: the single-change prompts merged into its map
    warnings: list[str] = field(default_factory=list)  # e.g. a job whose mask is empty: an edit with it changes nothing

    @property
    def mask_image(self) -> Image.Image:
        return self.mask_images[0]

    @property
    def empty(self) -> list[bool]:
        """Per job: whether its mask is empty (no latent cell, or no pixel): an edit with it changes nothing."""
        return [not (bool(m.any()) and bool(p.any())) for m, p in zip(self.mask, self.pixel)]


@dataclass
class InversionResult:
    """DDIM inversions of some images, every level kept; `DiffEditor.edit(..., inversion=result)` reuses them.

    walks["unconditional"] is inverted with `EditOptions.inversion_prompt` ("" by default) up to the highest
    ratio the candidates need, walks["caption"] with the source prompts at `caption_strength` (when the caption
    candidate is on); any inversion but ddim has one walk, walks["source"], with the source prompts (DDPM: noised
    on its own at every level). Level 0 of a walk is the clean latent, level k the latent at UNet timestep timesteps[k].
    """

    walks: dict[str, torch.Tensor]  # kind -> (N_k + 1, B, C, h, w)
    prompts: dict[str, list[str]]  # kind -> the prompt of each image's walk, as the sidecar records it
    num_inference_steps: int  # steps over the full range; a walk of ratio r holds int(steps * r) + 1 levels
    timesteps: torch.Tensor  # (N + 1,) UNet timestep of each level of `latents`, -1 for the clean level
    pixels_key: str = ""  # fingerprint of the padded input pixels, so an edit cannot reuse another image's walk
    inversion: str = "ddim"  # EditOptions.inversion it was made with
    steps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # walk -> per-step state (N_k, B, ...) by name
    decoding: dict[str, Any] = field(default_factory=dict)  # guided inversions: the guidance and negative prompt fitted to

    @property
    def latents(self) -> torch.Tensor:
        """The unconditional walk (the paper's), or the only one."""
        return self.walks.get("unconditional", next(iter(self.walks.values())))

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The main walk's per-step state (inversion.Inversion.steps): "uncond", "offset" or "noise"; {} for DDIM."""
        return self.steps.get("unconditional", next(iter(self.steps.values()), {}))


@dataclass
class EditResult:
    """Edited images with their masks, the seeds and every parameter that made them."""

    images: Any  # one per job, at the input's size: PIL images, or an array / tensor by output_type
    mask_images: list[Image.Image]  # binary masks of the composite, pixel size
    soft_images: list[Image.Image]  # soft mask maps, pixel size
    mask: torch.Tensor  # (J, h, w) bool latent masks
    soft: torch.Tensor  # (J, h, w) soft latent maps
    sources: list[str]  # source prompt of each job
    targets: list[str]  # target prompt of each job
    job_image: list[int]  # index of the input image of each job
    seed: int | None  # the base seed: image b's noise streams use seed + b (None when seeds were given per image)
    options: EditOptions
    model: str
    seeds: list[int] = field(default_factory=list)  # per input image: the seed that reproduces its edits
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    candidates: list[str] = field(default_factory=list)  # labels of the decodings tried, e.g. "r=0.8"
    chosen: list[int] = field(default_factory=list)  # per job: index into candidates of the kept one
    candidate_scores: list[list[float]] = field(default_factory=list)  # per job: each candidate's score; [] for one
    mask_changes: list[list[str]] = field(default_factory=list)  # per job: the single-change prompts merged into its mask
    output_type: str = "pil"  # "pil", "np" (J, H, W, 3) floats in [0, 1], "pt" (J, 3, H, W), or "latent"
    edited: list[bool] = field(default_factory=list)  # per job: False when the edit changed nothing (see warnings)
    warnings: list[str] = field(default_factory=list)  # what went unedited and why, one line each
    inpainter: str | None = None  # the inpainting UNet that decoded a candidate ("embedded", a folder, a hub id)

    @property
    def image(self) -> Image.Image:
        return self.images[0]

    @property
    def mask_image(self) -> Image.Image:
        return self.mask_images[0]

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to reproduce the edit, as JSON-ready values."""
        return {
            "model": self.model,
            "inpainter": self.inpainter,
            "seed": self.seed,
            "seeds": list(self.seeds),
            "jobs": [
                {"image": i, "source": s, "target": t, "mask_changes": c}
                for i, s, t, c in zip(self.job_image, self.sources, self.targets, self.mask_changes or [[]] * len(self.targets))
            ],
            "options": self.options.to_dict(),
            "mask_fraction": [round(float(m.float().mean()), 6) for m in self.mask],
            "candidates": self.candidates,
            "chosen": [self.candidates[c] for c in self.chosen] if self.candidates else [],
            "candidate_scores": [[round(v, 6) for v in row] for row in self.candidate_scores],
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "edited": list(self.edited),
            "warnings": list(self.warnings),
        }
