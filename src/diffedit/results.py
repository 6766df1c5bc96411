"""Options with commented defaults, and the results an edit returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from PIL import Image

from .images import DEFAULT_MAX_PIXELS

__all__ = ["EditOptions", "MaskResult", "InversionResult", "EditResult"]


@dataclass(frozen=True)
class EditOptions:
    """Every knob of one DiffEdit edit. Defaults follow the paper unless a benchmark says otherwise."""

    num_inference_steps: int = 50  # DDIM steps for the full 0..1 range (paper: 50)
    strength: float = 0.8  # encoding ratio r: how far up the DDIM grid the image is inverted (paper: 0.5-0.8)
    guidance_scale: float = 7.5  # classifier-free guidance of the decoding (paper: 7.5)
    negative_prompt: str | None = None  # None: the source prompt, as the paper's decoding contrasts target vs query
    inversion_prompt: str = ""  # "" = unconditional encoding (paper); or a caption of the input
    # candidates, chosen per edit by the model itself (see rerank.py)
    extra_strengths: tuple[float, ...] = (1.0,)  # also decode from these encoding ratios (the same inversion,
    #   taken higher); with caption_candidate False and no noise_candidates, () is the paper's single decoding.
    #   The three default candidates, scored by the model: edit success 78.1 -> 87.5 % on tuning seed 1000 and
    #   88.5 -> 91.7 % on 5000 (96 cases)
    noise_candidates: tuple[float, ...] = ()  # also decode from the top unconditional level (the highest ratio
    #   above) with this share of its variance replaced by fresh noise inside the mask: room to redraw a shape
    #   whose old outline the inversion keeps. Off by default: with (0.5,) and rerank_unconditional 2 at levels
    #   0.6-0.9, tuning seeds 1000 / 6000 gained 4 / 7 points, but the untouched seed 5000 lost 6 (91.7 -> 85.4 %)
    caption_candidate: bool = True  # also decode from an inversion with the source prompt (the paper's caption
    #   encoding) at `strength`; skipped for an empty source prompt
    rerank_noises: int = 8  # noises per level when scoring candidates (source vs target prompt errors)
    rerank_levels: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8)  # noise levels (fractions of the training
    #   timesteps) at which candidates are scored: the high ones, where predictions follow shape and colour
    rerank_unconditional: float = 0.0  # weight of the empty prompt's error minus the target's in the score,
    #   on top of the source's minus the target's (0: source minus target alone; see noise_candidates)
    # mask (step 1)
    mask_noises: int = 10  # n noises averaged (paper: n = 10)
    mask_strength: float = 0.5  # noise level of the mask pass (paper: 50 %)
    mask_reference: str | None = None  # None: the source prompt; "" = empty prompt (paper allows both)
    mask_threshold: float = 0.5  # binarisation threshold after rescaling to [0, 1] (paper: 0.5)
    decode_threshold: float | None = 0.3  # threshold of the latent mask that decoding paints in; None = mask_threshold
    #   (the paper's single threshold). Lower than mask_threshold gives a changed shape's new parts room to be
    #   drawn, while the pixel masks of the composite keep mask_threshold: +4 % success on average over tuning
    #   seeds 1000/5000/6000, then +2.1 % and +5.6 % on seeds 31337 and 4242 (ours_one_threshold is the ablation)
    #   Never above mask_threshold: decoding paints in at least the pixel mask (see latent_threshold).
    mask_clamp: str = "quantile"  # "quantile": clip extremes then min-max (paper); "mean_ratio": diffusers'
    mask_quantile: float = 0.99  # upper clip for clamp="quantile": the top 1 % are "extreme values"
    mask_mean_ratio: float = 3.0  # upper clip for clamp="mean_ratio", as a multiple of the mean (diffusers)
    mask_per_change: bool = True  # a target changing several words ("red circle" -> "blue square") is also
    #   mapped one change at a time ("blue circle", "red square"), each map rescaled on its own and the cellwise
    #   maximum kept: the largest change no longer drowns the others (see masks.py); only with the source prompt
    #   as mask_reference. Edit success 87.5 -> 90.6 and 77.1 -> 80.2 % on seeds 1000 and 6000, then checked on
    #   5000 and 2026: 91.7 -> 90.6 and 83.3 -> 88.5 % (96 cases each; colour-and-shape edits 70.3 -> 77.4 % on
    #   average); fresh seed 99991 (144 cases): 73.6 -> 80.6 %. Ablation: ours_whole_prompt_mask
    mask_per_image: bool = True  # normalise each image on its own; False pools a batch (diffusers)
    mask_smooth: float = 1.0  # Gaussian sigma in latent cells before thresholding; 0 = none
    mask_dilate: int = 0  # grow the binary mask by this many latent cells
    mask_refine: bool = True  # pixel mask = upsampled soft map > threshold, inside the latent mask (+0.03 IoU on tuning cases)
    mask_snap: bool = False  # snap the pixel mask to the input's edges (colour guided filter, one latent cell wide):
    #   +0.04 to +0.05 IoU on tuning cases and a sharper recolouring, but it trims the new parts of changed
    #   shapes (edit success -2 to -6 % on tuning seeds 5000/6000), so it is off by default; edit_snap
    #   replaces it in `edit` when both are on
    edit_snap: bool = True  # after decoding, snap the composite's mask to the edges of the input AND the edit
    #   (guided filter on both stacked; it may reach one latent cell past the latent mask): +0.06 IoU over
    #   mask_refine on tuning seeds 1000/5000/6000 at equal or better success; a user mask is kept as given
    edit_trim: float = 0.12  # with edit_snap: drop the composite's pixels within this distance (RGB in [0, 1],
    #   input and edit stacked) of a colour of the ring of background just outside the region; 0 = off.
    #   Removes the filter's halo around objects: +0.04 / +0.08 IoU on tuning seeds 5000 / 1000, same success
    mask_batch_size: int | None = None  # UNet rows per chunk in the mask pass; None = all n * (1 + targets)
    # output (after decoding)
    composite: bool = True  # paste the edit into the input in pixel space: outside the mask stays exact
    feather: int = 2  # width in pixels of the opacity ramp inside the mask edge (3 cut off edited edges: -5 %
    #   success on tuning seeds 5000/6000 for +1.7 dB background; 2 kept success and gained 2.3 dB over 0)
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # refuse larger inputs with a clear error

    def __post_init__(self) -> None:
        for name in ("extra_strengths", "noise_candidates", "rerank_levels"):  # lists (from JSON, the CLI) become tuples
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(float(v) for v in ((value,) if isinstance(value, (int, float)) else value)))
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {self.num_inference_steps}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not 0.0 < self.mask_strength <= 1.0:
            raise ValueError(f"mask_strength must be in (0, 1], got {self.mask_strength}")
        if int(self.num_inference_steps * self.strength) < 1:
            raise ValueError(
                f"strength {self.strength} x {self.num_inference_steps} steps leaves no denoising step"
            )
        if any(not 0.0 < r <= 1.0 for r in self.extra_strengths):
            raise ValueError(f"extra_strengths must lie in (0, 1], got {self.extra_strengths}")
        if any(int(self.num_inference_steps * r) < 1 for r in self.extra_strengths):
            raise ValueError(f"an extra strength in {self.extra_strengths} x {self.num_inference_steps} steps leaves no denoising step")
        if any(not 0.0 < s <= 1.0 for s in self.noise_candidates):
            raise ValueError(f"noise_candidates are shares of fresh noise in (0, 1], got {self.noise_candidates}")
        if self.rerank_unconditional < 0:
            raise ValueError(f"rerank_unconditional must be >= 0, got {self.rerank_unconditional}")
        if not isinstance(self.rerank_noises, int) or self.rerank_noises < 1:
            raise ValueError(f"rerank_noises must be a positive integer, got {self.rerank_noises}")
        if not self.rerank_levels or any(not 0.0 <= r < 1.0 for r in self.rerank_levels):
            raise ValueError(f"rerank_levels must be a non-empty tuple of fractions in [0, 1), got {self.rerank_levels}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not isinstance(self.mask_noises, int) or self.mask_noises < 1:
            raise ValueError(f"mask_noises must be a positive integer, got {self.mask_noises}")
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise ValueError(f"mask_threshold must be in [0, 1], got {self.mask_threshold}")
        if self.decode_threshold is not None and not 0.0 <= self.decode_threshold <= 1.0:
            raise ValueError(f"decode_threshold must be in [0, 1], got {self.decode_threshold}")
        if self.mask_clamp not in ("quantile", "mean_ratio"):
            raise ValueError(f"mask_clamp must be 'quantile' or 'mean_ratio', got {self.mask_clamp!r}")
        if self.mask_smooth < 0 or self.mask_dilate < 0 or self.feather < 0:
            raise ValueError("mask_smooth, mask_dilate and feather must be >= 0")
        if self.edit_trim < 0:
            raise ValueError(f"edit_trim must be >= 0, got {self.edit_trim}")
        if self.mask_batch_size is not None and self.mask_batch_size < 1:
            raise ValueError(f"mask_batch_size must be >= 1, got {self.mask_batch_size}")

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


@dataclass
class MaskResult:
    """The mask of each job (image, target prompt): soft map and binary mask, latent and pixel grids."""

    soft: torch.Tensor  # (J, h, w) float in [0, 1] at latent resolution, after clamping and smoothing
    mask: torch.Tensor  # (J, h, w) bool at latent resolution
    mask_images: list[Image.Image]  # J binary masks ("L", 0/255) at the input's pixel size
    soft_images: list[Image.Image]  # J soft maps ("L") at the input's pixel size
    seed: int | None = None

    @property
    def mask_image(self) -> Image.Image:
        return self.mask_images[0]


@dataclass
class InversionResult:
    """Every DDIM level of the inverted latents: latents[0] is the clean latent, latents[N] the top."""

    latents: torch.Tensor  # (N + 1, B, C, h, w)
    timesteps: torch.Tensor  # (N + 1,) UNet timestep of each level, -1 for the clean level


@dataclass
class EditResult:
    """Edited images with their masks, the seed and every parameter that made them."""

    images: list[Image.Image]  # one per job, at the input's size
    mask_images: list[Image.Image]  # binary masks used for decoding, pixel size
    soft_images: list[Image.Image]  # soft mask maps, pixel size
    mask: torch.Tensor  # (J, h, w) bool latent masks
    soft: torch.Tensor  # (J, h, w) soft latent maps
    sources: list[str]  # source prompt of each job
    targets: list[str]  # target prompt of each job
    job_image: list[int]  # index of the input image of each job
    seed: int
    options: EditOptions
    model: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    candidates: list[str] = field(default_factory=list)  # labels of the decodings tried, e.g. "r=0.8"
    chosen: list[int] = field(default_factory=list)  # per job: index into candidates of the kept one
    candidate_scores: list[list[float]] = field(default_factory=list)  # per job: each candidate's score
    #   (source prompt's noise error minus the target's; empty with a single candidate)
    mask_changes: list[list[str]] = field(default_factory=list)  # per job: the single-change prompts mapped with
    #   the target for its mask (EditOptions.mask_per_change); empty for a one-word change or a user mask

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
            "seed": self.seed,
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
        }
