"""Tuning the mask: IoU against ShapeEdit's ground truth for a grid of post-processing settings.

The UNet part of the mask (noise-difference maps) does not depend on the clamp, smoothing, threshold
or dilation, so each case's raw maps are computed once per reference prompt and every setting of the
grid is applied to them: a sweep of hundreds of settings costs about one mask pass per case.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffedit.bench.models import load_bench_editor
from diffedit.images import save_json
from diffedit.masks import dilate, finish_mask, upsample_mask
from diffedit.metrics import mask_iou
from diffedit.results import EditOptions
from diffedit.shapeworld.world import edit_cases
from diffedit.stages import NoiseDifferenceMask, NoiseStreams, mask_changes, prepare_batch

__all__ = ["DEFAULT_GRID", "run_mask_sweep", "run_composite_sweep"]

DEFAULT_GRID = {
    "mask_reference": [None, ""],  # None: the source prompt
    "clamp": [("quantile", 0.95), ("quantile", 0.99), ("quantile", 1.0), ("mean_ratio", 2.0), ("mean_ratio", 3.0)],
    "mask_smooth": [0.0, 0.5, 1.0, 1.5],
    "mask_threshold": [0.3, 0.4, 0.5, 0.6],
    "mask_dilate": [0, 1],
}


def run_mask_sweep(
    model: str | None = "shapeworld", *, cases: int = 96, seed: int = 1000, batch_size: int = 16,
    steps: int = EditOptions.num_inference_steps, grid: dict | None = None, json_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Mean mask IoU (overall and by edit kind) of every setting of `grid` on `edit_cases(cases, seed)`."""
    grid = grid or DEFAULT_GRID
    editor = load_bench_editor(model, device=torch.device("cpu"), dtype="fp32")
    editor.set_progress_bar_config(disable=True)
    todo = edit_cases(cases, seed)
    gts = [c.mask for c in todo]
    kinds = np.array([c.kind for c in todo])
    raw: dict = {}  # reference -> (cases, h, w) raw maps
    with tqdm(total=len(grid["mask_reference"]) * cases, desc="mask maps", disable=not progress) as bar:
        for reference in grid["mask_reference"]:
            options = EditOptions(num_inference_steps=steps, mask_reference=reference)
            maps = []
            for start in range(0, cases, batch_size):
                chunk = todo[start : start + batch_size]
                parts = editor.components
                batch = prepare_batch([c.source_image for c in chunk], [c.source for c in chunk], [c.target for c in chunk],
                                      vae_scale_factor=parts.vae_scale_factor, max_pixels=options.max_pixels)
                latents = parts.encode_images(batch.pixels)
                streams = NoiseStreams(tuple(seed + start + b for b in range(len(chunk))))
                maps.append(NoiseDifferenceMask.noise_maps(parts, batch, latents, options, streams, mask_changes(batch, options)))
                bar.update(len(chunk))
            raw[reference] = torch.cat(maps)
    rows = []
    settings = list(itertools.product(grid["mask_reference"], grid["clamp"], grid["mask_smooth"],
                                      grid["mask_threshold"], grid["mask_dilate"]))
    for reference, (clamp, level), smooth, threshold, dilate_cells in settings:
        _, binary = finish_mask(raw[reference], clamp=clamp, quantile=level if clamp == "quantile" else 0.99,
                                mean_ratio=level if clamp == "mean_ratio" else 3.0, smooth=smooth,
                                threshold=threshold, dilate_cells=dilate_cells)
        pixel = upsample_mask(binary, gts[0].shape).numpy() > 0.5
        ious = np.array([mask_iou(p, g) for p, g in zip(pixel, gts)])
        rows.append({
            "mask_reference": "source" if reference is None else reference, "clamp": clamp, "clamp_level": level,
            "mask_smooth": smooth, "mask_threshold": threshold, "mask_dilate": dilate_cells,
            "iou": float(ious.mean()), **{f"iou_{k}": float(ious[kinds == k].mean()) for k in sorted(set(kinds))},
        })
    rows.sort(key=lambda r: -r["iou"])
    report = {"model": model or "shapeworld", "cases": cases, "seed": seed, "steps": steps,
              "cell_upper_bound_iou": cell_upper_bound_iou(gts, editor.vae_scale_factor), "rows": rows}
    if json_path:
        save_json(report, json_path)
    return report


def cell_upper_bound_iou(masks: list[np.ndarray], factor: int) -> float:
    """Mean IoU of the best masks made of whole latent cells: a cell is on where the truth covers half of it.

    Decoding changes whole cells, so no mask computed on the latent grid scores above this.
    """
    ious = []
    for m in masks:
        cover = F.avg_pool2d(torch.as_tensor(m, dtype=torch.float32)[None], factor, ceil_mode=True)  # (1, h, w)
        cells = upsample_mask(cover >= 0.5, (cover.shape[-2] * factor, cover.shape[-1] * factor))[0] > 0.5
        ious.append(mask_iou(cells[: m.shape[0], : m.shape[1]].numpy(), m))
    return float(np.mean(ious))


