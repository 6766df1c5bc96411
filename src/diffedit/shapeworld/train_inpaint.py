"""Fine-tune a ShapeWorld inpainting UNet (9 input channels) from a ShapeWorld model (issue 21).

As Stable Diffusion's inpainting checkpoint was made from SD 1.x: the UNet's first convolution is widened to
take [noisy latent (4), mask (1), masked-image latent (4)], the 5 new input channels start at zero (so step 0
is the plain model), and the whole UNet is trained on the usual epsilon loss while the VAE and the text
encoder stay frozen (the inpainting UNet shares them with the plain model).

Training examples are ShapeWorld edits: the edited scene is the target, the mask covers the latent cells of
the changed object before and after (as a DiffEdit mask does, thresholded at a random share and sometimes
grown by a cell), and the masked image is the *input* scene with the mask's cells set to 0 (mid-grey), so that
the model learns to draw the new object to the hole's full extent whatever survives around it. A share of
random rectangles and of full masks keeps it a general inpainter (and a text-to-image model).

A call trains for `minutes` or `steps` and leaves ``ckpt/inpaint_state.pt`` (weights, EMA, optimizer, step)
and ``ckpt/inpaint_data.pt`` (the encoded examples) so that the next call continues; the EMA weights are
saved as a diffusers folder (``StableDiffusionInpaintPipeline`` layout, fp16) in ``output/model``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from diffedit.masks import dilate, erode
from diffedit.shapeworld import world
from diffedit.shapeworld.evaluate import images_to_tensor
from diffedit.shapeworld.lr_schedule import lr_factor
from diffedit.shapeworld.train_unet import SNR_GAMMA, optimizer_step
from diffedit.shapeworld.training_data import tokenize
from diffedit.shapeworld.training_log import Logger

INPAINT_CHANNELS = 9  # [noisy latent, mask, masked-image latent], diffusers' inpainting order
EDIT_SHARE = 0.7  # examples whose mask is an edit's (the rest: 2/3 random rectangles, 1/3 the whole image)


def widen_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A copy of `unet` whose conv_in takes INPAINT_CHANNELS inputs, the new ones with zero weights."""
    config = dict(unet.config)
    config["in_channels"] = INPAINT_CHANNELS
    wide = UNet2DConditionModel.from_config(config)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    old = state["conv_in.weight"]  # (C, 4, k, k)
    new = torch.zeros(old.shape[0], INPAINT_CHANNELS, *old.shape[2:], dtype=old.dtype)
    new[:, : old.shape[1]] = old
    state["conv_in.weight"] = new
    wide.load_state_dict(state)
    return wide.to(dtype=next(unet.parameters()).dtype)


def cell_mask(pixels: np.ndarray, share: float, cell: int) -> np.ndarray:
    """(H / cell, W / cell) bool: the latent cells of which more than `share` of the pixels are set (0: any pixel)."""
    h, w = pixels.shape
    fraction = pixels.reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3))
    return fraction > share


def _grow(cells: np.ndarray) -> np.ndarray:
    """The cells grown by one (8-neighbourhood), as masks.dilate grows a latent mask."""
    return dilate(torch.from_numpy(cells)[None], 1)[0].numpy()


