"""A mask source from cross-attention (issue 20): where the target prompt's changed words look.

One UNet pass at `mask_strength` with the target prompt, `mask_noises` noises per image (the mask stream, as the
noise difference draws them), recording the cross-attention maps (attention.py); each job's map is the share of its
changed words' tokens in the attention each cell gives the prompt's words (all its words for prompt embeddings or a
target with no word changed), then rescaled and thresholded like the noise difference
(stages/masking.threshold_normalized). A one-pass mask in the
manner of InstDiffEdit (Zou et al. 2024): half the UNet rows of the noise difference, no reference prompt.
`noise_and_attention` (EditOptions.mask_source "both") combines this map with the noise difference's.
"""

from __future__ import annotations

import torch

from ..attention import capture_cross_attention, changed_token_positions
from ..components import Components
from ..masks import normalize_maps
from ..schedule import ddim_grid
from .batch import Batch
from .masking import JobMasks, NoiseDifferenceMask, mask_changes, threshold_normalized
from .noise import NoiseStreams
from .registry import register

__all__ = ["CrossAttentionMask", "CombinedMask", "combine_maps", "finish_maps"]


def rescale(raw: torch.Tensor, options) -> torch.Tensor:
    """Raw maps (J, h, w) -> [0, 1] by the options' clamp (masks.normalize_maps)."""
    return normalize_maps(raw, clamp=options.mask_clamp, quantile=options.mask_quantile,
                          mean_ratio=options.mask_mean_ratio, per_image=options.mask_per_image)


def finish_maps(raw: torch.Tensor, batch: Batch, options, changes: list[list[str]], *, rescaled: bool = False) -> JobMasks:
    """Raw maps (J, h, w) rescaled (unless `rescaled`) and thresholded as the noise difference's."""
    normalized = raw if rescaled else rescale(raw, options)
    guide = (batch.pixels[batch.job_image] + 1.0) / 2.0 if options.mask_snap else None
    soft, latent, pixel = threshold_normalized(normalized, options, tuple(batch.pixels.shape[-2:]), batch.size, guide)
    return JobMasks(soft, latent, pixel, changes or [[] for _ in range(len(batch.job_target))])


@register("mask", "cross_attention")
class CrossAttentionMask:
    """The changed words' cross-attention map of each job, rescaled and thresholded as the noise difference."""

    def __call__(self, parts: Components, batch: Batch, latents: torch.Tensor, options, noise: NoiseStreams) -> JobMasks:
        return finish_maps(self.attention_maps(parts, batch, latents, options, noise), batch, options, [])

    @classmethod
    def attention_maps(cls, parts: Components, batch: Batch, latents: torch.Tensor, options, noise: NoiseStreams) -> torch.Tensor:
        """The changed words' share of the cross-attention, (J, h, w), before normalisation."""
        grid = ddim_grid(parts.scheduler, options.num_inference_steps, options.mask_strength)
        t, alpha = int(grid.timesteps[-1]), float(grid.alphas[-1])
        n, jobs = options.mask_noises, len(batch.job_target)
        eps = torch.stack([noise.randn("mask", b, (n, *latents.shape[1:])) for b in range(latents.shape[0])])
        noisy = alpha**0.5 * latents.unsqueeze(1) + (1 - alpha) ** 0.5 * eps.to(parts.device, parts.dtype)
        x = noisy[batch.job_image].flatten(0, 1)  # (J * n, C, h, w): each job's image under its n noises
        cond = parts.encode_prompts(batch.job_target).repeat_interleave(n, 0)
        with capture_cross_attention(parts.unet) as store, parts.bar(1, "mask") as bar:
            parts.unet(x, torch.full((len(x),), t, device=x.device), encoder_hidden_states=cond)  # plain: traces skip processors
            bar.update()
        maps = store.maps(tuple(latents.shape[-2:])).reshape(jobs, n, -1, *latents.shape[-2:]).mean(1)  # (J, T, h, w)
        return torch.stack([cls._word_map(parts, maps[j], batch.sources[b], target)
                            for j, (b, target) in enumerate(zip(batch.job_image, batch.job_target))])  # (J, h, w)

    @staticmethod
    def _word_map(parts: Components, maps: torch.Tensor, source, target) -> torch.Tensor:
        """(h, w): the changed words' share of the attention that each cell gives the prompt's words, the start and end
        tokens left out (they draw most of it, as in Prompt-to-Prompt); every word's for prompt embeddings or a target
        with no word changed."""
        if isinstance(target, str):
            length = len(parts.tokenizer(target, truncation=True).input_ids)
            content = list(range(1, max(2, length - 1)))
            changed = changed_token_positions(parts.tokenizer, source, target) if isinstance(source, str) else []
        else:
            content = list(range(1, maps.shape[0]))
            changed = []
        content = [p for p in content if p < maps.shape[0]] or [0]
        changed = [p for p in changed if p in content] or content
        return maps[changed].sum(0) / maps[content].sum(0).clamp_min(1e-12)


COMBINE = "product"  # how the `both` source combines the two rescaled maps (combine_maps; docs/engine.md's IoU check)


def combine_maps(noise_map: torch.Tensor, attention_map: torch.Tensor, how: str = COMBINE) -> torch.Tensor:
    """Two maps in [0, 1] -> one: "product" is their geometric mean sqrt(a b) (a cell needs both; the thresholds keep
    their scale), "mean" their average (either may carry a cell)."""
    if how == "product":
        return (noise_map * attention_map).clamp_min(0).sqrt()
    if how == "mean":
        return (noise_map + attention_map) / 2
    raise ValueError(f"unknown combination {how!r}; available: product, mean")


@register("mask", "noise_and_attention")
class CombinedMask:
    """The noise difference and the changed words' cross-attention, each rescaled to [0, 1] (the options' clamp),
    combined (combine_maps), then thresholded as either: the same mask noises feed both passes."""

    how = COMBINE

    def __call__(self, parts: Components, batch: Batch, latents: torch.Tensor, options, noise: NoiseStreams) -> JobMasks:
        changes = mask_changes(batch, options)
        noise_map = rescale(NoiseDifferenceMask.noise_maps(parts, batch, latents, options, noise, changes), options)
        attention = rescale(CrossAttentionMask.attention_maps(parts, batch, latents, options, noise), options)
        return finish_maps(combine_maps(noise_map, attention, self.how), batch, options, changes, rescaled=True)
