"""Input checks and conversions of DiffEditPipeline (pipeline.py), kept apart so the pipeline reads as its three calls."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .schedule import DDIMGrid, ddim_step

__all__ = [
    "UNetWithKwargs",
    "batch_size_of",
    "check_call",
    "check_decode_inputs",
    "check_generator",
    "check_inverse_scheduler",
    "check_mask_inputs",
    "check_prompt_inputs",
    "clean_level_estimate",
    "mask_output",
    "prepare_mask_image",
    "prompt_list",
    "same_negatives",
    "step_callback",
    "to_levels",
]


class UNetWithKwargs:
    """A UNet whose every call also gets `cross_attention_kwargs`.

    The library's loops call `unet(x, t, encoder_hidden_states=...)` only."""

    def __init__(self, unet, cross_attention_kwargs: dict):
        self.unet, self.kwargs = unet, dict(cross_attention_kwargs)

    def __call__(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=self.kwargs)


def check_prompt_inputs(prompt, prompt_embeds, negative_prompt=None, negative_prompt_embeds=None, name: str = "prompt"):
    """diffusers' check_inputs for one prompt and its negative: exactly one of string or embeddings, matching shapes."""
    if prompt is not None and prompt_embeds is not None:
        raise ValueError(f"pass either `{name}` or `{name}_embeds`, not both")
    if prompt is None and prompt_embeds is None:
        raise ValueError(f"pass `{name}` or `{name}_embeds`")
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise ValueError(f"`{name}` must be a str or a list of str, got {type(prompt).__name__}")
    if prompt_embeds is not None and prompt_embeds.ndim != 3:
        raise ValueError(f"`{name}_embeds` must be (batch, tokens, dim), got shape {tuple(prompt_embeds.shape)}")
    negative = name.replace("prompt", "negative_prompt") if "_" in name else "negative_prompt"
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError(f"pass either `{negative}` or `{negative}_embeds`, not both")
    if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(
            f"`{name}_embeds` {tuple(prompt_embeds.shape)} and `{negative}_embeds` "
            f"{tuple(negative_prompt_embeds.shape)} must have one shape"
        )


def check_mask_inputs(image, num_maps_per_mask, mask_thresholding_ratio, output_type) -> None:
    """generate_mask's checks besides the prompts'."""
    if image is None:
        raise ValueError("`image` must be given")
    if not isinstance(num_maps_per_mask, int) or num_maps_per_mask <= 0:
        raise ValueError(f"num_maps_per_mask must be a positive integer, got {num_maps_per_mask!r}")
    if mask_thresholding_ratio is None or mask_thresholding_ratio <= 0:
        raise ValueError(f"mask_thresholding_ratio must be positive, got {mask_thresholding_ratio!r}")
    check_call(output_type, 1, kinds=("np", "pil", "pt"))


def check_decode_inputs(mask_image, image_latents, eta, latents, num_images_per_prompt) -> None:
    """__call__'s checks besides the prompts': what DiffEdit's deterministic decoding has no use for raises."""
    if mask_image is None:
        raise ValueError("`mask_image` must be given: compute it with `generate_mask()`")
    if image_latents is None:
        raise ValueError("`image_latents` must be given: compute them with `invert()`")
    if eta != 0:
        raise ValueError("eta must be 0: DiffEditPipeline decodes with deterministic DDIM")
    if latents is not None:
        raise ValueError("`latents` is not used: decoding starts from `image_latents`")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")


def batch_size_of(prompt, prompt_embeds) -> int:
    """Batch size a prompt (str, list) or its embeddings (B, L, D) stand for."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def prompt_list(prompt, batch_size: int, name: str) -> list[str]:
    """A str (or None: "") repeated to the batch, or a list of the batch's length."""
    prompts = [prompt or ""] * batch_size if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch_size:
        raise ValueError(f"`{name}` has {len(prompts)} prompts for a batch of {batch_size}")
    return prompts


def check_generator(generator, batch_size: int) -> None:
    """A list of generators must hold one per image, as in diffusers."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"got a list of {len(generator)} generators for a batch of {batch_size}; pass one per image")


def same_negatives(target_negative, target_negative_embeds, source_negative, source_negative_embeds) -> bool:
    """Whether the mask pass's two negative prompts are the same, so that guidance would cancel in the normalisation."""
    if target_negative_embeds is None and source_negative_embeds is None:
        t, s = ([p or ""] if p is None or isinstance(p, str) else list(p) for p in (target_negative, source_negative))
        t, s = (t * len(s) if len(t) == 1 else t), (s * len(t) if len(s) == 1 else s)
        return t == s
    if target_negative_embeds is not None and source_negative_embeds is not None:
        return target_negative_embeds.shape == source_negative_embeds.shape and torch.equal(
            target_negative_embeds, source_negative_embeds.to(target_negative_embeds)
        )
    return False


def check_inverse_scheduler(scheduler, inverse_scheduler) -> None:
    """Inversion walks the scheduler's DDIM grid; an inverse scheduler with another noise schedule would not be honoured."""
    if inverse_scheduler is None:
        return
    same = torch.allclose(
        torch.as_tensor(inverse_scheduler.alphas_cumprod, dtype=torch.float64),
        torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64),
    ) and inverse_scheduler.config.prediction_type == scheduler.config.prediction_type
    if not same:
        raise ValueError(
            "`inverse_scheduler` has another noise schedule than `scheduler`; DiffEditPipeline inverts on the scheduler's "
            "DDIM grid: set `inverse_scheduler = DDIMInverseScheduler.from_config(scheduler.config)` or None"
        )


