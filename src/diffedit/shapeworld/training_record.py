"""The record of a run that goes into the model folder's training.json: the command or call that made it,
its config, the stages so far, and its figures."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch

from diffedit.shapeworld.training_run import TrainingRun


def call_record(run: TrainingRun) -> dict:
    """The call's arguments as recorded (`threads`: the number torch uses, given or not)."""
    a = run.args
    return {
        "config": a.config, "device": a.device, "minutes": a.minutes, "vae_steps": a.vae_steps,
        "unet_steps": a.unet_steps, "batch_size": a.batch_size, "seed": a.seed, "stage": a.stage,
        "resume": str(a.resume) if a.resume else None, "threads": torch.get_num_threads(),
        "anneal": a.anneal, "two_object_share": a.two_object_share,
    }


def recorded_command(run: TrainingRun, call: dict) -> str:
    """The command line that ran, without the local path of the executable; from Python, the call itself."""
    if sys.argv and sys.argv[0] not in ("-c", ""):
        return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return f"train({str(run.output)!r}, " + ", ".join(f"{k}={v!r}" for k, v in call.items()) + ")"


def training_info(run: TrainingRun, unet_steps: int, figures: dict) -> dict:
    """training.json of the model folder (save_model adds saved_at, dtype and sizes)."""
    call = call_record(run)
    history, dev = run.history, run.dev
    return {
        "command": recorded_command(run, call),
        "call": call,
        "config_name": run.args.config,
        "config": asdict(run.cfg),
        "stages": history,
        "vae_steps": sum(h["steps"] for h in history if h["stage"] == "vae"),
        "unet_steps": unet_steps,
        "seconds": round(sum(h["seconds"] for h in history), 1),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "figures": figures,
    }
