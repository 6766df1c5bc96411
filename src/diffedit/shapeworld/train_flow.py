"""Train a rectified-flow ShapeWorld model (issue 25): the flow backbone of the ShapeEdit flow rows.

The model is the embedded one's VAE, tokenizer and text encoder (frozen, shared) with a UNet trained on the
flow-matching objective of SD3 (Esser et al. 2024): x_s = (1 - s) x_0 + s n, the UNet predicts the velocity
v = n - x_0 at timestep 1000 s, the levels s drawn logit-normal (m = 0, std 1: most weight mid-way, where the
mask and the edits work), 10 % empty captions for classifier-free guidance, an EMA of the weights for sampling and
saving. Its scheduler is diffusers' FlowMatchEulerDiscreteScheduler (shift 1).

The UNet starts from the embedded noise-prediction UNet (`init="embedded"`, the default): the architecture is the
same and its features of ShapeWorld carry over, so that the flow objective takes a fraction of the CPU time the
embedded model took from scratch; `init="scratch"` starts from random weights. A call trains for `minutes` or
`steps` and leaves ``ckpt/flow_state.pt`` (weights, EMA, optimizer, step, history) and ``ckpt/flow_data.pt`` (the
encoded latents and their text states) so that the next call continues; the EMA weights are saved as a diffusers
folder (``StableDiffusionPipeline`` layout whose scheduler is the flow one, fp16) in ``output/model``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from diffedit.shapeworld.lr_schedule import lr_factor
from diffedit.shapeworld.train_unet import optimizer_step
from diffedit.shapeworld.training_data import encode_dataset, tokenize
from diffedit.shapeworld.training_log import Logger

__all__ = ["flow_scheduler", "flow_loss", "held_out_loss", "train_flow"]

TWO_OBJECT_SHARE = 0.65  # two-object scenes among the training latents (the embedded model's last stage)


def flow_scheduler():
    """The flow model's scheduler: Euler on the flow ODE, sigmas from 1 to 0 unshifted, timestep = 1000 sigma."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def flow_loss(unet, states: torch.Tensor, z0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """||(n - z0) - v_theta((1 - s) z0 + s n, 1000 s, c)||^2 with s = sigmoid(N(0, 1)) (logit-normal levels)."""
    b = z0.shape[0]
    s = torch.sigmoid(torch.randn(b, generator=generator))  # (B,)
    noise = torch.randn(z0.shape, generator=generator)
    x = (1 - s.view(b, 1, 1, 1)) * z0 + s.view(b, 1, 1, 1) * noise
    v = unet(x, s * 1000, encoder_hidden_states=states).sample
    return (v.float() - (noise - z0)).pow(2).mean()


def train_flow(
    output: str | Path,
    *,
    base: str | Path | None = None,
    init: str = "embedded",
    minutes: float | None = None,
    steps: int | None = None,
    latents: int = 8000,
    batch_size: int = 32,
    lr: float = 3e-4,
    ema_decay: float = 0.998,
    caption_dropout: float = 0.1,
    anneal: bool = False,
    seed: int = 0,
    threads: int | None = None,
    quiet: bool = False,
    evaluate: bool = True,
) -> dict:
    """Train (or continue, when output/ckpt holds a state) the flow UNet on the frozen parts of the ShapeWorld model
    `base` (default: the embedded one) for `minutes` or `steps`; saves output/model and returns the figures (with
    `evaluate`, the generation accuracy of the EMA weights: 64 captions, 25 Euler steps, guidance 5)."""
    from diffedit.loading import embedded_model_path
    from diffedit.shapeworld.model import load_model

    if (minutes is None) == (steps is None):
        raise ValueError("give exactly one of minutes and steps")
    if init not in ("embedded", "scratch"):
        raise ValueError(f"init must be 'embedded' or 'scratch', got {init!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    log = Logger(quiet)
    output = Path(output)
    ckpt = output / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    base = Path(base) if base is not None else embedded_model_path()
    parts = load_model(base)
    # 1. The latents and their frozen text states (encoded once, cached for the next call)
    data = _data(parts, ckpt / "flow_data.pt", latents, seed, log)
    # 2. The UNet: from the base's (or random), or continued from the state of an earlier call
    unet, ema, opt, start_step, history = _unet_and_state(parts["unet"], init, lr, ckpt / "flow_state.pt", log)
    gen = torch.Generator().manual_seed(seed + 1000 * len(history))
    n, empty, all_states = data["z0"].shape[0], data["empty"].float(), data["states"].float()
    # 3. The steps
    t_start, step, ema_loss = time.time(), 0, None
    while not ((steps is not None and step >= steps) or (minutes is not None and time.time() - t_start >= 60 * minutes
                                                         and step > 0)):
        progress = step / steps if steps is not None else (time.time() - t_start) / (60 * minutes)
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(start_step + step, progress, cosine=anneal)
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        states = torch.where(drop[:, None, None], empty.expand(batch_size, -1, -1), all_states[idx])
        loss = flow_loss(unet, states, data["z0"][idx].float(), gen)
        optimizer_step(opt, unet, ema, loss, ema_decay, start_step + step)
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.99 * ema_loss + 0.01 * loss.item()
        log(f"flow step {start_step + step} loss {ema_loss:.4f} {(time.time() - t_start) / step:.3f} s/step", force=False)
    # 4. The state for the next call, the model folder and its figures
    seconds = round(time.time() - t_start, 1)
    history.append({"stage": "flow", "steps": step, "total_steps": start_step + step, "seconds": seconds,
                    "final_loss": ema_loss, "anneal": anneal, "lr": lr, "latents": n, "threads": torch.get_num_threads()})
    torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "step": start_step + step, "history": history}, ckpt / "flow_state.pt")
    figures = {"steps": step, "total_steps": start_step + step, "seconds": seconds, "final_loss": ema_loss}
    final = dict(parts, unet=ema, scheduler=flow_scheduler())
    if evaluate:
        figures["held_out_loss"] = held_out_loss(parts, ema)
        log(f"held-out flow loss {figures['held_out_loss']:.4f}")
        from diffedit.shapeworld.evaluate import generation_accuracy

        figures["generation_accuracy"] = generation_accuracy(final, 64, 25, 5.0, seed=0)
        log(f"generation accuracy {figures['generation_accuracy']}")
    figures["model"] = str(save_flow_model(final, output / "model", base, history, figures))
    log(f"flow done: {step} steps ({start_step + step} total) in {seconds / 60:.1f} min, loss {ema_loss}; "
        f"saved {figures['model']}")
    return figures


