"""The loaded models and what every stage asks of them: device, dtype, VAE and text encoding, UNet calls,
progress bars and timings. Stages receive a `Components`, never the editor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from tqdm.auto import tqdm

from .prompts import encode_prompts
from .timing import timed

__all__ = ["Components", "Prompt", "vae_encode", "vae_decode"]

Prompt = Union[str, torch.Tensor]  # a prompt's text, or its embeddings (L, D) / (1, L, D)


def device_of(module) -> torch.device:
    """A module's device from its first parameter (diffusers' `.device` walks every submodule: ~1 ms a call)."""
    first = next(module.parameters(), None)
    return module.device if first is None else first.device


def dtype_of(module) -> torch.dtype:
    """A module's dtype from its first floating-point parameter (diffusers' `.dtype` walks every submodule)."""
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    return module.dtype if first is None else first.dtype


@torch.no_grad()
def vae_encode(vae, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, C, h, w) latents in `dtype`, shifted (SD3, FLUX) and scaled (posterior mean)."""
    z = vae.encode(pixels.to(device_of(vae), dtype_of(vae))).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).to(dtype)


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) shifted and scaled latents -> (B, 3, H, W) float32 images in [-1, 1]."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents.to(dtype_of(vae)) / vae.config.scaling_factor + shift
    return vae.decode(z).sample.float().clamp(-1, 1)


@dataclass
class Components:
    """The parts of an SD-shaped latent diffusion model that an edit uses, and the calls stages make on them."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    name: str = "custom"
    denoiser: Any = None  # what every UNet call goes through: the UNet, or an accelerated wrapper (accel.py)
    inpaint_unet: Any = None  # a 9-channel inpainting UNet of the same family, for the inpainting candidate
    inpaint_denoiser: Any = None  # what the inpainting UNet's calls go through (as `denoiser`)
    inpaint_name: str | None = None  # where the inpainting UNet came from ("embedded", a folder, a hub id), for sidecars
    progress: dict = field(default_factory=dict)  # tqdm keyword arguments; {"disable": True} silences the bars

    def __post_init__(self) -> None:
        if self.denoiser is None:
            self.denoiser = self.unet
        if self.inpaint_denoiser is None:
            self.inpaint_denoiser = self.inpaint_unet

    @property
    def device(self) -> torch.device:
        return device_of(self.unet)

    @property
    def dtype(self) -> torch.dtype:
        return dtype_of(self.unet)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Move in place; an fp16 VAE that asks for upcasting (SD VAEs overflow in fp16) stays fp32."""

        def move(module, to_dtype):  # no-op casts skipped: diffusers warns on every .to(dtype)
            module.to(device=device, **({"dtype": to_dtype} if to_dtype not in (None, module.dtype) else {}))

        move(self.unet, dtype)
        if self.inpaint_unet is not None:
            move(self.inpaint_unet, dtype)
        move(self.text_encoder, dtype)
        force_upcast = dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        move(self.vae, torch.float32 if force_upcast else dtype)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, h, w) scaled latents (posterior mean: deterministic)."""
        return vae_encode(self.vae, pixels, self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, H, W) float32 images in [-1, 1]."""
        return vae_decode(self.vae, latents)

    def encode_prompts(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """(P,) prompts or embeddings -> (P, L, D) text embeddings in the model's dtype and device."""
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = encode_prompts(self.tokenizer, self.text_encoder, texts, device=self.device, dtype=self.dtype) if texts else []
        out, i = [], 0
        for p in prompts:
            if isinstance(p, str):
                out.append(encoded[i])
                i += 1
            else:
                out.append(p.reshape(p.shape[-2:]).to(self.device, self.dtype))
        shapes = {tuple(e.shape) for e in out}
        if len(shapes) > 1:
            raise ValueError(f"prompt embeddings must all have one shape (L, D), got {sorted(shapes)}")
        return torch.stack(out)

    def bar(self, total: int, desc: str):
        """A progress bar for one phase, configured by `progress` (DiffEditor.set_progress_bar_config)."""
        return tqdm(total=total, desc=desc, **{"leave": False, "dynamic_ncols": True, **self.progress})

    def timed(self, timings: dict[str, float], name: str):
        """Add the seconds of the enclosed block to timings[name] (timing.timed on this device)."""
        return timed(timings, name, self.device)
