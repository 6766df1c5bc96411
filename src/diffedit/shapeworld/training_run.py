"""One call of `train`: its arguments, checked, and what they resolve to (config, device, folders, time budget,
the stages run so far)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from diffedit.shapeworld.model import ModelConfig, get_config
from diffedit.shapeworld.training_checkpoint import load_history, resume_model_dir
from diffedit.shapeworld.training_log import Logger

STAGES = ("vae", "unet", "all")


@dataclass(frozen=True)
class TrainingArgs:
    """The arguments of one `train` call, as given (see `train` for their meaning)."""

    output: str | Path
    config: str
    device: str
    minutes: float | None
    vae_steps: int | None
    unet_steps: int | None
    batch_size: int | None
    seed: int
    quiet: bool
    samples_every: int | None
    stage: str
    resume: str | Path | None
    threads: int | None
    anneal: bool
    two_object_share: float | None


@dataclass
class TrainingRun:
    """A started call: its arguments and what they resolve to."""

    args: TrainingArgs
    cfg: ModelConfig  # the named config, with the UNet batch overridden by `batch_size`
    dev: torch.device
    output: Path
    ckpt: Path  # output/ckpt: what the next call continues from
    source: Path  # where this call finds what earlier stages left: resume/ckpt, else its own ckpt
    model_dir: Path | None  # the fp16 model folder to continue from when `resume` has no full checkpoint
    log: Logger
    t_start: float
    deadline: float | None  # the time by which this call must end, when given `minutes`
    reserve: float  # seconds kept back for the final evaluation and saving
    history: list[dict]  # stages run so far, this call's appended as they end


def start_run(args: TrainingArgs) -> TrainingRun:
    """Check the arguments, set up torch (threads, TF32, the seed), make output/ckpt, and resolve the rest."""
    if args.stage not in STAGES:
        raise ValueError(f"unknown stage {args.stage!r}; choose one of {STAGES}")
    if args.minutes is not None and args.minutes <= 0:
        raise ValueError(f"minutes must be positive, got {args.minutes}")
    cfg = get_config(args.config)
    if args.batch_size is not None:
        cfg = replace(cfg, unet_batch=args.batch_size)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    output = Path(args.output)
    ckpt = output / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    source = Path(args.resume) / "ckpt" if args.resume is not None else ckpt
    model_dir = resume_model_dir(Path(args.resume)) if args.resume is not None else None
    log = Logger(args.quiet)
    t_start = time.time()
    minutes = args.minutes
    deadline = t_start + 60 * minutes if minutes is not None else None
    reserve = 0.05 * 60 * minutes if minutes is not None else 0.0  # final evaluation and saving
    history = load_history(source, model_dir)
    return TrainingRun(args, cfg, dev, output, ckpt, source, model_dir, log, t_start, deadline, reserve, history)
