"""Finding and loading model components: hub id, local diffusers folder, single-file checkpoint, or the
embedded ShapeWorld model. Everything model-specific is read from the components' configs."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from .components import Components
from .errors import ModelError, is_out_of_memory
from .loading_sdxl import (
    cached_folder, folder_force_zeros, is_sdxl_checkpoint, is_sdxl_folder, sdxl_components, sdxl_from_pipeline, sdxl_loaders,
    sdxl_pipeline_class,
)

__all__ = ["Components", "embedded_model_path", "load_components", "EMBEDDED_MODEL_NAME", "check_model_folder",
           "check_weights_file"]

EMBEDDED_MODEL_NAME = "shapeworld (embedded)"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def _without_dtype(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "torch_dtype"}


# what each component's subfolder must hold: a config, and weights (any of these names, sharded or a variant)
COMPONENT_FILES = {
    "vae": ("config.json", ("diffusion_pytorch_model",)),
    "unet": ("config.json", ("diffusion_pytorch_model",)),
    "text_encoder": ("config.json", ("model", "pytorch_model")),
    "tokenizer": (None, None),
    "scheduler": ("scheduler_config.json", None),
}


def check_weights_file(path: Path) -> None:
    """A ModelError unless `path` starts as a checkpoint does: a safetensors header (8-byte length, JSON, within the
    file), a zip (torch.save) or a pickle. Cheap: reads the header only."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if path.suffix.lower() == ".safetensors" or path.name.endswith(".safetensors"):
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            header = f.read(n) if 2 <= n <= min(size - 8, 100_000_000) else b""
            try:
                meta = json.loads(header)
                ends = [v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"]
                ok = isinstance(meta, dict) and max(ends, default=0) <= size - 8 - n
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                ok = False
            if not ok:
                raise ModelError(f"{path} is not a safetensors file (no valid header), or it is truncated ({size} bytes)")
        elif not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
            raise ModelError(f"{path} is not a PyTorch checkpoint (neither a zip nor a pickle; {size} bytes)")


def check_model_folder(path: Path) -> None:
    """A ModelError naming the first component of a diffusers folder that is missing or unreadable: its subfolder,
    its config, its weights (whose headers are checked), or the tokenizer's vocabulary."""
    for name, (config, weights) in COMPONENT_FILES.items():
        folder = path / name
        if not folder.is_dir():
            raise ModelError(f"model folder {path} has no {name} (missing folder {name}/)")
        if config and not (folder / config).is_file():
            raise ModelError(f"model folder {path}: the {name} has no {config}")
        if config:
            try:
                json.loads((folder / config).read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelError(f"model folder {path}: {name}/{config} is not valid JSON ({e})") from e
        if name == "tokenizer" and not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
            raise ModelError(f"model folder {path}: the tokenizer has no tokenizer.json or vocab.json")
        if weights:
            files = [f for f in folder.iterdir() if f.name.startswith(weights) and f.suffix in (".safetensors", ".bin")]
            if not files:
                raise ModelError(f"model folder {path}: the {name} has no weights ({weights[0]}.safetensors or .bin)")
            for f in files:
                check_weights_file(f)


def embedded_model_path() -> Path:
    """Folder of the embedded ShapeWorld model inside the installed package."""
    return Path(str(resources.files("diffedit.shapeworld").joinpath("weights")))


def _from_folder(path: str, hub: bool = False, **kwargs) -> Components:
    """Each component from its subfolder; a failure names the component (for a hub id, an OSError passes: the
    model is not in the local cache)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    loaders = {
        "vae": lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs),
        "unet": lambda: UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kwargs),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kwargs),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **_without_dtype(kwargs)),
        "scheduler": lambda: DDIMScheduler.from_pretrained(path, subfolder="scheduler"),
    }
    local = cached_folder(path) if hub else Path(path)  # a hub id's cached snapshot, if any
    sdxl = local is not None and is_sdxl_folder(local)  # SDXL: a second text encoder and tokenizer (loading_sdxl.py)
    loaders.update(sdxl_loaders(path, kwargs) if sdxl else {})
    parts = {}
    for name, load in loaders.items():
        try:
            parts[name] = load()
        except Exception as e:  # a corrupt config or weights of the wrong shapes: diffusers raises many kinds
            if is_out_of_memory(e) or (hub and isinstance(e, OSError)):
                raise
            raise ModelError(f"cannot load the {name} of model {path}: {type(e).__name__}: {e}") from e
    positions = getattr(parts["text_encoder"].config, "max_position_embeddings", None)
    if positions and not 0 < parts["tokenizer"].model_max_length <= positions:  # a tokenizer without its config
        parts["tokenizer"].model_max_length = positions  # says 1e30: pad prompts to what the encoder reads
    if sdxl:
        return sdxl_components(parts, str(path), folder_force_zeros(local))
    return Components(**parts, name=str(path))


def _from_single_file(path: Path, config: str | None, **kwargs) -> Components:
    """An original SD 1.x/2.x checkpoint through diffusers' `from_single_file` (configs from `config`, see below)."""
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ValueError(f"single-file checkpoints must be .safetensors or .ckpt, got {path.name}")
    check_weights_file(path)
    from diffusers import StableDiffusionPipeline

    extra = {"config": config} if config else {}
    sdxl = is_sdxl_checkpoint(path, config)  # SDXL base: StableDiffusionXLPipeline's conversion (loading_sdxl.py)
    try:
        pipe = (sdxl_pipeline_class() if sdxl else StableDiffusionPipeline).from_single_file(str(path), **kwargs, **extra)
    except OSError as e:  # a hub look-up of the configs with no network (LocalEntryNotFoundError), a bad file
        hint = "" if config and Path(config).is_dir() else (
            " If the diffusers configs could not be fetched (this machine may have no internet), pass config= "
            "a local diffusers folder of the same architecture (CLI: --config)."
        )
        raise FileNotFoundError(
            f"could not load the single-file checkpoint {path.name} (configs: "
            f"{config or 'the hub model diffusers infers from its keys'}): {e}.{hint}"
        ) from e
    except Exception as e:  # keys of another architecture, a config that does not fit: diffusers raises many kinds
        if is_out_of_memory(e):
            raise
        raise ModelError(f"could not load the single-file checkpoint {path.name}: {type(e).__name__}: {e}") from e
    if sdxl:
        return sdxl_from_pipeline(pipe, str(path))
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
        check_model_folder(path)
        return _from_folder(str(path), **kwargs)
    text = str(model)
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") != 1 or text.endswith(SINGLE_FILE_SUFFIXES)
    if looks_like_path:  # hub ids are "owner/name"
        raise FileNotFoundError(f"model path not found: {model}")
    try:
        return _from_folder(str(model), hub=True, **kwargs)
    except ModelError:
        raise
    except OSError as e:
        raise FileNotFoundError(
            f"could not load model {model!r}: not a local file or folder, and not a hub id in the local "
            f"cache (this machine may have no internet). Original error: {e}"
        ) from e


def embedded_inpaint_path() -> Path:
    """Folder of the embedded ShapeWorld inpainting model (a 9-channel UNet fine-tuned from the embedded model)."""
    return Path(str(resources.files("diffedit.shapeworld").joinpath("inpaint_weights")))


def embedded_flow_path() -> Path:
    """Folder of the embedded ShapeWorld flow model (a rectified-flow UNet on the embedded model's VAE and text encoder)."""
    return Path(str(resources.files("diffedit.shapeworld").joinpath("flow_weights")))


def load_inpaint_unet(model: str | os.PathLike | None = None, *, dtype: torch.dtype | None = None, config: str | None = None):
    """The 9-channel UNet of an inpainting model: None for the embedded ShapeWorld inpainter, a diffusers inpainting
    folder (or a UNet folder), a single-file inpainting checkpoint (`config`: its diffusers configs, as for
    `load_components`) or a hub id in the local cache. A UNet of another input width is refused by name."""
    from diffusers import UNet2DConditionModel

    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    path = embedded_inpaint_path() if model is None else Path(model)
    try:
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ValueError(f"single-file checkpoints must be .safetensors or .ckpt, got {path.name}")
            check_weights_file(path)
            from diffusers import StableDiffusionInpaintPipeline

            extra = {"config": config} if config else {}
            unet = StableDiffusionInpaintPipeline.from_single_file(str(path), **kwargs, **extra).unet
        elif path.is_dir():
            sub = {} if (path / "config.json").is_file() else {"subfolder": "unet"}
            if sub and not (path / "unet").is_dir() and model is not None:
                raise ValueError(f"{path} is not an inpainting model folder (no unet/ or config.json)")
            if model is None and not (path / "unet").is_dir():
                raise FileNotFoundError(f"the embedded ShapeWorld inpainting model is missing from this install ({path})")
            unet = UNet2DConditionModel.from_pretrained(str(path), **sub, **kwargs)
        else:
            text = str(model)
            if text.startswith((".", "/", "~")) or text.count("/") != 1 or text.endswith(SINGLE_FILE_SUFFIXES):
                raise FileNotFoundError(f"inpainting model path not found: {model}")
            unet = UNet2DConditionModel.from_pretrained(text, subfolder="unet", **kwargs)
    except (ValueError, FileNotFoundError, ModelError):
        raise
    except OSError as e:
        raise FileNotFoundError(f"could not load the inpainting model {model!r}: {e}") from e
    except Exception as e:  # weights of other shapes, a corrupt config: diffusers raises many kinds
        if is_out_of_memory(e):
            raise
        raise ModelError(f"cannot load the UNet of inpainting model {model}: {type(e).__name__}: {e}") from e
    if unet.config.in_channels != 9:
        raise ModelError(
            f"{model} is not an inpainting model: its UNet takes {unet.config.in_channels} input channels, an inpainting "
            "UNet 9 (latent, mask, masked-image latent)"
        )
    unet.sees_source = path.is_dir() and _trained_to_see_source(path)
    return unet


SEES_SOURCE_KEY = ("masked_image", "source")  # training.json of an inpainter trained on unholed inputs (--source-visible)


def _trained_to_see_source(folder: Path) -> bool:
    """Whether the inpainting folder's training.json (its own, or its parent's for a UNet folder) says the inpainter
    was trained to see the whole input under the mask."""
    for info in (folder / "training.json", folder.parent / "training.json"):
        if info.is_file():
            try:
                return json.loads(info.read_text()).get(SEES_SOURCE_KEY[0]) == SEES_SOURCE_KEY[1]
            except (ValueError, AttributeError):
                return False
    return False
