"""Tiny random SDXL components built offline in memory, at the sizes of diffusers' own SDXL tests (a UNet with
"text_time" added conditioning, time embeddings of 8 per number, 80 = 6 * 8 + 32 pooled; cross-attention width
64 = two CLIP encoders of width 32), with the tiny model's tokenizer for both encoders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffedit.bench.models import TINY_WORDS, char_tokenizer
from diffedit.components_sdxl import SDXLComponents
from diffedit.schedule import sd_scheduler

__all__ = ["save_tiny_sdxl", "tiny_sdxl_components"]


def _clip_config(vocab_size: int, length: int, width: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
        max_position_embeddings=length, hidden_act="gelu", projection_dim=32, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )


def tiny_sdxl_components(seed: int = 0, width_2: int = 32) -> SDXLComponents:
    """width_2: the second encoder's width (diffusers' tests: 32, as the first; a single file needs another, as
    SDXL's 1280 against 768: diffusers tells its two encoders apart by width)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = char_tokenizer(16, TINY_WORDS), char_tokenizer(16, TINY_WORDS)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=32 + width_2,
        norm_num_groups=1,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=32, force_upcast=False,
        scaling_factor=0.13025,
    )
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer), 16))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer_2), 16, width_2))
    for m in (unet, vae, text_encoder):
        m.eval()
    return SDXLComponents(vae, unet, text_encoder, tokenizer, sd_scheduler(), name="tiny-sdxl",
                          text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def save_tiny_sdxl(path: Path, seed: int = 0, components: SDXLComponents | None = None, weights: bool = True) -> Path:
    """The tiny SDXL (or `components`) as a diffusers folder, as `StableDiffusionXLPipeline.save_pretrained` lays it
    out; weights=False: the configs only (what a single file's `config=` needs)."""
    c = components or tiny_sdxl_components(seed)
    path.mkdir(parents=True, exist_ok=True)
    parts = {"vae": c.vae, "unet": c.unet.unet, "text_encoder": c.text_encoder, "text_encoder_2": c.text_encoder_2,
             "tokenizer": c.tokenizer, "tokenizer_2": c.tokenizer_2, "scheduler": c.scheduler}
    for name, part in parts.items():
        part.save_pretrained(path / name)
    index = {
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1", "force_zeros_for_empty_prompt": True,
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    for f in [] if weights else [f for f in path.rglob("*") if f.suffix in (".safetensors", ".bin")]:
        f.unlink()
    return path
