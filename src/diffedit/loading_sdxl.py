"""Recognising and loading Stable Diffusion XL: a diffusers folder (StableDiffusionXLPipeline's layout) or an
original single-file checkpoint (keys `conditioner.embedders.0/1`). `loading.load_components` asks these."""

from __future__ import annotations

import json
from pathlib import Path

from .components_sdxl import SDXLComponents

__all__ = ["cached_folder", "folder_force_zeros", "is_sdxl_checkpoint", "is_sdxl_folder", "sdxl_components",
           "sdxl_from_pipeline", "sdxl_loaders", "sdxl_pipeline_class"]

SDXL_CHECKPOINT_KEY = "conditioner.embedders.1."  # the second text encoder: SDXL base (the refiner has only .0)


def is_sdxl_folder(path: Path) -> bool:
    """A diffusers folder of SDXL: model_index.json names an SDXL pipeline, or a UNet beside a second text encoder
    (SD3 and FLUX have a second encoder and a transformer, no UNet)."""
    index = path / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    except (ValueError, UnicodeDecodeError, AttributeError):
        name = ""
    return str(name).startswith("StableDiffusionXL") or ((path / "text_encoder_2").is_dir() and (path / "unet").is_dir())


def cached_folder(repo: str) -> Path | None:
    """The cached snapshot folder of a hub id's model_index.json, or None (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        index = try_to_load_from_cache(repo, "model_index.json")
    except Exception:  # an id the cache cannot hold (bad characters): SD's loaders give the error
        return None
    return Path(index).parent if isinstance(index, str) else None


def is_sdxl_checkpoint(path: Path, config: str | None = None) -> bool:
    """An SDXL single file: its safetensors header holds the second text encoder's keys, or `config` (the diffusers
    configs it loads with) is an SDXL folder. A .ckpt is told by its config only (unpickling it is not cheap)."""
    if config and Path(config).is_dir() and is_sdxl_folder(Path(config)):
        return True
    if not path.name.lower().endswith(".safetensors"):
        return False
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n)) if 2 <= n <= 100_000_000 else {}
        except (ValueError, UnicodeDecodeError):
            return False
    return isinstance(header, dict) and any(k.startswith(SDXL_CHECKPOINT_KEY) for k in header)


def sdxl_loaders(path: str, kwargs: dict) -> dict:
    """What an SDXL folder holds beyond SD's parts: the second text encoder (with projection) and its tokenizer."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    plain = {k: v for k, v in kwargs.items() if k != "torch_dtype"}
    return {
        "text_encoder_2": lambda: CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kwargs),
        "tokenizer_2": lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", **plain),
    }


def sdxl_components(parts: dict, name: str, force_zeros_for_empty_prompt: bool = True) -> SDXLComponents:
    """SDXLComponents from loaded parts; a tokenizer without its config (model_max_length 1e30) pads to its encoder."""
    positions = getattr(parts["text_encoder_2"].config, "max_position_embeddings", None)
    if positions and not 0 < parts["tokenizer_2"].model_max_length <= positions:
        parts["tokenizer_2"].model_max_length = positions
    return SDXLComponents(**parts, name=name, force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)


def sdxl_from_pipeline(pipe, name: str) -> SDXLComponents:
    """The parts of a StableDiffusionXLPipeline (as `from_single_file` builds it), without its refiner-only options."""
    keys = ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")
    return sdxl_components({k: getattr(pipe, k) for k in keys}, name, bool(pipe.config.get("force_zeros_for_empty_prompt", True)))


def folder_force_zeros(path: Path) -> bool:
    """model_index.json's force_zeros_for_empty_prompt (SDXL base: true; the pipeline's default when absent)."""
    try:
        return bool(json.loads((path / "model_index.json").read_text()).get("force_zeros_for_empty_prompt", True))
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return True


def sdxl_pipeline_class():
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline
