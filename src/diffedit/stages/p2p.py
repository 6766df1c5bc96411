"""Prompt-to-Prompt decoding (Hertz et al. 2022; issue 20): a source branch and a target branch decoded together.

Both branches start from the same inverted latent (each candidate's level of the DDIM inversion) and walk down with
classifier-free guidance, the source branch with the source prompt, the target branch with the target prompt, while
attention_control.py edits the target's attention from the source's (cross- and self-attention replacement,
re-weighting). Two decoders, registered by name:

- `p2p`: the paper's method; with `local_blend`, the target keeps the source branch's latents outside the region the
  changed words' cross-attention marks, at every step. Its method edits everywhere (`whole` mask source): the decoder
  alone decides what changes.
- `masked_p2p`: DiffEdit's decoding with attention control: outside DiffEdit's mask the target takes the inverted
  latent of the same level at every step (sampling.masked_denoise's blend), inside it the controlled decoding.

Both branches share the unconditional embeddings the editor passes (the negative prompt; by default the source
prompt). Attention control needs the plain UNet (`parts.unet`), not a traced one: it runs through the processors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import torch

from ..attention_control import (
    AttentionController, blend_words, control_attention, local_blend_mask, parse_reweight, token_edits,
)
from ..components import Components
from ..inversion import guided_unet_output
from ..schedule import DDIMGrid, ddim_step, ddpm_step
from .batch import Batch
from .masking import JobMasks
from .noise import NoiseStreams
from .registry import METHODS, method, register, stage

__all__ = ["ATTENTION_OPTIONS", "MaskedPromptToPromptDecoder", "PromptToPromptDecoder", "WholeMask",
           "check_attention_options", "check_steps", "p2p_denoise"]

ATTENTION_OPTIONS = ("cross_replace", "self_replace", "reweight", "local_blend", "blend_threshold")  # EditOptions'


@register("mask", "whole")
class WholeMask:
    """Every latent cell and pixel: the decoder alone decides what changes (Prompt-to-Prompt, with its local blend)."""

    def __call__(self, parts: Components, batch: Batch, latents: torch.Tensor, options, noise: NoiseStreams) -> JobMasks:
        jobs, (h, w) = len(batch.job_image), batch.size
        latent = torch.ones(jobs, *latents.shape[-2:], dtype=torch.bool)
        return JobMasks(latent.float(), latent, torch.ones(jobs, h, w, dtype=torch.bool), [[] for _ in range(jobs)],
                        computed=False)


@torch.no_grad()
def p2p_denoise(
    unet, controller: AttentionController, levels: torch.Tensor, source_cond: torch.Tensor, cond: torch.Tensor,
    uncond: torch.Tensor | None, grid: DDIMGrid, *, guidance_scale: float, starts: list[int],
    blend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None, steps: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM (Song et al. 2021, eq. 12) of both branches from each row's start level, one UNet call a step with the
    controller told the rows in it. levels: (N + 1, R, C, h, w); source_cond, cond, uncond: (R, L, D), uncond shared
    by both branches (None: no guidance). blend(level, rows, source, target) returns the target latents a step lands
    on; callback(level, target latents of every row) may replace them. Returns (source, target) latents at level 0.

    steps: an inversion's per-step state (N, R, ...), row k - 1 for the step from level k, as sampling.masked_denoise
    reads it: "uncond" replaces uncond in both branches (null-text with Prompt-to-Prompt, Mokady et al. 2023),
    "noise" makes both branches' steps DDPM's with that z (edit-friendly DDPM), "offset" is added to the source
    branch alone (direct inversion, Ju et al. 2023: the source branch stays on the inverted path)."""
    steps = check_steps(steps, "p2p")
    rows = torch.arange(levels.shape[1], device=levels.device)
    begin = torch.tensor(starts, device=levels.device)
    source = levels[begin, rows]  # (R, C, h, w): each row's top level, where both branches start
    target = source.clone()
    for k in range(max(starts), 0, -1):
        on = (begin >= k).nonzero().flatten()  # the rows decoding at this level
        controller.at_step(on, [s - k for s in begin[on].tolist()], begin[on].tolist())
        x = torch.cat([source[on], target[on]])
        c = torch.cat([source_cond[on], cond[on]])
        u = steps["uncond"][k - 1, on] if "uncond" in steps else None if uncond is None else uncond[on]
        out = guided_unet_output(unet, x, int(grid.timesteps[k]), c, None if u is None else torch.cat([u, u]), guidance_scale)
        alpha, alpha_next = float(grid.alphas[k]), float(grid.alphas[k - 1])
        if "noise" in steps:
            z = steps["noise"][k - 1, on]
            s, t = ddpm_step(out, x, alpha, alpha_next, torch.cat([z, z]), grid.prediction_type).chunk(2)
        else:
            s, t = ddim_step(out, x, alpha, alpha_next, grid.prediction_type).chunk(2)
        if "offset" in steps:
            s = s + steps["offset"][k - 1, on]
        source, target = source.clone(), target.clone()  # new tensors every step, as a callback may keep the last one
        source[on], target[on] = s, (t if blend is None else blend(k - 1, on, s, t))
        if callback is not None:
            replaced = callback(k - 1, target)
            if replaced is not None:
                target = replaced
    return source, target


