"""What a call of `train` continues from: the checkpoint folder (``ckpt/``) of an earlier call, or an fp16
model folder, and what it leaves there for the next call (the VAE, the UNet state, the history)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from diffedit.shapeworld.training_log import Logger


def resume_model_dir(resume: Path) -> Path | None:
    """The fp16 model folder to continue from when `resume` has no full checkpoint (ckpt/unet_state.pt).

    A GPU call can bring back only a few files of 16 MiB, so the model folder (sharded fp16 weights,
    EMA) is what travels between calls; `resume` may be that folder or a run folder holding `model/`.
    """
    if (resume / "ckpt" / "unet_state.pt").exists():
        return None
    for candidate in (resume, resume / "model"):
        if (candidate / "model_index.json").exists():
            return candidate
    return None


def load_history(ckpt: Path, model_dir: Path | None = None) -> list[dict]:
    """Stages run so far: ckpt/history.json, else the `stages` of a model folder's training.json."""
    path = ckpt / "history.json"
    if path.exists():
        return json.loads(path.read_text())
    if model_dir is not None and (model_dir / "training.json").exists():
        return json.loads((model_dir / "training.json").read_text()).get("stages", [])
    return []


def load_trained_vae(source: Path, model_dir: Path | None) -> AutoencoderKL:
    """The VAE of an earlier stage: source/vae (a checkpoint), else the model folder's (upcast to fp32)."""
    if (source / "vae").exists():
        return AutoencoderKL.from_pretrained(source / "vae")
    if model_dir is not None:
        return AutoencoderKL.from_pretrained(model_dir, subfolder="vae", torch_dtype=torch.float32)
    raise ValueError(f"no trained VAE in {source}; run stage 'vae' first or pass resume=DIR (a run or model folder)")


def state_from_model_dir(model_dir: Path, components: dict) -> dict:
    """A UNet stage's resume state from a saved fp16 model folder: its EMA weights start both the
    trained and the EMA copies (upcast to fp32); the optimizer starts afresh."""
    loaded = {
        "unet": UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=torch.float32),
        "text_encoder": CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", torch_dtype=torch.float32),
    }
    state = {}
    for name, module in loaded.items():
        ours = {k: v.shape for k, v in components[name].state_dict().items()}
        theirs = {k: v.shape for k, v in module.state_dict().items()}
        if ours != theirs:
            raise ValueError(f"the {name} in {model_dir} has other sizes than this config; pass the --config it was trained with")
        state[name] = state[f"ema_{name}"] = module.state_dict()
    info = json.loads((model_dir / "training.json").read_text()) if (model_dir / "training.json").exists() else {}
    return {**state, "optimizer": None, "step": int(info.get("unet_steps", 0))}


def load_unet_state(source: Path, model_dir: Path | None, components: dict, log: Logger) -> dict | None:
    """The UNet state to continue from: source/unet_state.pt, else the model folder's weights, else None."""
    state_path = source / "unet_state.pt"
    state = torch.load(state_path, weights_only=False) if state_path.exists() else None
    if state is None and model_dir is not None:
        state = state_from_model_dir(model_dir, components)
        log(f"continuing from the fp16 model in {model_dir} (step {state['step']}, fresh optimizer)")
    return state


def restore_weights(components: dict, state: dict | None, device: torch.device) -> dict:
    """Load `state` (if any) into the UNet and text encoder; returns their EMA copies on `device`."""
    if state is not None:
        components["unet"].load_state_dict(state["unet"])
        components["text_encoder"].load_state_dict(state["text_encoder"])
    ema = {k: copy.deepcopy(components[k]).eval().requires_grad_(False) for k in ("unet", "text_encoder")}
    if state is not None:
        ema["unet"].load_state_dict(state["ema_unet"])
        ema["text_encoder"].load_state_dict(state["ema_text_encoder"])
    for m in ema.values():
        m.to(device)
    return ema


def save_unet_state(path: Path, components: dict, ema: dict, optimizer: dict, step: int) -> None:
    """The full UNet state a later call continues from: trained and EMA weights, optimizer, step."""
    torch.save(
        {
            "unet": components["unet"].state_dict(),
            "text_encoder": components["text_encoder"].state_dict(),
            "ema_unet": ema["unet"].state_dict(),
            "ema_text_encoder": ema["text_encoder"].state_dict(),
            "optimizer": optimizer,
            "step": step,
        },
        path,
    )
