"""FlowEditor: DiffEdit's mask and background guarantees on flow-matching models (SD3, FLUX).

One edit: (1) the mask from the difference of the velocities under the target and the source prompts at
mask_strength (flow/ode.velocity_difference_maps), clamped, smoothed and thresholded as DiffEdit's noise difference
is (stages/masking.threshold_normalized); (2) one of two decoders under the latent mask: "flowedit" (inversion-free,
Kulikov et al. 2024) or "inverted" (Euler inversion of the source flow, then target decoding with the background of
the same level, as DiffEdit does); (3) the edge-snapped pixel composite of the other editors (stages/finishing).
The API mirrors DiffEditor's: `mask()` returns a MaskResult that `edit(mask=...)` takes; the options are EditOptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import check_finite
from ..results import EditOptions, EditResult, MaskResult, resolve_options
from ..stages.batch import Batch, prepare_batch
from ..stages.finishing import CompositeFinisher, mask_images
from ..stages.masking import JobMasks, PrecomputedMask, UserMask, threshold_normalized
from ..stages.noise import NoiseStreams, resolve_seeds
from ..stages.report import empty_mask_warnings
from ..masks import normalize_maps
from .components import FlowComponents
from .loading import load_flow_components
from .ode import flowedit, invert_flow, masked_flow_decode, start_index, velocity_difference_maps

__all__ = ["DECODERS", "FlowEditor", "FlowEditResult"]

DECODERS = ("flowedit", "inverted")  # FlowEdit's velocity-difference ODE; the inverted flow with same-level blending


@dataclass
class FlowEditResult(EditResult):
    """An EditResult that also names the flow decoder and the model family."""

    decoder: str = "flowedit"
    family: str = ""

    def to_dict(self) -> dict:
        return {**super().to_dict(), "decoder": self.decoder, "family": self.family}


class FlowEditor:
    """Text-driven masked editing on an SD3 or FLUX model. Build with `FlowEditor.from_pretrained(folder)`."""

    def __init__(self, components: FlowComponents, *, progress: bool = True, decoder: str = "flowedit",
                 source_guidance: float = 3.5):
        if decoder not in DECODERS:
            raise ValueError(f"unknown flow decoder {decoder!r}; available: {', '.join(DECODERS)}")
        self.components = components
        self.components.progress = {"disable": not progress}
        self.decoder = decoder  # the decoder of edit() calls that name none
        self.source_guidance = source_guidance  # FlowEdit's guidance of the source velocity (the paper: 3.5 for SD3)

    @classmethod
    def from_components(cls, components: FlowComponents, **kwargs) -> "FlowEditor":
        return cls(components, **kwargs)

    @classmethod
    def from_pretrained(cls, model: str | Path, *, family: str | None = None, torch_dtype: torch.dtype | str | None = None,
                        device: str | torch.device | None = None, **kwargs) -> "FlowEditor":
        """An SD3 or FLUX diffusers folder (model_index.json's `_class_name` says which), or a hub id with its
        `family` ("sd3" or "flux") named."""
        from ..devices import parse_dtype

        parts = load_flow_components(model, family=family, torch_dtype=parse_dtype(torch_dtype), device=device)
        return cls(parts, **kwargs)

    name = property(lambda self: self.components.name)
    device = property(lambda self: self.components.device)
    dtype = property(lambda self: self.components.dtype)
    vae_scale_factor = property(lambda self: self.components.vae_scale_factor)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "FlowEditor":
        self.components.to(device, dtype)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        self.components.progress = dict(kwargs)

    # ------------------------------------------------------------------ the mask
    @torch.no_grad()
    def mask(self, image, source, target, *, seed=None, generator=None, options: EditOptions | None = None,
             **overrides) -> MaskResult:
        """The velocity-difference mask of each (image, target) job; `edit(..., mask=result)` edits with it."""
        options = resolve_options(options, overrides)
        batch = self._batch(image, source, target, options)
        base, seeds = resolve_seeds(seed, generator, len(batch.images))
        masks = self._masks(batch, self.components.encode_images(batch.pixels), options, NoiseStreams(seeds))
        binary, soft = mask_images(masks.soft, masks.pixel, tuple(batch.pixels.shape[-2:]), batch.size)
        return MaskResult(masks.soft, masks.latent, masks.pixel, binary, soft, base, list(seeds), masks.changes,
                          empty_mask_warnings(batch, masks, options))

    def _batch(self, image, source, target, options: EditOptions) -> Batch:
        batch = prepare_batch(image, source, target, vae_scale_factor=self.components.grid, max_pixels=options.max_pixels)
        if not all(isinstance(p, str) for p in list(batch.sources) + list(batch.job_target)):
            raise ValueError("the flow editor takes prompts as text, not embeddings")
        return batch

    def _masks(self, batch: Batch, latents: torch.Tensor, options: EditOptions, noise: NoiseStreams) -> JobMasks:
        """|v(target) - v(reference)| at mask_strength over mask_noises noises, then DiffEdit's clamp, smoothing and
        thresholds. (DiffEdit's per-change maps are not merged here: one map per target prompt.)"""
        parts, n = self.components, options.mask_noises
        reference = [options.mask_reference if options.mask_reference is not None else batch.sources[b]
                     for b in batch.job_image]
        eps = torch.stack([noise.randn("mask", b, (n, *latents.shape[1:])) for b in range(latents.shape[0])])
        index = torch.tensor(batch.job_image)
        v_ref = parts.field(parts.encode_prompts(reference))
        v_tar = parts.field(parts.encode_prompts(batch.job_target))
        with parts.bar(2 * n * len(batch.job_image), "mask") as bar:
            maps = velocity_difference_maps(v_ref, v_tar, latents[index].float(), eps[index].float(), options.mask_strength)
            bar.update(2 * n * len(batch.job_image))
        check_finite(maps, "the mask pass")
        normalized = normalize_maps(maps, clamp=options.mask_clamp, quantile=options.mask_quantile,
                                    mean_ratio=options.mask_mean_ratio, per_image=options.mask_per_image)
        guide = (batch.pixels[batch.job_image] + 1.0) / 2.0 if options.mask_snap else None
        soft, latent, pixel = threshold_normalized(normalized, options, tuple(batch.pixels.shape[-2:]), batch.size, guide)
        return JobMasks(soft, latent, pixel, [[] for _ in batch.job_image])

    # ------------------------------------------------------------------ the edit
    @torch.no_grad()
    def edit(self, image, source, target, *, mask=None, seed=None, generator=None, options: EditOptions | None = None,
             decoder: str | None = None, **overrides) -> FlowEditResult:
        """Edit each (image, target) job inside its mask: the velocity-difference mask, or `mask` (a MaskResult of
        `mask()` on the same images and targets, or the user's masks: white = edit). decoder: "flowedit" or
        "inverted" (default: the editor's). EditOptions used: num_inference_steps, strength (the share of the schedule
        decoded; FlowEdit's paper: 0.66), guidance_scale (the target's), negative_prompt (inverted: the guidance's
        unconditional prompt; None = the source prompt), the mask_* options, and the composite's."""
        decoder = decoder or self.decoder
        if decoder not in DECODERS:
            raise ValueError(f"unknown flow decoder {decoder!r}; available: {', '.join(DECODERS)}")
        options = resolve_options(options, overrides)
        parts, timings = self.components, {}
        batch = self._batch(image, source, target, options)
        base, seeds = resolve_seeds(seed, generator, len(batch.images))
        noise = NoiseStreams(seeds)
        # 1. The image latents and the masks (computed, previewed, or the user's)
        with parts.timed(timings, "vae_encode"):
            latents = parts.encode_images(batch.pixels).float()
        with parts.timed(timings, "mask"):
            if isinstance(mask, MaskResult):
                masks = PrecomputedMask(mask)(parts, batch, latents, options, noise)
            elif mask is not None:
                masks = UserMask(mask)(parts, batch, latents, options, noise)
            else:
                masks = self._masks(batch, latents, options, noise)
        # 2. The decoder under the latent mask, from sigma = strength down to 0
        sigmas = parts.sigmas(options.num_inference_steps, tuple(latents.shape[-2:]))
        start = start_index(sigmas, options.strength)
        with parts.timed(timings, "decoding"):
            run = self._flowedit if decoder == "flowedit" else self._inverted
            edited = run(batch, latents, masks.latent, sigmas, start, options, noise)
        check_finite(edited, f"the {decoder} decoding")
        # 3. Pixels, and the composite: every pixel outside the mask stays the input's
        h, w = batch.size
        with parts.timed(timings, "vae_decode"):
            decoded = parts.decode_latents(edited)[:, :, :h, :w]
        images_u8, pixel = CompositeFinisher()(parts, batch, decoded, masks, options)
        return self._result(batch, masks, images_u8, pixel, options, decoder, base, seeds, timings)

    def _flowedit(self, batch, latents, latent_mask, sigmas, start, options, noise) -> torch.Tensor:
        """FlowEdit from the source latents, one fresh noise per step and image (its "flowedit" stream)."""
        parts, index = self.components, torch.tensor(batch.job_image)
        empty = parts.encode_prompts([""])
        v_src = parts.field(parts.encode_prompts(batch.job_sources), empty, self.source_guidance)
        v_tar = parts.field(parts.encode_prompts(batch.job_target), empty, options.guidance_scale)
        steps = sigmas.shape[0] - 1
        draws = torch.stack([noise.randn("flowedit", b, (steps, *latents.shape[1:])) for b in range(latents.shape[0])])
        with parts.bar(steps - start, "flowedit") as bar:
            return flowedit(v_src, v_tar, latents[index], sigmas, start, lambda i: draws[index, i], latent_mask.float(),
                            callback=lambda i, z: bar.update(1))

    def _inverted(self, batch, latents, latent_mask, sigmas, start, options, noise) -> torch.Tensor:
        """Euler inversion with each image's source prompt (unguided), then guided target decoding with the background
        of the same level."""
        parts = self.components
        negative = [options.negative_prompt if options.negative_prompt is not None else s for s in batch.job_sources]
        steps = sigmas.shape[0] - 1 - start
        with parts.bar(2 * steps, "inverted flow") as bar:
            levels = invert_flow(parts.field(parts.encode_prompts(batch.sources)), latents, sigmas, start)
            bar.update(steps)
            v_tar = parts.field(parts.encode_prompts(batch.job_target), parts.encode_prompts(negative),
                                options.guidance_scale)
            return masked_flow_decode(v_tar, levels, sigmas, latent_mask.float(), batch.job_image,
                                      callback=lambda k, x: bar.update(1))

    def _result(self, batch, masks, images_u8, pixel, options, decoder, base, seeds, timings) -> FlowEditResult:
        from ..callbacks import as_output

        binary, soft = mask_images(masks.soft, pixel, tuple(batch.pixels.shape[-2:]), batch.size)
        warnings = empty_mask_warnings(batch, masks, options)
        return FlowEditResult(
            images=as_output(images_u8, None, "pil"), mask_images=binary, soft_images=soft, mask=masks.latent,
            soft=masks.soft, sources=[str(s) for s in batch.job_sources], targets=[str(t) for t in batch.job_target],
            job_image=list(batch.job_image), seed=base, options=options, model=self.name, seeds=list(seeds),
            timings=timings, candidates=[decoder], chosen=[0] * len(batch.job_image),
            mask_changes=[[] for _ in batch.job_image], edited=[bool(p.any()) for p in pixel], warnings=warnings,
            decoder=decoder, family=self.components.family,
        )
