"""Stable Diffusion XL as a `Components` kind: two text encoders, pooled text embeddings and size conditioning.

Every stage calls `parts.encode_prompts(prompts)` and `parts.unet(x, t, encoder_hidden_states=e)`, and batches,
doubles (guidance) and repeats (candidates, mask noises) the rows of `e`. SDXL's UNet also wants, per row, the
pooled projection of the second text encoder and the six size/crop numbers (`added_cond_kwargs`). So the pooled
vector rides inside the prompt embeddings, as one extra token row at the end (zero-padded to the width D), and
`SDXLUNet` splits it off before the UNet runs: whatever the stages do to rows, each row keeps its own pooled
vector, and no stage knows about SDXL. The size conditioning is the input's own size (original = target size,
no crop), as diffusers' SDXL pipeline sets it when an image is generated at its native size.

Embeddings a user passes as a prompt are then (L + 1, D): the hidden states of both encoders concatenated, and
the pooled row last (what `SDXLComponents.encode_prompts` returns for a text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .components import Components, Prompt, device_of

__all__ = ["SDXLComponents", "SDXLUNet", "split_pooled"]


def split_pooled(embeddings: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L + 1, D) prompt embeddings -> the (B, L, D) hidden states and the (B, pooled_dim) pooled vectors."""
    return embeddings[:, :-1], embeddings[:, -1, :pooled_dim]


class SDXLUNet(torch.nn.Module):
    """An SDXL UNet callable as an SD one: `unet(x, t, encoder_hidden_states=e)` with the pooled row in `e`.

    config, dtype, attention processors and the rest come from the wrapped UNet; traces and attention stores see
    its modules (it is a submodule)."""

    def __init__(self, unet, vae_scale_factor: int):
        super().__init__()
        self.unet = unet
        self.vae_scale_factor = vae_scale_factor  # latent cells -> pixels, for the size conditioning
        time_dim = unet.config.addition_time_embed_dim
        self.pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * time_dim  # the pooled width

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)

    def time_ids(self, sample: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 6): original size, crop top-left, target size, in pixels; the original is the input's own size."""
        h, w = (int(s) * self.vae_scale_factor for s in sample.shape[-2:])
        return torch.tensor([[h, w, 0, 0, h, w]], device=sample.device, dtype=dtype).expand(sample.shape[0], 6)

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict: bool = True, **kwargs):
        hidden, pooled = split_pooled(encoder_hidden_states, self.pooled_dim)
        added = {"text_embeds": pooled, "time_ids": self.time_ids(sample, hidden.dtype)}
        return self.unet(sample, timestep, encoder_hidden_states=hidden, added_cond_kwargs=added,
                         return_dict=return_dict, **kwargs)


@dataclass
class SDXLComponents(Components):
    """SDXL's parts: `unet` is an `SDXLUNet` (a bare SDXL UNet given here is wrapped), plus the second encoder."""

    text_encoder_2: Any = None  # CLIPTextModelWithProjection: penultimate hidden states and the pooled projection
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = True  # "" encodes to zeros, as diffusers' SDXL pipeline does for no prompt
    pooled_rows: ClassVar[int] = 1  # rows of the prompt embeddings after the tokens (the pooled one): not attended to

    def __post_init__(self) -> None:
        if not isinstance(self.unet, SDXLUNet):
            if self.denoiser is self.unet:
                self.denoiser = None
            self.unet = SDXLUNet(self.unet, self.vae_scale_factor)
        super().__post_init__()
        self.text_encoder_2.eval().requires_grad_(False)
        width = self.unet.config.cross_attention_dim
        if self.unet.pooled_dim > width:
            raise ValueError(f"SDXL pooled embeddings of width {self.unet.pooled_dim} do not fit a token row of {width}")

    def __setattr__(self, name: str, value) -> None:
        """An SDXL inpainting UNet given as `inpaint_unet` is wrapped as the UNet is (its calls need the pooled row too)."""
        if name == "inpaint_unet" and value is not None and not isinstance(value, SDXLUNet) \
                and getattr(value.config, "addition_embed_type", None) == "text_time":
            value = SDXLUNet(value, self.vae_scale_factor)
        super().__setattr__(name, value)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().to(device, dtype)
        move = {"dtype": dtype} if dtype not in (None, self.text_encoder_2.dtype) else {}
        self.text_encoder_2.to(device=device, **move)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(P,) texts -> (P, L + 1, D): both encoders' penultimate hidden states side by side, the pooled row last."""
        unique = list(dict.fromkeys(texts))
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(device_of(encoder))
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2].to(self.device, self.dtype))
            pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            raise ValueError("SDXL's second text encoder must give pooled text_embeds (CLIPTextModelWithProjection)")
        states = torch.cat(hidden, dim=-1)
        row = states.new_zeros(len(unique), 1, states.shape[-1])
        row[:, 0, : pooled.shape[-1]] = pooled.to(row.dtype)
        out = torch.cat([states, row], dim=1)
        if self.force_zeros_for_empty_prompt:
            out[[i for i, t in enumerate(unique) if t == ""]] = 0
        return out[[unique.index(t) for t in texts]]

    def encode_prompts(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """(P,) prompts or embeddings (L + 1, D) -> (P, L + 1, D), the pooled row last (module docstring)."""
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(self.encode_texts(texts)) if texts else iter(())
        return super().encode_prompts([next(encoded) if isinstance(p, str) else p for p in prompts])