@torch.no_grad()
def held_out_loss(parts: dict, unet, n: int = 256, seed: int = 4321) -> float:
    """The flow loss of `unet` on n held-out scenes (their captions, fixed levels and noises): comparable across calls,
    and for the base's noise-prediction UNet read as a velocity (what training starts from)."""
    z0, captions = encode_dataset(parts["vae"].eval(), n, seed, quiet=True, two_object_share=TWO_OBJECT_SHARE)
    states = parts["text_encoder"].eval()(tokenize(parts["tokenizer"], captions))[0]
    gen = torch.Generator().manual_seed(seed)
    losses = [flow_loss(unet.eval(), states[i:i + 64], z0[i:i + 64].float(), gen) for i in range(0, n, 64)]
    return float(torch.stack(losses).mean())


def _unet_and_state(base_unet, init: str, lr: float, state_path: Path, log: Logger):
    """(UNet, EMA copy, optimizer, step, history): a copy of `base_unet` (or of its architecture, randomly initialised),
    or continued from an earlier call's state."""
    from diffusers import UNet2DConditionModel

    if init == "embedded" or state_path.exists():
        unet = copy.deepcopy(base_unet).float().train()
    else:
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(base_unet.config).float().train()
    unet.requires_grad_(True)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    if not state_path.exists():
        return unet, ema, opt, 0, [{"stage": "init", "from": init, "total_steps": 0}]
    state = torch.load(state_path, weights_only=False)
    unet.load_state_dict(state["unet"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    log(f"continuing from step {state['step']}")
    return unet, ema, opt, state["step"], state["history"]


@torch.no_grad()
def _data(parts: dict, path: Path, n: int, seed: int, log: Logger) -> dict:
    """The cached latents and text states at `path`, or n fresh scenes encoded and cached there."""
    if path.exists():
        return torch.load(path)
    t0 = time.time()
    z0, captions = encode_dataset(parts["vae"].eval(), n, seed + 1, quiet=True, two_object_share=TWO_OBJECT_SHARE)
    encoder = parts["text_encoder"].eval()
    states = torch.cat([encoder(tokenize(parts["tokenizer"], captions[i:i + 512]))[0] for i in range(0, n, 512)])
    empty = encoder(tokenize(parts["tokenizer"], [""]))[0]  # (1, T, D)
    data = {"z0": z0, "states": states.half(), "empty": empty.half(), "captions": captions}
    torch.save(data, path)
    log(f"encoded {n} scenes in {time.time() - t0:.0f} s")
    return data


def save_flow_model(parts: dict, path: Path, base: Path, history: list[dict], figures: dict) -> Path:
    """The base model's frozen components with the flow UNet and scheduler, as a diffusers folder (fp16)."""
    from diffedit.shapeworld.model import save_model

    info = {"base": str(base), "objective": "rectified flow (velocity n - x0, logit-normal levels)",
            "stages": history, "figures": {k: v for k, v in figures.items() if k != "model"}}
    model = save_model(parts, path, training_info=info)
    index = json.loads((model / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (model / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return model
