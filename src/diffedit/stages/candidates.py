"""Candidates: which decodings to try for every job, and the selector that keeps one per job.

No single encoding ratio suits every edit, so the editor decodes a few candidates with the same mask and
keeps, per job, the one the model itself scores as most like the target (rerank.py). Selector protocol:
`selector(parts, batch, images, latent_mask, options, noise) -> (chosen index per job, scores per job)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..components import Components
from ..images import from_uint8, pad_to_multiple
from ..masks import dilate
from ..rerank import denoising_errors, rerank_scores
from ..schedule import DDIMGrid, steps_at
from .batch import Batch
from .decoding import noised_start
from .noise import NoiseStreams
from .registry import INVERSIONS, method, register

__all__ = ["Candidate", "plan_candidates", "stack_candidates", "ModelScoreSelector"]


@dataclass(frozen=True)
class Candidate:
    """One decoding to try for every job."""

    strength: float  # encoding ratio r the decoding starts from
    caption: bool = False  # inverted with the source prompt (the paper's caption encoding) instead of unconditionally
    noise: float = 0.0  # share of the top level's variance replaced by fresh noise inside the mask
    inpaint: bool = False  # decoded by the inpainting UNet (stages/inpainting.py) instead of the model's own

    @property
    def label(self) -> str:
        return (f"r={self.strength:g}" + (" caption" if self.caption else "") + (f" noise {self.noise:g}" if self.noise else "")
                + (" inpaint" if self.inpaint else ""))


def plan_candidates(options, sources: list, inpainter: bool = False) -> list[Candidate]:
    """The unconditional decoding at `strength` first (by the inpainting UNet when one is loaded,
    `inpaint_candidate` and the method edits inside a mask), then the extra ratios, noise candidates (from the top
    unconditional level) and the caption candidate at `caption_strength` (only when every source prompt says
    something and no inversion prompt is set). An inversion that walks with the source prompt already
    (INVERSIONS[...].source_walk) has its caption candidate read that walk at `caption_strength`: another ratio, not
    another walk."""
    out = [Candidate(options.strength, inpaint=inpainter and options.inpaint_candidate and method(options.method).inpaint)]
    out += [c for c in dict.fromkeys(Candidate(r) for r in options.extra_strengths) if c not in out]
    top = max(c.strength for c in out)
    out += [c for c in dict.fromkeys(Candidate(top, noise=s) for s in options.noise_candidates) if c not in out]
    if out[0].inpaint and Candidate(options.strength) in out[1:]:
        out.remove(Candidate(options.strength))  # an extra ratio equal to `strength` is the inpainted one
    spoken = all(not isinstance(s, str) or s.strip() for s in sources)
    if options.caption_candidate and spoken and not options.inversion_prompt:
        caption = Candidate(options.caption_strength or options.strength, caption=not INVERSIONS[options.inversion].source_walk)
        out += [caption] if caption not in out else []
    return out


def stack_candidates(
    walks: dict[str, torch.Tensor], candidates: list[Candidate], job_image: list[int], latent_mask: torch.Tensor,
    noise: NoiseStreams, grid: DDIMGrid, num_inference_steps: int, steps: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, list[int], dict[str, torch.Tensor]]:
    """Levels (N + 1, K * J, C, h, w) of every candidate's jobs, candidate-major, for one batched decoding on `grid`
    (the highest ratio's), the level each row starts at, and the per-step state of the walks they read (`steps`:
    walk -> {name: (N_k, B, ...)}) stacked the same way, name -> (N, K * J, ...). Rows of a lower ratio are padded
    above their start with their top level (state: zeros), which the decoder never reads. A candidate that is not
    the caption one reads the main walk: "unconditional" (ddim inversion) or "source" (the others)."""
    levels, starts, state = [], [], {}
    main = "unconditional" if "unconditional" in walks else "source"
    for c in candidates:
        n = steps_at(num_inference_steps, c.strength)
        kind = "caption" if c.caption else main
        walk = walks[kind][: n + 1, job_image]  # (n + 1, J, C, h, w)
        if c.noise:  # each job's top level mixed with fresh noise inside its own mask
            walk = noised_start(walk, latent_mask, c.noise, job_image, noise)
        levels.append(torch.cat([walk, walk[-1:].expand(grid.num_steps - n, *walk.shape[1:])]))
        starts += [n] * len(job_image)
        for name, t in (steps or {}).get(kind, {}).items():
            rows = t[:n, job_image]  # (n, J, ...)
            state.setdefault(name, []).append(torch.cat([rows, rows.new_zeros(grid.num_steps - n, *rows.shape[1:])]))
    return torch.cat(levels, dim=1), starts, {name: torch.cat(parts, dim=1) for name, parts in state.items()}


@register("selector", "model_score")
class ModelScoreSelector:
    """Keep the candidate whose composite the target prompt explains best against the source (a diffusion
    classifier, Li et al. 2023): source error minus target error inside the latent mask grown by one cell,
    plus `rerank_unconditional` times the empty prompt's error minus the target's."""

    @torch.no_grad()
    def __call__(
        self, parts: Components, batch: Batch, images: list[torch.Tensor], latent_mask: torch.Tensor, options,
        noise: NoiseStreams,
    ) -> tuple[list[int], list[list[float]]]:
        k, j = len(images), len(batch.job_image)
        if k == 1:
            return [0] * j, []
        # 1. Encode every candidate's composite (uint8 (J, 3, H, W) each) again
        pixels = from_uint8(torch.cat(images))  # (K * J, 3, H, W), candidate-major
        latents = parts.encode_images(pad_to_multiple(pixels, parts.vae_scale_factor))
        latents = latents.reshape(k, j, *latents.shape[1:])
        region = dilate(latent_mask.float(), 1) > 0.5  # (J, h, w)
        # 2. Noise levels and prompts: source, target (and the empty prompt with a weight on it)
        train_steps = parts.scheduler.config.num_train_timesteps
        timesteps = [min(train_steps - 1, int(round(level * train_steps))) for level in options.rerank_levels]
        sources = parts.encode_prompts(batch.job_sources)
        targets = parts.encode_prompts(batch.job_target)
        weight = options.rerank_unconditional
        empty = parts.encode_prompts([""]) if weight else None
        shape = (len(timesteps), options.rerank_noises, *latents.shape[2:])
        # 3. Per job: errors of every candidate under each prompt, with noises the job's candidates share
        scores = []
        with parts.bar(j, "rerank") as bar:
            for i, b in enumerate(batch.job_image):
                eps = noise.randn("rerank", b, shape).to(parts.device, parts.dtype)
                errors = denoising_errors(
                    parts.denoiser, latents[:, i], torch.stack([sources[i], targets[i], *([empty[0]] if weight else [])]),
                    region[i].expand(k, -1, -1), parts.scheduler.alphas_cumprod, timesteps, eps,
                    prediction_type=parts.scheduler.config.prediction_type, max_batch=options.mask_batch_size or 256,
                )
                scores.append([float(v) for v in rerank_scores(errors, unconditional=2 if weight else None, weight=weight)])
                bar.update()
        return [int(torch.tensor(row).argmax()) for row in scores], scores