def pixel_hole(rng: np.random.Generator, changed: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels a DiffEdit pixel mask would hole: the changed pixels, grown by 0-2 pixels or shrunk by one
    as a computed mask is, inside the latent cells (the latent mask bounds the pixel mask, as at inference)."""
    cell = changed.shape[0] // cells.shape[0]
    grow = int(rng.choice([-1, 0, 0, 1, 2]))
    pixels = torch.from_numpy(changed)[None]
    pixels = (dilate(pixels, grow) if grow >= 0 else erode(pixels, -grow))[0].numpy()
    return pixels & np.kron(cells, np.ones((cell, cell), bool))


def draw_example(
    rng: np.random.Generator, cell: int, pixel_share: float = 0.0, visible_share: float = 0.0,
    edit_share: float = EDIT_SHARE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """One example: (target image, image to mask, mask of cell x cell latent cells, pixels to hole, target caption).

    An edit's masked image holes, in `visible_share` of the examples, nothing: the old object stays visible under the
    mask, so the inpainter learns to redraw it changed at its own place and size; else in `pixel_share` of them the
    changed pixels (pixel_hole: the object's exact extent from the hole's edge), else the whole cells. Rectangles and
    full masks hole cells. With both shares 0 it draws the same examples as before either existed. `edit_share`: the
    share of edits among the examples (the rest: 2/3 rectangles, 1/3 full masks)."""
    kind = rng.random()
    if kind < edit_share:
        case = world.sample_edit(rng)
        cells = cell_mask(case.mask, float(rng.choice([0.0, 0.2, 0.4])), cell)
        if rng.random() < 0.3:
            cells = _grow(cells)
        whole = np.kron(cells, np.ones((cell, cell), bool))
        if visible_share and rng.random() < visible_share:
            return case.target_image, case.source_image, cells, np.zeros_like(whole), case.target
        hole = pixel_hole(rng, case.mask, cells) if pixel_share and rng.random() < pixel_share else whole
        return case.target_image, case.source_image, cells, hole, case.target
    scene = world.sample_scene(rng)
    image = scene.render()
    n = image.shape[0] // cell
    cells = np.zeros((n, n), bool)
    if kind < edit_share + (1 - edit_share) * 2 / 3:
        h, w = rng.integers(2, n // 2 + 3, size=2)
        y, x = rng.integers(0, n - h + 1), rng.integers(0, n - w + 1)
        cells[y : y + h, x : x + w] = True
    else:
        cells[:] = True
    return image, image, cells, np.kron(cells, np.ones((cell, cell), bool)), scene.caption()


def masked_pixels(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`image` (H, W, 3) uint8 with the pixels of `hole` (H, W) set to mid-grey (0 in [-1, 1])."""
    out = image.copy()
    out[hole] = 128
    return out


@torch.no_grad()
def encode_examples(
    vae, n: int, seed: int, *, batch_size: int = 64, log: Logger | None = None, pixel_share: float = 0.0,
    visible_share: float = 0.0, edit_share: float = EDIT_SHARE,
) -> dict:
    """n examples encoded once: target latents, masked-image latents (n, 4, h, w) fp16, masks (n, 1, h, w), captions."""
    rng = np.random.default_rng(seed)
    scale, cell = vae.config.scaling_factor, 2 ** (len(vae.config.block_out_channels) - 1)
    z0, zm, masks, captions = [], [], [], []
    for i in range(0, n, batch_size):
        batch = [draw_example(rng, cell, pixel_share, visible_share, edit_share) for _ in range(min(batch_size, n - i))]
        target = images_to_tensor(np.stack([b[0] for b in batch])).to(vae.device, vae.dtype)
        holed = images_to_tensor(np.stack([masked_pixels(b[1], b[3]) for b in batch])).to(vae.device, vae.dtype)
        z0.append((vae.encode(target).latent_dist.mean.float() * scale).half().cpu())
        zm.append((vae.encode(holed).latent_dist.mean.float() * scale).half().cpu())
        masks.append(torch.from_numpy(np.stack([b[2] for b in batch]))[:, None])
        captions += [b[4] for b in batch]
        if log is not None:
            log(f"encoded {i + len(batch)} / {n} examples", force=False)
    return {"z0": torch.cat(z0), "zm": torch.cat(zm), "mask": torch.cat(masks), "captions": captions}


def inpainting_loss(
    unet, states: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor, zm: torch.Tensor, alphas_cumprod: torch.Tensor,
    generator: torch.Generator | None = None, hole_weight: float = 1.0,
) -> torch.Tensor:
    """The epsilon loss of DDPM with the mask and the masked-image latent concatenated to the noisy latent
    (Min-SNR-5 weighted, as the plain model's); the latent cells of the mask weigh `hole_weight` times the others."""
    b = z0.shape[0]
    t = torch.randint(0, alphas_cumprod.shape[0], (b,), generator=generator)
    noise = torch.randn(z0.shape, generator=generator)
    a = alphas_cumprod[t].view(b, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    eps = unet(torch.cat([zt, mask, zm], dim=1), t, encoder_hidden_states=states).sample
    weight = 1 + (hole_weight - 1) * mask
    per_sample = ((eps.float() - noise).pow(2) * weight).mean(dim=(1, 2, 3)) / weight.mean(dim=(1, 2, 3))
    snr = a.view(b) / (1 - a.view(b))
    return (per_sample * torch.clamp(snr, max=SNR_GAMMA) / snr).mean()


def train_inpaint(
    output: str | Path,
    *,
    base: str | Path | None = None,
    init: str | Path | None = None,
    minutes: float | None = None,
    steps: int | None = None,
    examples: int = 10_000,
    batch_size: int = 32,
    lr: float = 2e-4,
    ema_decay: float = 0.998,
    caption_dropout: float = 0.1,
    anneal: bool = False,
    pixel_holes: float = 0.0,
    source_visible: float = 0.0,
    hole_weight: float = 1.0,
    edit_share: float = EDIT_SHARE,
    seed: int = 0,
    threads: int | None = None,
    quiet: bool = False,
) -> dict:
    """Train (or continue, when output/ckpt holds a state) the inpainting UNet of the ShapeWorld model `base`
    (default: the embedded one) for `minutes` or `steps`; saves output/model and returns the figures. A first call
    starts from the inpainting UNet folder `init` when given (e.g. the embedded inpainter), else from the widened base.
    `pixel_holes`: the share of edit examples whose masked image holes the changed pixels, not whole cells;
    `source_visible`: the share whose masked image is the whole input (both on the first call: the examples are encoded
    then); `hole_weight`: the loss's weight of the mask's cells against the rest; `edit_share`: the share of examples
    that are edits (first call)."""
    from diffedit.loading import embedded_model_path
    from diffedit.shapeworld.model import load_model

    if (minutes is None) == (steps is None):
        raise ValueError("give exactly one of minutes and steps")
    if threads is not None:
        torch.set_num_threads(threads)
    log = Logger(quiet)
    output = Path(output)
    ckpt = output / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    base = Path(base) if base is not None else embedded_model_path()
    parts = load_model(base)
    # 1. The examples (encoded once, cached for the next call) and their frozen text states
    data = _examples(parts, ckpt / "inpaint_data.pt", examples, seed, log, pixel_holes, source_visible, edit_share)
    with torch.no_grad():
        states = parts["text_encoder"](tokenize(parts["tokenizer"], data["captions"]))[0]  # (N, T, D)
        empty = parts["text_encoder"](tokenize(parts["tokenizer"], [""]))[0]  # (1, T, D)
    # 2. The UNet: widened from the base, or continued from the state of an earlier call
    state_path = ckpt / "inpaint_state.pt"
    unet, ema, opt, start_step, history = _unet_and_state(parts["unet"], lr, state_path, log, init)
    gen = torch.Generator().manual_seed(seed + 1000 * len(history))
    alphas = parts["scheduler"].alphas_cumprod.float()
    # 3. The steps
    t_start, step, ema_loss = time.time(), 0, None
    while not ((steps is not None and step >= steps) or (minutes is not None and time.time() - t_start >= 60 * minutes
                                                         and step > 0)):
        progress = step / steps if steps is not None else (time.time() - t_start) / (60 * minutes)
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(start_step + step, progress, cosine=anneal)
        idx = torch.randint(0, len(data["captions"]), (batch_size,), generator=gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        cond = torch.where(drop[:, None, None], empty.expand(batch_size, -1, -1), states[idx])
        loss = inpainting_loss(
            unet, cond, data["z0"][idx].float(), data["mask"][idx].float(), data["zm"][idx].float(), alphas, gen,
            hole_weight=hole_weight,
        )
        optimizer_step(opt, unet, ema, loss, ema_decay, start_step + step)
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.99 * ema_loss + 0.01 * loss.item()
        log(f"inpaint step {start_step + step} loss {ema_loss:.4f} {(time.time() - t_start) / step:.3f} s/step", force=False)
    # 4. The state for the next call, and the model folder
    seconds = round(time.time() - t_start, 1)
    history.append({"stage": "inpaint", "steps": step, "total_steps": start_step + step, "seconds": seconds,
                    "final_loss": ema_loss, "anneal": anneal, "lr": lr, "examples": len(data["captions"]),
                    "pixel_holes": pixel_holes, "source_visible": source_visible, "hole_weight": hole_weight,
                    "edit_share": edit_share})
    torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "step": start_step + step, "history": history}, state_path)
    model = _save_inpainter(parts, ema, output / "model", base, history)
    log(f"inpaint done: {step} steps ({start_step + step} total) in {seconds / 60:.1f} min, loss {ema_loss}; saved {model}")
    return {"steps": step, "total_steps": start_step + step, "seconds": seconds, "final_loss": ema_loss, "model": str(model)}


def _unet_and_state(base_unet, lr: float, state_path: Path, log: Logger, init: str | Path | None = None):
    """(UNet, EMA copy, optimizer, step, history): widened from `base_unet` or loaded from the inpainting UNet folder
    `init`, or continued from an earlier call's state."""
    if init is not None and not state_path.exists():
        from diffedit.loading import load_inpaint_unet

        unet = load_inpaint_unet(None if str(init) == "embedded" else str(init)).float().train()
        history = [{"stage": "init", "from": str(init), "total_steps": 0}]
        ema = copy.deepcopy(unet).eval().requires_grad_(False)
        return unet, ema, torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01), 0, history
    unet = widen_unet(base_unet).float().train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    if not state_path.exists():
        return unet, ema, opt, 0, []
    state = torch.load(state_path, weights_only=False)
    unet.load_state_dict(state["unet"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    log(f"continuing from step {state['step']}")
    return unet, ema, opt, state["step"], state["history"]


def _examples(parts: dict, path: Path, n: int, seed: int, log: Logger, pixel_share: float = 0.0,
              visible_share: float = 0.0, edit_share: float = EDIT_SHARE) -> dict:
    """The cached examples at `path`, or n fresh ones encoded and cached there."""
    if path.exists():
        return torch.load(path)
    t0 = time.time()
    data = encode_examples(parts["vae"].eval(), n, seed + 1, log=log, pixel_share=pixel_share, visible_share=visible_share,
                           edit_share=edit_share)
    torch.save(data, path)
    log(f"encoded {n} examples in {time.time() - t0:.0f} s")
    return data


def _save_inpainter(parts: dict, unet, path: Path, base: Path, history: list[dict]) -> Path:
    """The base model's components with the inpainting UNet, as a diffusers inpainting folder (fp16)."""
    from diffedit.loading import SEES_SOURCE_KEY
    from diffedit.shapeworld.model import save_model

    info = {"base": str(base), "stages": history, "threads": torch.get_num_threads()}
    if any(stage.get("source_visible") for stage in history):
        info[SEES_SOURCE_KEY[0]] = SEES_SOURCE_KEY[1]  # the editor shows it the whole input (stages/inpainting.py)
    model = save_model(dict(parts, unet=unet), path, training_info=info)
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    (model / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return model
