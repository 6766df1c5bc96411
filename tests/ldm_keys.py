"""diffusers -> original (LDM / CompVis) key names for Stable Diffusion 1.x checkpoints, test helper.

The inverse of what diffusers' single-file loader does (`diffusers/loaders/single_file_utils.py`:
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`), written so a
test can turn random diffusers components into a one-file original checkpoint and load it back.

Layout rules (SD 1.x, `layers_per_block` = L):
  UNet  conv_in -> input_blocks.0.0; down block b, layer j -> input_blocks.{1 + b(L+1) + j}.{0 resnet | 1 attn};
        its downsampler -> input_blocks.{(b+1)(L+1)}.0.op; mid resnet 0 / attn / resnet 1 -> middle_block.0/1/2;
        up block b (L+1 layers), layer j -> output_blocks.{b(L+1) + j}.{0 resnet | 1 attn}; its upsampler sits
        after the last layer's resnet (and attention, if any): output_blocks.{b(L+1) + L}.{1 | 2}.conv.
        Resnet parts: norm1/conv1 -> in_layers.0/2, time_emb_proj -> emb_layers.1, norm2/conv2 ->
        out_layers.0/3, conv_shortcut -> skip_connection. Transformer blocks keep their diffusers names.
  VAE   encoder.down_blocks.i -> encoder.down.i (resnets -> block, downsamplers.0 -> downsample);
        decoder.up_blocks.i -> decoder.up.{n-1-i} (LDM numbers decoder levels from the lowest resolution up);
        mid_block.resnets.k -> mid.block_{k+1}; mid_block.attentions.0 -> mid.attn_1 with group_norm/to_q/
        to_k/to_v/to_out.0 -> norm/q/k/v/proj_out, whose weights are 1x1 convs (C, C, 1, 1) in LDM but
        linear (C, C) in diffusers; conv_shortcut -> nin_shortcut; conv_norm_out -> norm_out.
  CLIP  the transformers CLIPTextModel state dict under cond_stage_model.transformer.text_model.
"""

from __future__ import annotations

import re

import torch

__all__ = ["UNET_PREFIX", "VAE_PREFIX", "CLIP_PREFIX", "unet_to_ldm", "vae_to_ldm", "clip_to_ldm", "sd1_checkpoint",
           "open_clip_to_ldm", "sdxl_checkpoint"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, names: dict[str, str]) -> str:
    part, tail = rest.split(".", 1)
    if part not in names:
        raise KeyError(f"unknown resnet part {part!r}")
    return f"{names[part]}.{tail}"


def _top(key: str, names: dict[str, str]) -> str | None:
    module, _, param = key.rpartition(".")
    return f"{names[module]}.{param}" if module in names else None


