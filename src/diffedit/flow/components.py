"""The parts of a flow-matching model (SD3, FLUX, or a flow UNet in SD's layout such as the embedded ShapeWorld flow
model) and the calls the flow stages make on them: VAE with scaling and shift, prompt encoding through the family's
diffusers pipeline (three encoders for SD3, CLIP + T5 for FLUX, one CLIP for the UNet), the velocity
v(x, sigma, prompt) with classifier-free guidance, and the scheduler's sigmas.

Latents are (B, C, h, w) everywhere in the flow stages; FLUX's 2x2 packing into tokens happens inside `velocity`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..components import device_of, dtype_of, vae_decode, vae_encode
from ..timing import timed

__all__ = ["FAMILIES", "Conditioning", "FlowComponents", "pack", "unpack"]

# family -> its diffusers pipeline class; "unet": SD's layout whose scheduler is FlowMatchEulerDiscreteScheduler
FAMILIES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline", "unet": "StableDiffusionPipeline"}


@dataclass
class Conditioning:
    """Encoded prompts: token embeddings (P, L, D), pooled embeddings (P, D'), FLUX's text position ids (L, 3)."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor | None = None

    def rows(self, n: int) -> "Conditioning":
        """Each prompt repeated to cover n rows (n a multiple of the prompt count, prompt-major)."""
        k = n // self.embeds.shape[0]
        if k * self.embeds.shape[0] != n:
            raise ValueError(f"{self.embeds.shape[0]} prompts cannot cover {n} latent rows")
        if k == 1:
            return self
        return Conditioning(self.embeds.repeat_interleave(k, 0), self.pooled.repeat_interleave(k, 0), self.text_ids)


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FLUX's 2x2 patches as tokens."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """pack's inverse: (B, h/2 * w/2, 4C) -> (B, C, h, w)."""
    b, _, c4 = tokens.shape
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """FLUX's position ids of the (h/2) x (w/2) latent tokens: (row, column) in channels 1 and 2."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


@dataclass
class FlowComponents:
    """A flow-matching model's parts. `encoders` holds the text encoders and tokenizers under the pipeline's names
    (text_encoder, tokenizer, text_encoder_2, ...)."""

    family: str  # "sd3", "flux" or "unet"
    vae: Any
    transformer: Any  # the velocity model: SD3's or FLUX's transformer, or the flow UNet
    scheduler: Any  # a FlowMatchEulerDiscreteScheduler
    encoders: dict[str, Any]
    name: str = "custom"
    max_sequence_length: int = 256  # T5 tokens per prompt (capped by the T5 tokenizer's own length)
    progress: dict = field(default_factory=dict)  # tqdm keyword arguments; {"disable": True} silences the bars
    _pipe: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown flow family {self.family!r}; known: {', '.join(FAMILIES)}")
        import diffusers

        if self.family != "unet":  # the UNet's one CLIP encoder needs no pipeline
            cls = getattr(diffusers, FAMILIES[self.family])
            self._pipe = cls(vae=self.vae, transformer=self.transformer, scheduler=self.scheduler, **self.encoders)

    device = property(lambda self: device_of(self.transformer))
    dtype = property(lambda self: dtype_of(self.transformer))

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def grid(self) -> int:
        """Pixels the input is padded to a multiple of: a latent cell, or FLUX's 2x2 cells."""
        return self.vae_scale_factor * (2 if self.family == "flux" else 1)

    def modules(self) -> list:
        return [self.vae, self.transformer] + [m for m in self.encoders.values() if isinstance(m, torch.nn.Module)]

    def to(self, device=None, dtype: torch.dtype | None = None) -> None:
        for m in self.modules():
            m.to(device=device, **({"dtype": dtype} if dtype is not None else {}))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, h, w) latents, scaled and shifted (posterior mean: deterministic)."""
        return vae_encode(self.vae, pixels, self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) float32 images in [-1, 1]."""
        return vae_decode(self.vae, latents)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """(P,) prompts -> their Conditioning, through the family's pipeline `encode_prompt`."""
        t5 = self.encoders.get("tokenizer_3" if self.family == "sd3" else "tokenizer_2")
        length = min(self.max_sequence_length, getattr(t5, "model_max_length", self.max_sequence_length))
        prompts = list(prompts)
        if self.family == "unet":
            from ..prompts import encode_prompts

            embeds = encode_prompts(self.encoders["tokenizer"], self.encoders["text_encoder"], prompts).to(self.dtype)
            return Conditioning(embeds, embeds.new_zeros(len(prompts), 0))  # no pooled embedding
        if self.family == "sd3":
            embeds, _, pooled, _ = self._pipe.encode_prompt(
                prompts, None, None, device=self.device, do_classifier_free_guidance=False, max_sequence_length=length
            )
            return Conditioning(embeds.to(self.dtype), pooled.to(self.dtype))
        embeds, pooled, ids = self._pipe.encode_prompt(prompts, None, device=self.device, max_sequence_length=length)
        return Conditioning(embeds.to(self.dtype), pooled.to(self.dtype), ids)

    def _raw(self, x: torch.Tensor, sigma: float, cond: Conditioning, guidance: float | None) -> torch.Tensor:
        """One transformer call on (N, C, h, w) latents at noise level sigma (one prompt, or one per row)."""
        cond = cond.rows(x.shape[0])
        n = x.shape[0]
        if self.family in ("sd3", "unet"):
            t = torch.full((n,), sigma * self.scheduler.config.num_train_timesteps, device=x.device, dtype=x.dtype)
            if self.family == "unet":
                return self.transformer(x, t, encoder_hidden_states=cond.embeds, return_dict=False)[0]
            return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond.embeds,
                                    pooled_projections=cond.pooled, return_dict=False)[0]
        h, w = x.shape[-2:]
        g = None if guidance is None else torch.full((n,), guidance, device=x.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack(x), timestep=torch.full((n,), sigma, device=x.device, dtype=x.dtype), guidance=g,
            pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds, txt_ids=cond.text_ids,
            img_ids=image_ids(h, w, x.device, x.dtype), return_dict=False,
        )[0]
        return unpack(out, h, w)

    @torch.no_grad()
    def velocity(
        self, x: torch.Tensor, sigma: float, cond: Conditioning, uncond: Conditioning | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        """v(x, sigma | prompt), guided: u + scale (c - u) with uncond given and scale != 1 (both rows in one call).

        A FLUX model with a guidance embedding (FLUX.1-dev) takes `scale` there instead, in one unguided call."""
        distilled = self.family == "flux" and getattr(self.transformer.config, "guidance_embeds", False)
        if distilled or uncond is None or scale == 1.0:
            return self._raw(x, sigma, cond, scale if distilled else None).float()
        n = x.shape[0]
        both = Conditioning(torch.cat([uncond.rows(n).embeds, cond.rows(n).embeds]),
                            torch.cat([uncond.rows(n).pooled, cond.rows(n).pooled]), cond.text_ids)
        u, c = self._raw(torch.cat([x, x]), sigma, both, None).float().chunk(2)
        return u + scale * (c - u)

    def field(self, cond: Conditioning, uncond: Conditioning | None = None, scale: float = 1.0) -> Callable:
        """The velocity field of one guided prompt as a function (x, sigma) -> v, for the ODE functions (flow/ode.py)."""
        return lambda x, sigma: self.velocity(x.to(self.dtype), sigma, cond, uncond, scale)

    @torch.no_grad()
    def sigmas(self, steps: int, latent_hw: tuple[int, int]) -> torch.Tensor:
        """(steps + 1,) float32 noise levels from 1 down to 0, as the scheduler sets them (FLUX: shifted by the
        image's token count, as diffusers' FLUX pipeline does)."""
        config = self.scheduler.config
        if getattr(config, "use_dynamic_shifting", False):
            import numpy as np
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)
            mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                 config.get("base_shift", 0.5), config.get("max_shift", 1.15))
            self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        else:
            self.scheduler.set_timesteps(steps)
        return self.scheduler.sigmas.float().cpu()

    def bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, **{"leave": False, "dynamic_ncols": True, **self.progress})

    def timed(self, timings: dict[str, float], name: str):
        return timed(timings, name, self.device)
