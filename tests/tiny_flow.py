"""Tiny random SD3, FLUX and flow-UNet models built offline (the sizes diffusers' own tests use), for the flow tests.

No T5 tokenizer can be built offline (it needs a SentencePiece model), so the T5 encoder reads the project's
in-memory character tokenizer (bench.models.char_tokenizer): the pipelines call it as any tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from diffedit.bench.models import TINY_WORDS, char_tokenizer
from diffedit.flow.components import FlowComponents


def _clip(tokenizer, seed: int, projection: bool = True):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
                            projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(tokenizer, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=1, eos_token_id=1))


def _vae(shift: float, scaling: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=32, shift_factor=shift, scaling_factor=scaling,
                         use_quant_conv=False, use_post_quant_conv=False)


def tiny_sd3(seed: int = 0) -> FlowComponents:
    """SD3: transformer of one joint layer (patch 1, 4 heads of 8), two CLIP encoders with projection and a T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    tok = char_tokenizer(16, TINY_WORDS)
    encoders = {"text_encoder": _clip(tok, seed + 1), "tokenizer": tok, "text_encoder_2": _clip(tok, seed + 2),
                "tokenizer_2": tok, "text_encoder_3": _t5(tok, seed + 3), "tokenizer_3": tok}
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                        pooled_projection_dim=64, out_channels=4)
    vae = _vae(0.0609, 1.5035)
    parts = FlowComponents("sd3", vae, transformer, FlowMatchEulerDiscreteScheduler(shift=3.0), encoders, name="tiny-sd3")
    _eval(parts)
    return parts


def tiny_flux(seed: int = 0) -> FlowComponents:
    """FLUX: transformer of one double and one single block (2 heads of 16) over 2x2-packed latents, a CLIP and a T5,
    the guidance embedding (as FLUX.1-dev), the shifted schedule of the image's token count."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    tok = char_tokenizer(16, TINY_WORDS)
    encoders = {"text_encoder": _clip(tok, seed + 1, projection=False), "tokenizer": tok,
                "text_encoder_2": _t5(tok, seed + 2), "tokenizer_2": tok}
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    vae = _vae(0.1159, 0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                                                base_shift=0.5, max_shift=1.15)
    parts = FlowComponents("flux", vae, transformer, scheduler, encoders, name="tiny-flux")
    _eval(parts)
    return parts


def tiny_flow_unet(seed: int = 0) -> FlowComponents:
    """A flow UNet in SD's layout (as the embedded ShapeWorld flow model): the tiny SD components of the DiffEdit tests
    (VAE factor 2, UNet 32/64, one CLIP encoder) with diffusers' flow scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffedit.bench.models import tiny_components

    c = tiny_components(seed)
    encoders = {"text_encoder": c.text_encoder, "tokenizer": c.tokenizer}
    parts = FlowComponents("unet", c.vae, c.unet, FlowMatchEulerDiscreteScheduler(shift=1.0), encoders, name="tiny-unet")
    _eval(parts)
    return parts


TINY = {"sd3": tiny_sd3, "flux": tiny_flux, "unet": tiny_flow_unet}  # family -> its tiny model


def _eval(parts: FlowComponents) -> None:
    for m in parts.modules():
        m.eval().requires_grad_(False)


def save_tiny_flow(parts: FlowComponents, path: Path) -> Path:
    """Write the components as a diffusers folder (model_index.json names the family's pipeline; a flow UNet's is SD's
    with the flow scheduler)."""
    if parts.family == "unet":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.encoders["text_encoder"],
                                       tokenizer=parts.encoders["tokenizer"], unet=parts.transformer,
                                       scheduler=parts.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(path)
        return path
    parts._pipe.save_pretrained(path)
    return path
