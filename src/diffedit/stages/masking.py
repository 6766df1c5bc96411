"""Mask sources (DiffEdit step 1): where each job may change.

Protocol: `source(parts, batch, latents, options, noise) -> JobMasks`. `noise_difference` is the paper's
map (with per-change maps for a target that changes several words); `user` takes the caller's masks;
`precomputed` takes a `MaskResult` from `DiffEditor.mask`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..components import Components
from ..images import load_mask
from ..masks import finish_normalized, guided_filter, latent_mask_from_pixels, merge_change_maps, noise_difference_maps
from ..masks import normalize_maps, upsample_mask
from ..prompts import single_changes
from ..schedule import ddim_grid
from .batch import Batch
from .noise import NoiseStreams
from .registry import register

__all__ = ["JobMasks", "NoiseDifferenceMask", "UserMask", "PrecomputedMask", "mask_changes", "threshold_normalized"]


@dataclass
class JobMasks:
    """The masks of every job: latent maps for decoding, pixel masks for the composite."""

    soft: torch.Tensor  # (J, h, w) float in [0, 1], after clamping and smoothing
    latent: torch.Tensor  # (J, h, w) bool: the cells decoding paints in
    pixel: torch.Tensor  # (J, H, W) bool at the input's size: the composite's mask before the edit snap
    changes: list[list[str]] = field(default_factory=list)  # per job: single-change prompts merged into its map
    computed: bool = True  # False for a user's mask, which finishing keeps as given


def mask_changes(batch: Batch, options) -> list[list[str]]:
    """Per job, the single-change prompts whose maps are merged into its mask (prompts.single_changes); none
    without `mask_per_change`, for prompt embeddings, or when the mask's reference is not the source prompt."""
    out = []
    for b, target in zip(batch.job_image, batch.job_target):
        source = batch.sources[b]
        texts = isinstance(source, str) and isinstance(target, str)
        use = texts and options.mask_per_change and options.mask_reference in (None, source)
        out.append(single_changes(source, target) if use else [])
    return out


