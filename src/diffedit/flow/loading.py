"""A flow-matching model from a diffusers folder or hub id: its family read from model_index.json's `_class_name`
(and, for SD's layout, its scheduler: a flow UNet has FlowMatchEulerDiscreteScheduler)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..errors import ModelError
from .components import FAMILIES, FlowComponents

__all__ = ["flow_family", "load_flow_components"]

_ENCODERS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")


FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def flow_family(model: str | Path | None) -> str | None:
    """"sd3" or "flux" when `model` is a local diffusers folder of that pipeline class, "unet" for an SD-layout folder
    whose scheduler is the flow one, else None (any other model)."""
    if model is None:
        return None
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text())
        name, scheduler = data.get("_class_name"), (data.get("scheduler") or [None, None])[1]
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError, IndexError):
        return None
    family = next((family for family, cls in FAMILIES.items() if cls == name), None)
    if family == "unet" and scheduler != FLOW_SCHEDULER:
        return None  # a noise-prediction SD model: DiffEditor's
    return family


def load_flow_components(model: str | Path, family: str | None = None, torch_dtype: torch.dtype | None = None,
                         device: str | torch.device | None = None) -> FlowComponents:
    """Load through the family's diffusers pipeline (every component from its subfolder) and keep the parts."""
    import diffusers

    family = family or flow_family(model)
    if family not in FAMILIES:
        raise ModelError(f"{model} is not an SD3, FLUX or flow-UNet diffusers folder (model_index.json _class_name "
                         f"{' or '.join(FAMILIES.values())}, the last with the scheduler {FLOW_SCHEDULER})")
    try:
        with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype to dtype; older ones know only torch_dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = getattr(diffusers, FAMILIES[family]).from_pretrained(str(model), torch_dtype=torch_dtype)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelError(f"cannot load the {family} model {model}: {type(e).__name__}: {e}") from e
    encoders = {k: getattr(pipe, k) for k in _ENCODERS if getattr(pipe, k, None) is not None}
    denoiser = pipe.unet if family == "unet" else pipe.transformer
    parts = FlowComponents(family, pipe.vae, denoiser, pipe.scheduler, encoders, name=str(model))
    for m in parts.modules():
        m.eval().requires_grad_(False)
    if device is not None:
        parts.to(device)
    return parts
