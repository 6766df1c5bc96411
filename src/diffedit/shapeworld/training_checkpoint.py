"""What a call of `train` continues from: the checkpoint folder (``ckpt/``) of an earlier call, or an fp16
model folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel


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
