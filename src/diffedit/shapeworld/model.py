"""The ShapeWorld latent text-to-image model: SD-shaped diffusers components, built small.

The components are the ones of Stable Diffusion 1.x (``AutoencoderKL`` with downsampling factor 8
and 4 latent channels, ``CLIPTextModel`` + ``CLIPTokenizer``, ``UNet2DConditionModel``,
``DDIMScheduler`` with the SD noise schedule), only narrower, so that every code path that works
on this model works on SD unchanged. The tokenizer's vocabulary comes from the caption grammar of
``SHAPEWORLD.md``: every word of the grammar is one token.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffedit.loading import load_components
from diffedit.schedule import sd_scheduler

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# The words of the caption grammar (SHAPEWORLD.md "Captions"); world.py holds the same lists.
GRAMMAR_WORDS = (
    ["a", "and", "on", "background"]
    + ["red", "green", "blue", "yellow", "purple", "white"]
    + ["circle", "square", "triangle"]
    + ["gray", "dark", "striped", "checkered"]
)


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE maps the bytes 0..255 to (GPT-2 table)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _grammar_words() -> list[str]:
    """Every word of the caption grammar, from world.py when it is importable, else from the spec."""
    words = list(GRAMMAR_WORDS)
    try:
        from diffedit.shapeworld import world

        words += list(world.COLORS) + list(world.SHAPES) + list(world.BACKGROUNDS)
    except ImportError:
        pass
    return sorted(set(words))


def build_tokenizer(model_max_length: int = 16) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary is the caption grammar: each grammar word is one token.

    The vocabulary holds the special tokens, the 256 byte-level characters with and without the
    word-final ``</w>`` (so any text still tokenizes), and every prefix of every grammar word. The
    merges build each word left to right; a merge of one word can fire inside another word
    (``r e`` of "red" inside "green") and strand it, so each stranded word gets a repair chain
    appended at the lowest priority, where it cannot change a word that is already one token.
    """
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {BOS_TOKEN: 0, EOS_TOKEN: 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))

    words = _grammar_words()
    merges: list[tuple[str, str]] = []

    def add_chain(pieces: list[str]) -> None:
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))

    for word in words:
        add_chain(list(word[:-1]) + [word[-1] + "</w>"])

    def make() -> CLIPTokenizer:
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)

    tokenizer = make()
    for _ in range(len(words) * 8):
        stranded = [w for w in words if len(tokenizer.tokenize(w)) != 1]
        if not stranded:
            break
        for word in stranded:
            add_chain(tokenizer.tokenize(word))
        tokenizer = make()
    stranded = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    if stranded:
        raise RuntimeError(f"grammar words not single tokens: {stranded}")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ModelConfig:
    """Sizes of the components and the training recipe of one ShapeWorld model."""

    # --- VAE (AutoencoderKL): 4 blocks -> 3 downsamplings -> factor 8, as in SD
    vae_channels: tuple[int, ...] = (32, 64, 128, 128)  # SD uses (128, 256, 512, 512); flat shapes need far less
    vae_layers_per_block: int = 1  # SD uses 2; one resnet per level reconstructs hard-edged scenes
    vae_norm_groups: int = 16  # must divide every vae channel count
    vae_mid_attention: bool = False  # no global attention: a fully convolutional VAE can train on crops
    latent_channels: int = 4  # SD's latent channels (the DiffEdit code reads it from the config)
    # --- text encoder (CLIPTextModel)
    text_hidden: int = 128  # the caption language has 17 words; a narrow encoder suffices
    text_layers: int = 2  # two layers to bind each color to its shape
    text_heads: int = 4  # head size 32
    max_length: int = 16  # longest caption is 11 words + bos + eos = 13 tokens; 16 leaves room
    # --- UNet (UNet2DConditionModel on 16x16 latents)
    unet_channels: tuple[int, ...] = (64, 128, 192)  # three levels: 16x16, 8x8, 4x4; 12.6 M keeps fp16 <= 40 MB
    unet_layers_per_block: int = 2  # SD uses 2
    unet_head_dim: int = 32  # attention head size (diffusers' attention_head_dim counts heads here: see build_unet)
    unet_cross_attn_levels: int = 2  # cross-attention at the first levels (16x16, 8x8), like SD's first three of four
    unet_norm_groups: int = 32  # SD's GroupNorm groups; must divide every unet channel count
    # --- training recipe
    vae_batch: int = 32  # scenes per VAE step
    vae_lr: float = 1e-3  # Adam learning rate of the VAE
    vae_crop: int = 128  # VAE trains on random crops of this size (full size ends the stage, see vae_full_frac)
    vae_full_frac: float = 0.2  # last fraction of VAE steps on full 128x128 scenes (GroupNorm statistics)
    vae_kl_weight: float = 1e-6  # SD's KL weight: the latent stays nearly deterministic
    vae_steps: int = 4000  # default VAE steps when no time budget is given
    num_latents: int = 50_000  # scenes encoded once for the UNet stage
    unet_batch: int = 256  # latents per UNet step
    unet_lr: float = 3e-4  # AdamW learning rate of UNet + text encoder
    unet_steps: int = 20_000  # default UNet steps when no time budget is given
    caption_dropout: float = 0.1  # captions replaced by "" for classifier-free guidance (Ho & Salimans 2022)
    ema_decay: float = 0.999  # EMA of UNet and text encoder weights, used for saving and sampling
    vae_time_frac: float = 0.3  # share of a time budget spent on the VAE stage (the rest: latents + UNet)
    sample_steps: int = 30  # DDIM steps of the sample grids and of the final generation accuracy
    guidance_scale: float = 5.0  # classifier-free guidance of sample grids and evaluation
    eval_captions: int = 96  # captions in the final generation accuracy
    eval_scenes: int = 256  # held-out scenes of the final VAE PSNR
    scale_scenes: int = 512  # scenes whose latent std sets the VAE scaling_factor (SD used one batch)