def prepare_mask_image(mask_image, batch_size: int, latent_hw: tuple[int, int], factor: int) -> torch.Tensor:
    """diffusers' mask inputs (PIL, arrays, tensors; (h, w), (B, h, w), (B, 1, h, w)) -> (B, 1, h, w) float in {0, 1}.

    A mask at pixel resolution (h * factor, w * factor) is brought to the latent grid: a cell is on if any pixel is.
    """
    masks = mask_image if isinstance(mask_image, list) else [mask_image]
    arrays = []
    for m in masks:
        if isinstance(m, PIL.Image.Image):
            m = np.asarray(m.convert("L"), dtype=np.float32) / 255.0
        arrays.append(torch.as_tensor(np.asarray(m) if not isinstance(m, torch.Tensor) else m).detach().float().cpu())
    mask = torch.stack(arrays) if arrays[0].ndim < 3 else torch.cat(arrays)  # as diffusers: (h, w) items stack
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)  # (B, 1, h, w)
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"`mask_image` must have one channel: (h, w), (B, h, w) or (B, 1, h, w); got {tuple(mask.shape)}")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError("`mask_image` must be in [0, 1]")
    mask = (mask >= 0.5).float()  # diffusers' binarisation
    h, w = latent_hw
    if tuple(mask.shape[-2:]) == (h * factor, w * factor) and factor > 1:
        mask = F.max_pool2d(mask, factor)
    if tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(f"`mask_image` is {tuple(mask.shape[-2:])}; the latents need ({h}, {w}) or ({h * factor}, {w * factor})")
    if mask.shape[0] == 1:
        mask = mask.expand(batch_size, -1, -1, -1)
    if mask.shape[0] != batch_size:
        raise ValueError(f"`mask_image` has a batch of {mask.shape[0]}; the prompts give {batch_size}")
    return mask


def to_levels(image_latents, batch_size: int, num_steps: int) -> tuple[torch.Tensor, bool]:
    """`image_latents` (B, L, C, h, w), noisiest first -> (levels (L, B, C, h, w) with level k at index k, has clean level).

    L = N + 1: ours (DiffEditPipeline.invert), levels N..0. L = N: diffusers' invert, levels N..1 (no clean level).
    A list of 5-D tensors is concatenated and a 4-D tensor (B * L, C, h, w) reshaped, as diffusers does.
    """
    if isinstance(image_latents, list) and all(isinstance(x, torch.Tensor) for x in image_latents):
        image_latents = torch.cat(image_latents)
    if not isinstance(image_latents, torch.Tensor):
        raise TypeError("`image_latents` must be a tensor (B, L, C, h, w) from `invert(...).latents`")
    if image_latents.ndim == 4:
        image_latents = image_latents.reshape(batch_size, -1, *image_latents.shape[-3:])
    if image_latents.ndim != 5 or image_latents.shape[0] != batch_size:
        raise ValueError(f"`image_latents` must be (batch {batch_size}, levels, C, h, w), got {tuple(image_latents.shape)}")
    length = image_latents.shape[1]
    if length not in (num_steps + 1, num_steps):
        raise ValueError(
            f"`image_latents` holds {length} levels, but inpaint_strength and num_inference_steps give {num_steps} steps: "
            f"pass {num_steps + 1} levels (DiffEditPipeline.invert) or {num_steps} (diffusers' invert) with the same "
            "num_inference_steps and inpaint_strength as the inversion"
        )
    return image_latents.detach().transpose(0, 1).flip(0).contiguous(), length == num_steps + 1


@torch.no_grad()
def clean_level_estimate(unet, lowest: torch.Tensor, cond: torch.Tensor, grid: DDIMGrid) -> torch.Tensor:
    """Level 0 from level 1 by one deterministic DDIM step conditioned on `cond`: for diffusers' latents, which lack it."""
    t = torch.full((lowest.shape[0],), int(grid.timesteps[1]), device=lowest.device, dtype=torch.long)
    out = unet(lowest, t, encoder_hidden_states=cond).sample
    return ddim_step(out, lowest, float(grid.alphas[1]), float(grid.alphas[0]), grid.prediction_type)


def mask_output(mask: torch.Tensor, output_type: str):
    """Binary latent masks (B, h, w) -> int64 array (B, h, w) ("np", as diffusers), tensor ("pt") or "L" images ("pil")."""
    array = mask.to(torch.int64).cpu().numpy()
    if output_type == "np":
        return array
    if output_type == "pt":
        return torch.from_numpy(array)
    return [PIL.Image.fromarray((m * 255).astype(np.uint8), mode="L") for m in array]


def check_call(output_type: str, callback_steps, kinds: tuple[str, ...] = ("pil", "np", "pt", "latent")) -> None:
    """diffusers' checks of output_type and callback_steps."""
    if output_type not in kinds:
        raise ValueError(f"output_type must be one of {kinds}, got {output_type!r}")
    if not isinstance(callback_steps, int) or callback_steps <= 0:
        raise ValueError(f"callback_steps must be a positive integer, got {callback_steps!r}")


def step_callback(bar, callback, callback_steps: int, timestep_of: Callable[[int], int], step_of: Callable[[int], int]):
    """The library loops' callback(level, x) -> a progress bar update, and diffusers' callback(step, timestep, latents)
    every `callback_steps` steps; `step_of` and `timestep_of` map the level reached to diffusers' step and timestep."""

    def on_level(level: int, x: torch.Tensor) -> None:
        bar.update()
        step = step_of(level)
        if callback is not None and step % callback_steps == 0:
            callback(step, timestep_of(level), x)

    return on_level