def unet_to_ldm(state_dict: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict (SD 1.x layout, any number of blocks) -> LDM names, no prefix."""
    if not isinstance(layers_per_block, int):
        raise ValueError("only an int layers_per_block (the SD 1.x layout) is supported")
    step = layers_per_block + 1
    up_has_attn = {int(m.group(1)) for k in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for key, value in state_dict.items():
        new = _top(key, _UNET_TOP)
        if new is None and (m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + b * step + j
            new = (f"input_blocks.{index}.0.{_resnet(rest, _UNET_RESNET)}" if kind == "resnets"
                   else f"input_blocks.{index}.1.{rest}")
        elif new is None and (m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)):
            new = f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"
        elif new is None and (m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key)):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _UNET_RESNET)}"
        elif new is None and (m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key)):
            new = f"middle_block.1.{m[1]}"
        elif new is None and (m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = b * step + j
            new = (f"output_blocks.{index}.0.{_resnet(rest, _UNET_RESNET)}" if kind == "resnets"
                   else f"output_blocks.{index}.1.{rest}")
        elif new is None and (m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)):
            b = int(m[1])
            new = f"output_blocks.{b * step + layers_per_block}.{2 if b in up_has_attn else 1}.conv.{m[2]}"
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key!r} (only the SD 1.x layout is mapped)")
        out[new] = value
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict with `num_blocks` encoder/decoder levels -> LDM names, no prefix."""
    out = {}
    for key, value in state_dict.items():
        new = _top(key, _VAE_TOP)
        if new is None and (m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif new is None and (m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif new is None and (m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)):
            new = f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif new is None and (m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)):
            new = f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif new is None and (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif new is None and (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key)):
            if m[2] not in _VAE_ATTN:
                raise KeyError(f"no LDM name for VAE key {key!r}")
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value[:, :, None, None]  # linear (C, C) -> 1x1 conv (C, C, 1, 1)
        if new is None:
            raise KeyError(f"no LDM name for VAE key {key!r}")
        out[new] = value
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> names under `text_model.` as in SD 1.x checkpoints, no prefix.

    transformers >= 5.6 flattened CLIPTextModel (its keys no longer start with `text_model.`); the original
    checkpoints were written with the wrapper, and diffusers recognises SD 1.x CLIP by
    `cond_stage_model.transformer.text_model.embeddings.position_embedding.weight`.
    """
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state_dict.items()}


def sd1_checkpoint(unet, vae, text_encoder, scheduler=None) -> dict[str, torch.Tensor]:
    """One original-format SD 1.x state dict holding all three networks (contiguous copies, safetensors-ready).

    With `scheduler`, the DDPM buffers an LDM checkpoint also carries (betas, alphas_cumprod, ...) are added,
    as real files have them; loaders must ignore them.
    """
    sd = {}
    sd.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(unet.state_dict(), unet.config.layers_per_block).items()})
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)).items()})
    sd.update({CLIP_PREFIX + k: v for k, v in clip_to_ldm(text_encoder.state_dict()).items()})
    if scheduler is not None:
        betas = scheduler.betas.to(torch.float32)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sd["betas"] = betas
        sd["alphas_cumprod"] = alphas_cumprod
        sd["alphas_cumprod_prev"] = torch.cat([torch.ones(1), alphas_cumprod[:-1]])
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


_OPEN_CLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
              "self_attn.out_proj": "attn.out_proj"}


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection state dict -> OpenCLIP names (SDXL's `conditioner.embedders.1.model.`), no prefix:
    q/k/v fused into `in_proj_*`, the projection transposed."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    out = {"positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           "ln_final.weight": sd.pop("final_layer_norm.weight"), "ln_final.bias": sd.pop("final_layer_norm.bias"),
           "text_projection": sd.pop("text_projection.weight").T}
    for key in [k for k in sd if ".self_attn.q_proj." in k]:
        layer, param = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key).groups()
        qkv = [sd.pop(f"encoder.layers.{layer}.self_attn.{p}_proj.{param}") for p in "qkv"]
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(qkv)
    for key, value in sd.items():
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None or m[2] not in _OPEN_CLIP:
            raise KeyError(f"no OpenCLIP name for {key!r}")
        out[f"transformer.resblocks.{m[1]}.{_OPEN_CLIP[m[2]]}.{m[3]}"] = value
    return out


def sdxl_checkpoint(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """One original-format SDXL base state dict: the UNet (its `label_emb` the added conditioning), the VAE, CLIP-L
    as `conditioner.embedders.0.transformer.` and the OpenCLIP-G-shaped encoder as `conditioner.embedders.1.model.`."""
    names = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    plain = {k: v for k, v in unet.state_dict().items() if not k.startswith("add_embedding.")}
    sd = {UNET_PREFIX + k: v for k, v in unet_to_ldm(plain, unet.config.layers_per_block).items()}
    sd.update({UNET_PREFIX + _top(k, names): v for k, v in unet.state_dict().items() if k.startswith("add_embedding.")})
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)).items()})
    sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in clip_to_ldm(text_encoder.state_dict()).items()})
    sd.update({"conditioner.embedders.1.model." + k: v for k, v in open_clip_to_ldm(text_encoder_2.state_dict()).items()})
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}