CONFIGS: dict[str, ModelConfig] = {
    # unit tests and smoke runs: a few hundred K parameters, a step well under a second on CPU
    "tiny": ModelConfig(
        vae_channels=(8, 8, 16, 16),
        vae_norm_groups=4,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        unet_channels=(16, 32),
        unet_layers_per_block=1,
        unet_head_dim=8,
        unet_cross_attn_levels=1,
        unet_norm_groups=8,
        vae_batch=4,
        vae_steps=30,
        num_latents=64,
        unet_batch=16,
        unet_steps=30,
        sample_steps=4,
        eval_captions=4,
        eval_scenes=8,
        scale_scenes=16,
    ),
    # a CPU run of about 1.5 hours on one core: narrow VAE trained mostly on crops, a UNet small
    # enough to take thousands of steps
    "small": ModelConfig(
        vae_channels=(8, 16, 32, 64),  # 0.65 M; 0.25 s per step of 16 64x64 crops on one core
        vae_norm_groups=4,
        vae_batch=16,
        vae_lr=2e-3,
        vae_crop=64,  # crops are 4.5x cheaper than full scenes; the last 20 % of the stage is full size
        vae_steps=5000,
        text_hidden=64,
        text_layers=2,
        text_heads=2,
        unet_channels=(32, 64, 128),  # 3.2 M, but few channels at 16x16: 0.6 s per step of 32 on one core
        unet_layers_per_block=1,
        unet_head_dim=32,
        unet_norm_groups=8,
        num_latents=8000,  # ~100 s of encoding on one core; ~25 epochs over a 60 min UNet stage
        unet_batch=32,
        unet_lr=5e-4,
        unet_steps=6000,
        ema_decay=0.998,  # horizon ~500 steps for a run of ~6000
        vae_time_frac=0.28,
        sample_steps=25,
        eval_captions=64,
        eval_scenes=128,
    ),
    # a GPU run of ~15 minutes on one H100 (the defaults above)
    "full": ModelConfig(),
}


