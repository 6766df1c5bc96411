"""Finding and loading model components: hub id, local diffusers folder, single-file checkpoint, or the
embedded ShapeWorld model. Everything model-specific is read from the components' configs."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from .components import Components

__all__ = ["Components", "embedded_model_path", "load_components", "EMBEDDED_MODEL_NAME"]

EMBEDDED_MODEL_NAME = "shapeworld (embedded)"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def _without_dtype(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "torch_dtype"}


def embedded_model_path() -> Path:
    """Folder of the embedded ShapeWorld model inside the installed package."""
    return Path(str(resources.files("diffedit.shapeworld").joinpath("weights")))


def _from_folder(path: str, **kwargs) -> Components:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return Components(
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs),
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kwargs),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **_without_dtype(kwargs)),
        scheduler=DDIMScheduler.from_pretrained(path, subfolder="scheduler"),
        name=str(path),
    )


def _from_single_file(path: Path, config: str | None, **kwargs) -> Components:
    """An original SD 1.x/2.x checkpoint through diffusers' `from_single_file` (configs from `config`, see below)."""
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ValueError(f"single-file checkpoints must be .safetensors or .ckpt, got {path.name}")
    from diffusers import StableDiffusionPipeline

    extra = {"config": config} if config else {}
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs, **extra)
    except OSError as e:  # a hub look-up of the configs with no network (LocalEntryNotFoundError), a bad file
        hint = "" if config and Path(config).is_dir() else (
            " If the diffusers configs could not be fetched (this machine may have no internet), pass config= "
            "a local diffusers folder of the same architecture (CLI: --config)."
        )
        raise FileNotFoundError(
            f"could not load the single-file checkpoint {path.name} (configs: "
            f"{config or 'the hub model diffusers infers from its keys'}): {e}.{hint}"
        ) from e
    return Components(pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, str(path))


def load_components(
    model: str | os.PathLike | None = None, *, dtype: torch.dtype | None = None, config: str | None = None
) -> Components:
    """Load vae, unet, text encoder, tokenizer and scheduler from wherever `model` points.

    model=None: the embedded ShapeWorld model. A folder with model_index.json: a diffusers layout. A
    .safetensors/.ckpt file: an original SD 1.x/2.x checkpoint (`config`: a hub id or local folder with
    the matching diffusers configs, needed offline). Anything else is tried as a Hugging Face hub id
    (works offline once it is in the local cache).

    Single files offline: diffusers' `from_single_file` reads the weights from the file but every
    component's config (and the tokenizer files) from a diffusers model: without `config` it infers a hub
    id from the checkpoint's keys (SD 1.x: stable-diffusion-v1-5/stable-diffusion-v1-5) and downloads its
    json/txt files. `config=` a local diffusers folder of the same architecture (configs alone suffice:
    model_index.json, */config.json, scheduler/, tokenizer/; weights there are ignored) needs no network;
    nothing else (`original_config`, `local_files_only`) is needed. Loading errors (OSError: no network
    for the configs, an unreadable file) are re-raised as a FileNotFoundError naming the file, with a hint
    to pass `config` unless it already is a local folder.
    """
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    if model is None:
        path = embedded_model_path()
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the embedded ShapeWorld model is missing from this install ({path}/model_index.json); "
                "it is built by `diffedit shapeworld train` (issue 3: ShapeWorld and the embedded default "
                "model). Pass model= a Stable Diffusion checkpoint or folder meanwhile."
            )
        components = _from_folder(str(path), **kwargs)
        components.name = EMBEDDED_MODEL_NAME
        return components
    path = Path(model)
    if path.is_file():
        return _from_single_file(path, config, **kwargs)
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise ValueError(f"{path} is not a diffusers model folder (no model_index.json or unet/)")
        return _from_folder(str(path), **kwargs)
    text = str(model)
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") != 1 or text.endswith(SINGLE_FILE_SUFFIXES)
    if looks_like_path:  # hub ids are "owner/name"
        raise FileNotFoundError(f"model path not found: {model}")
    try:
        return _from_folder(str(model), **kwargs)
    except OSError as e:
        raise FileNotFoundError(
            f"could not load model {model!r}: not a local file or folder, and not a hub id in the local "
            f"cache (this machine may have no internet). Original error: {e}"
        ) from e