def format_mask_sweep(report: dict, top: int = 12) -> str:
    defaults = EditOptions()

    def is_default(r: dict) -> bool:
        return (r["mask_reference"] == "source" and r["clamp"] == defaults.mask_clamp
                and r["clamp_level"] == defaults.mask_quantile and r["mask_smooth"] == defaults.mask_smooth
                and r["mask_threshold"] == defaults.mask_threshold and r["mask_dilate"] == defaults.mask_dilate)

    lines = [f"mask IoU sweep: {report['cases']} cases, seed {report['seed']}, model {report['model']}; "
             f"best cell-aligned mask: IoU {report['cell_upper_bound_iou']:.3f}",
             f"{'rank':>4} {'reference':>9} {'clamp':>10} {'level':>5} {'smooth':>6} {'thresh':>6} {'dilate':>6}"
             f" {'IoU':>6} {'color':>6} {'shape':>6} {'both':>6}"]
    for i, r in enumerate(report["rows"]):
        if i < top or is_default(r):
            mark = "  <- current defaults" if is_default(r) else ""
            ref = r["mask_reference"] or '""'
            lines.append(f"{i + 1:>4} {ref:>9} {r['clamp']:>10} {r['clamp_level']:>5} "
                         f"{r['mask_smooth']:>6} {r['mask_threshold']:>6} {r['mask_dilate']:>6} {r['iou']:>6.3f} "
                         f"{r.get('iou_color', float('nan')):>6.3f} {r.get('iou_shape', float('nan')):>6.3f} "
                         f"{r.get('iou_both', float('nan')):>6.3f}{mark}")
    return "\n".join(lines)


def _to_chw(image) -> torch.Tensor:
    """(H, W, 3) uint8 image or array -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def run_composite_sweep(
    model: str | None = "shapeworld", *, cases: int = 48, seed: int = 5000, batch_size: int = 8,
    steps: int = EditOptions.num_inference_steps,
    feathers: tuple[int, ...] = (0, 1, 2, 3, 4), dilations: tuple[int, ...] = (0, 1, 2),
    json_path: str | Path | None = None, progress: bool = True,
) -> dict:
    """ShapeEdit figures of the pixel composite's settings (mask dilation in px x feather width).

    Each case is edited once without the composite; every setting is then pasted from that one decoded
    image, so the sweep costs one edit per case. "none" is the decoded image itself (composite off).
    """
    from diffedit.sampling import composite, feathered_alpha
    from diffedit.shapeworld.scoring import score_edit, summarize

    editor = load_bench_editor(model, device=torch.device("cpu"), dtype="fp32")
    editor.set_progress_bar_config(disable=True)
    todo = edit_cases(cases, seed)
    options = EditOptions(num_inference_steps=steps, composite=False)
    rows: dict[str, list[dict]] = {}
    for start in tqdm(range(0, cases, batch_size), desc="edits", disable=not progress):
        chunk = todo[start : start + batch_size]
        result = editor.edit([c.source_image for c in chunk], [c.source for c in chunk], [c.target for c in chunk],
                             seed=seed + start, options=options)
        decoded = torch.stack([_to_chw(im) for im in result.images])
        original = torch.stack([_to_chw(c.source_image) for c in chunk])
        mask = torch.stack([torch.from_numpy(np.array(m) > 127) for m in result.mask_images])
        outputs = {"none": decoded}
        for d in dilations:
            grown = dilate(mask.float(), d) > 0.5
            for f in feathers:
                outputs[f"dilate {d} px, feather {f} px"] = composite(original, decoded, feathered_alpha(grown, f))
        for name, images in outputs.items():
            rows.setdefault(name, []).extend(
                score_edit(im.permute(1, 2, 0).numpy(), case, m.numpy()) for im, case, m in zip(images, chunk, mask)
            )
    summary = {name: summarize(r) for name, r in rows.items()}
    report = {"model": model or "shapeworld", "cases": cases, "seed": seed, "steps": steps,
              "defaults": {"feather": EditOptions().feather}, "settings": summary}
    if json_path:
        save_json(report, json_path)
    return report


def format_composite_sweep(report: dict) -> str:
    default = f"dilate 0 px, feather {report['defaults']['feather']} px"
    lines = [f"composite sweep: {report['cases']} cases, seed {report['seed']}, model {report['model']}",
             f"  {'setting':<26}{'bg PSNR':>9}{'tgt PSNR':>9}{'success':>9}{'color':>7}{'shape':>7}{'both':>7}"]
    for name, s in report["settings"].items():
        o, k = s["overall"], s["by_kind"]
        cells = "".join(f"{100 * k[g]['success']:>6.1f}%" if g in k else f"{'-':>7}" for g in ("color", "shape", "both"))
        mark = "  <- default" if name == default else ""
        lines.append(f"  {name:<26}{o['background_psnr']:>9.2f}{o['target_psnr']:>9.2f}{100 * o['success']:>8.1f}%{cells}{mark}")
    return "\n".join(lines)