def get_config(name: str) -> ModelConfig:
    """The named preset of ``CONFIGS``."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[name]


# ----------------------------------------------------------------------------------------------
# Components


def build_vae(config: ModelConfig) -> AutoencoderKL:
    """An SD-shaped AutoencoderKL: 128x128x3 image -> 4x16x16 latent (factor 8)."""
    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.vae_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_groups,
        sample_size=128,
        scaling_factor=1.0,  # set from data after training (compute_scaling_factor)
        mid_block_add_attention=config.vae_mid_attention,
    )


def build_text_encoder(config: ModelConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A narrow CLIP text transformer over the grammar vocabulary."""
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=4 * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length,
        projection_dim=config.text_hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(text_config)


def build_unet(config: ModelConfig) -> UNet2DConditionModel:
    """An SD-shaped UNet2DConditionModel on 4x16x16 latents, cross-attending to the text states."""
    n = len(config.unet_channels)
    k = config.unet_cross_attn_levels
    down = tuple(["CrossAttnDownBlock2D"] * k + ["DownBlock2D"] * (n - k))
    up = tuple(["UpBlock2D"] * (n - k) + ["CrossAttnUpBlock2D"] * k)
    # diffusers' UNet2DConditionModel passes `attention_head_dim` on as the number of heads (a
    # historical naming quirk); give the number of heads per level so each head has unet_head_dim.
    heads = tuple(max(1, c // config.unet_head_dim) for c in config.unet_channels)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_hidden,
        attention_head_dim=heads,
        norm_num_groups=config.unet_norm_groups,
    )


def build_components(config: ModelConfig | str) -> dict:
    """Fresh, randomly initialised components: vae, text_encoder, tokenizer, unet, scheduler."""
    if isinstance(config, str):
        config = get_config(config)
    tokenizer = build_tokenizer(config.max_length)
    return {
        "vae": build_vae(config),
        "text_encoder": build_text_encoder(config, tokenizer),
        "tokenizer": tokenizer,
        "unet": build_unet(config),
        "scheduler": sd_scheduler(),
    }


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def component_sizes(components: dict) -> dict:
    """Parameters per component, their total, and the total in MB at fp16."""
    sizes = {k: count_params(components[k]) for k in ("vae", "text_encoder", "unet")}
    sizes["total"] = sum(sizes.values())
    sizes["fp16_mb"] = round(2 * sizes["total"] / 1e6, 2)
    return sizes


# ----------------------------------------------------------------------------------------------
# Saving and loading


MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": None,  # filled in at save time
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def save_model(
    components: dict,
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
    training_info: dict | None = None,
    max_shard_size: str = "15MB",
) -> Path:
    """Write the components in the diffusers folder layout (safetensors at `dtype`) plus training.json."""
    import copy

    import diffusers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "unet", "text_encoder"):
        module = copy.deepcopy(components[name]).to("cpu", dtype)
        module.save_pretrained(path / name, safe_serialization=True, max_shard_size=max_shard_size)
        config = path / name / "config.json"  # where a resumed component was loaded from: a local path
        settings = {k: v for k, v in json.loads(config.read_text()).items() if k != "_name_or_path"}
        config.write_text(json.dumps(settings, indent=2) + "\n")
    components["tokenizer"].save_pretrained(path / "tokenizer")
    components["scheduler"].save_pretrained(path / "scheduler")
    index = dict(MODEL_INDEX, _diffusers_version=diffusers.__version__)
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    info = dict(training_info or {})
    info.setdefault("saved_at", time.strftime("%Y-%m-%d %H:%M:%S"))
    info["dtype"] = str(dtype).replace("torch.", "")
    info["sizes"] = component_sizes(components)
    (path / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return path


def load_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Load the components written by `save_model` (or any SD 1.x folder) at `dtype` on `device`, as a dict."""
    path = Path(path)
    if not (path / "model_index.json").exists():
        raise ValueError(f"{path} is not a model folder (no model_index.json); train one with `train`")
    c = load_components(path, dtype=dtype)
    return {"vae": c.vae.to(device), "text_encoder": c.text_encoder.to(device), "tokenizer": c.tokenizer,
            "unet": c.unet.to(device), "scheduler": c.scheduler}