def threshold_normalized(
    normalized: torch.Tensor, options, padded: tuple[int, int], size: tuple[int, int], guide: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rescaled maps (J, h, w) -> (soft maps, latent masks (J, h, w), pixel masks (J, H, W)) by the options' smoothing,
    thresholds and dilation: the mask pass after its model calls. A map stored unsmoothed (a `MaskResult` of
    mask_smooth=0) is thresholded again with other options here, without the model. padded: the input's size padded
    to the VAE grid; size: its own (H, W); guide: the job images (J, 3, Hp, Wp) in [0, 1], needed for mask_snap."""
    soft, latent = finish_normalized(
        normalized, smooth=options.mask_smooth, threshold=options.latent_threshold, dilate_cells=options.mask_dilate
    )
    (hp, wp), (h, w) = padded, size
    pixel = upsample_mask(latent, (hp, wp)) > 0.5  # (J, Hp, Wp): the latent cells, blocky
    if options.mask_refine or options.mask_snap:  # trim the cells' edges with the soft map, upsampled smoothly
        soft_px = upsample_mask(soft, (hp, wp), soft=True)
        if options.mask_snap:  # ... made to follow the input's colour edges
            if guide is None:
                raise ValueError("mask_snap needs the images (guide) to threshold a map again")
            soft_px = guided_filter(soft_px, guide.to(soft_px.device), radius=hp // soft.shape[-2])
        pixel &= soft_px > options.mask_threshold
    return soft, latent, pixel[:, :h, :w]


@register("mask", "noise_difference")
class NoiseDifferenceMask:
    """|eps(target) - eps(reference)| at mask_strength, averaged over n noises, then clamp, rescale, smooth,
    threshold (threshold_normalized); the pixel mask is the latent cells trimmed by the soft map, upsampled."""

    def __call__(self, parts: Components, batch: Batch, latents: torch.Tensor, options, noise: NoiseStreams) -> JobMasks:
        changes = mask_changes(batch, options)
        maps = self.noise_maps(parts, batch, latents, options, noise, changes)
        normalized = normalize_maps(maps, clamp=options.mask_clamp, quantile=options.mask_quantile,
                                    mean_ratio=options.mask_mean_ratio, per_image=options.mask_per_image)
        guide = (batch.pixels[batch.job_image] + 1.0) / 2.0 if options.mask_snap else None
        soft, latent, pixel = threshold_normalized(normalized, options, tuple(batch.pixels.shape[-2:]), batch.size, guide)
        return JobMasks(soft, latent, pixel, changes)

    @staticmethod
    def noise_maps(
        parts: Components, batch: Batch, latents: torch.Tensor, options, noise: NoiseStreams, changes: list[list[str]]
    ) -> torch.Tensor:
        """Step 1 before normalisation, (J, h, w); for a target that changes several words, merged with the maps of
        each single change in `changes` (masks.merge_change_maps)."""
        # 1a. Noise the latents at mask_strength with n noises per image, image b's from its own stream
        grid = ddim_grid(parts.scheduler, options.num_inference_steps, options.mask_strength)
        t, alpha = int(grid.timesteps[-1]), float(grid.alphas[-1])
        n, shape = options.mask_noises, latents.shape[1:]
        eps = torch.stack([noise.randn("mask", b, (n, *shape)) for b in range(latents.shape[0])])  # (B, n, C, h, w)
        noisy = alpha**0.5 * latents.unsqueeze(1) + (1 - alpha) ** 0.5 * eps.to(parts.device, parts.dtype)
        # 1b. Predict the noise with the reference and the target prompts (and each single change) in one batch;
        #     no guidance: it cancels in the normalisation
        reference = [options.mask_reference if options.mask_reference is not None else s for s in batch.sources]
        prompts = list(batch.job_target) + [p for ps in changes for p in ps]
        images = list(batch.job_image) + [b for b, ps in zip(batch.job_image, changes) for _ in ps]
        with parts.bar((len(batch.images) + len(prompts)) * n, "mask") as bar:
            maps = noise_difference_maps(
                parts.denoiser, noisy, t, parts.encode_prompts(reference), parts.encode_prompts(prompts),
                images, max_batch=options.mask_batch_size, progress=bar.update,
            )
        # 1c. Merge each job's single-change maps into its target map
        out, start = maps[: len(batch.job_target)].clone(), len(batch.job_target)
        for j, ps in enumerate(changes):
            if ps:
                out[j] = merge_change_maps(out[j], maps[start : start + len(ps)], options.mask_quantile)
                start += len(ps)
        return out


@register("mask", "user")
class UserMask:
    """The caller's masks (white = edit): one for every image, or one per image; each job takes its image's."""

    def __init__(self, masks):
        self.masks = masks

    def __call__(self, parts: Components, batch: Batch, latents: torch.Tensor, options, noise: NoiseStreams) -> JobMasks:
        (hp, wp), (h, w) = batch.pixels.shape[-2:], batch.size
        given = list(self.masks) if isinstance(self.masks, (list, tuple)) else [self.masks] * len(batch.images)
        if len(given) != len(batch.images):
            raise ValueError(f"got {len(given)} masks for {len(batch.images)} images")
        pixel = torch.zeros(len(given), hp, wp, dtype=torch.bool)
        for i, m in enumerate(given):
            pixel[i, :h, :w] = torch.from_numpy(load_mask(m, (w, h)))
        latent = torch.stack([latent_mask_from_pixels(p, parts.vae_scale_factor) for p in pixel])
        idx = torch.tensor(batch.job_image)
        return JobMasks(latent[idx].float(), latent[idx], pixel[idx][:, :h, :w], [[] for _ in idx], computed=False)


@register("mask", "precomputed")
class PrecomputedMask:
    """A `MaskResult` from `DiffEditor.mask` on the same images and targets: "preview the mask, then edit"."""

    def __init__(self, result):
        self.result = result

    def __call__(self, parts: Components, batch: Batch, latents: torch.Tensor, options, noise: NoiseStreams) -> JobMasks:
        r = self.result
        if r.mask.shape[0] != len(batch.job_image) or tuple(r.pixel.shape[-2:]) != batch.size:
            raise ValueError(
                f"the mask result holds {r.mask.shape[0]} masks of {tuple(r.pixel.shape[-2:])} px, but this call has "
                f"{len(batch.job_image)} jobs of {batch.size} px: compute it with the same images and targets"
            )
        return JobMasks(r.soft, r.mask, r.pixel, [list(c) for c in r.changes], computed=True)