@register("decoder", "p2p")
class PromptToPromptDecoder:
    """Prompt-to-Prompt (Hertz et al. 2022): the target branch decoded beside the source branch under attention
    control; with `local_blend`, the source branch's latents outside the changed words' attention (sec. 3.3)."""

    phase = "denoise"  # the progress bar's name
    attention_options = ATTENTION_OPTIONS  # the EditOptions it reads (check_attention_options)

    def __init__(self, sources: list, targets: list, options):
        self.sources, self.targets, self.options = list(sources), list(targets), options
        self.reweight = parse_reweight(options.reweight)
        self.blend_mask: torch.Tensor | None = None  # (R, 1, h, w) bool: the last step's local blend region

    @classmethod
    def for_edit(cls, batch: Batch, options) -> "PromptToPromptDecoder":
        """Built for one edit (registry.decoder_for): it needs each job's source and target prompt."""
        return cls(batch.job_sources, batch.job_target, options)

    @torch.no_grad()
    def __call__(
        self, parts: Components, levels: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
        grid: DDIMGrid, *, guidance_scale: float, job_image: list[int] | None, starts: list[int] | None = None,
        callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
        steps: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self.branches(parts, levels, mask, cond, uncond, grid, guidance_scale=guidance_scale, job_image=job_image,
                             starts=starts, callback=callback, steps=steps)[1]

    def branches(
        self, parts: Components, levels: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
        grid: DDIMGrid, *, guidance_scale: float, job_image: list[int] | None = None, starts: list[int] | None = None,
        callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
        steps: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, target) latents at level 0 of every row (the decoder protocol's arguments, `steps` the inversion's
        per-step state: p2p_denoise)."""
        steps = check_steps(steps, self.name)
        if job_image is not None:
            levels, steps = levels[:, job_image], {name: t[:, job_image] for name, t in steps.items()}
        rows, jobs = levels.shape[1], len(self.sources)
        if rows % jobs:
            raise ValueError(f"{rows} rows to decode for {jobs} jobs: the rows must be whole candidates")
        k, starts = rows // jobs, [grid.num_steps] * rows if starts is None else list(starts)
        tokens = cond.shape[1] - getattr(parts, "pooled_rows", 0)  # SDXL's pooled row is no token (components_sdxl.py)
        edit = token_edits(parts.tokenizer, self.sources, self.targets, tokens, self.reweight)
        controller = AttentionController(
            edit.repeat(k).to(levels.device), cross_replace=self.options.cross_replace,
            self_replace=self.options.self_replace, blend_size=tuple(levels.shape[-2:]) if self.blends() else None,
        )
        source_cond = parts.encode_prompts(self.sources).repeat(k, 1, 1)
        blend = self.blend(parts, levels, mask, controller, k)
        with control_attention(parts.unet, controller), parts.bar(max(starts), self.phase) as bar:

            def step_end(level: int, x: torch.Tensor):
                bar.update()
                return None if callback is None else callback(level, x)

            return p2p_denoise(parts.unet, controller, levels, source_cond, cond, uncond, grid,
                               guidance_scale=guidance_scale, starts=starts, blend=blend, callback=step_end, steps=steps)

    def blends(self) -> bool:
        """Whether the controller keeps cross-attention maps for a local blend."""
        return self.options.local_blend

    def blend(self, parts: Components, levels: torch.Tensor, mask: torch.Tensor, controller: AttentionController, k: int):
        """P2P's local blend: where the chosen words' attention (both prompts) is below the threshold, the target
        takes the source branch's latents; None without `local_blend`."""
        if not self.options.local_blend:
            return None
        length = controller.edit.mapping.shape[1]
        words = [blend_words(parts.tokenizer, s, t, length, self.reweight) for s, t in zip(self.sources, self.targets)]
        for j, (w_source, w_target) in enumerate(words):
            if not (w_source.any() or w_target.any()):
                raise ValueError(
                    f"edit {j + 1}: the local blend needs words to blend, but the target changes no word of the source and "
                    "reweights none (prompt embeddings have no words); set local_blend=False"
                )
        source_words = torch.stack([w for w, _ in words]).repeat(k, 1).to(levels.device)  # (R, T)
        target_words = torch.stack([w for _, w in words]).repeat(k, 1).to(levels.device)

        def local_blend(level: int, on: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            maps = controller.blend_maps[:, on]  # (2, n, T, h, w)
            region = local_blend_mask(maps[0], maps[1], source_words[on], target_words[on], self.options.blend_threshold)
            if len(on) == levels.shape[1]:
                self.blend_mask = region
            return torch.where(region, target, source)

        return local_blend


@register("decoder", "masked_p2p")
class MaskedPromptToPromptDecoder(PromptToPromptDecoder):
    """DiffEdit's masked decoding under Prompt-to-Prompt's attention control: outside the latent mask the target takes
    the inverted latent of the same level at every step (Couairon et al. 2023, sec. 3.2)."""

    attention_options = ATTENTION_OPTIONS[:3]  # DiffEdit's mask blends: no local blend options

    def blends(self) -> bool:
        return False

    def blend(self, parts: Components, levels: torch.Tensor, mask: torch.Tensor, controller: AttentionController, k: int):
        m = mask.reshape(levels.shape[1], 1, *levels.shape[-2:]).to(levels.device, levels.dtype)  # (R, 1, h, w)

        def same_level(level: int, on: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return m[on] * target + (1 - m[on]) * levels[level, on]

        return same_level


def check_steps(steps: dict[str, torch.Tensor] | None, name: str) -> dict[str, torch.Tensor]:
    """An inversion's per-step state, {} for none; a ValueError for a kind no decoder reads."""
    steps = steps or {}
    unknown = sorted(set(steps) - {"uncond", "offset", "noise"})
    if unknown:
        raise ValueError(f"the {name} decoder knows no per-step state {unknown}")
    return steps


def check_attention_options(options) -> None:
    """A ValueError for attention-control options changed from their defaults for a method whose decoder does not
    read them (EditOptions checks it)."""
    decoder = stage("decoder", method(options.method).decoder)
    used = getattr(decoder, "attention_options", ())
    changed = [f.name for f in fields(options)
               if f.name in ATTENTION_OPTIONS and f.name not in used and getattr(options, f.name) != f.default]
    if changed:
        readers = sorted(name for name, m in METHODS.items()
                         if set(changed) <= set(getattr(stage("decoder", m.decoder), "attention_options", ())))
        raise ValueError(f"{', '.join(changed)} {'applies' if len(changed) == 1 else 'apply'} to method(s) "
                         f"{', '.join(readers) or 'none'}, not {options.method!r}: choose one of them or leave the default")
    parse_reweight(options.reweight)
