"""`diffedit bench outline`: how precisely a model draws a shape, the ceiling of ghost-free shape edits.

A same-colour shape change is ghost-free (SHAPEWORLD.md) only when at most 24 pixels of the one-pixel ring just
outside the new shape come out in the object's colour: the new outline must be right to the pixel all round. No
editor draws more precisely than its model draws on its own, so this benchmark measures the model's own drawing, on
single-object ShapeWorld scenes, three ways:

- vae: the exact scene encoded and decoded (what the latent allows);
- generated: the UNet drawing the scene from its caption alone (DDIM, the edit's steps and guidance); it chooses
  size and place, so the nearest ShapeWorld object is fitted to what it drew;
- redrawn (with an inpainter): the inpainter redrawing the object under a hole over it, the caption unchanged, as
  the editor's first candidate draws (no edit: the truth is the input itself).

Per image: ring pixels (the ghost rule's pixels, SHAPEWORLD.md, in the ring one pixel outside the shape, with the
object's colour as the old one), and the outline error (pixels where the drawn object and the shape disagree),
against the fitted object (every row) and against the truth (the rows that have one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffedit.metrics import dilate
from diffedit.shapeworld.scoring import GHOST_TRUTH_DISTANCE, MAX_GHOST_PIXELS
from diffedit.shapeworld.world import Scene, ShapeObject, render_background, sample_scene

__all__ = ["fit_object", "ring_pixels", "drawn_object", "run_outline", "format_outline"]

FIT_SIZE, FIT_SHIFT = 3, 2  # the fit searches sizes within 3 and centres within 2 pixels of its first guess
REDRAW_MARGIN = 4  # pixels the redrawn row's hole reaches past the object


def _distance(image: np.ndarray, color) -> np.ndarray:
    return np.linalg.norm(image.astype(np.float64) - np.asarray(color, np.float64), axis=-1)


def drawn_object(image: np.ndarray, color, background: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels closer to the object's colour than to the background's."""
    return _distance(image, color) < _distance(image, background)


def ring_pixels(image: np.ndarray, shape_mask: np.ndarray, color, background: np.ndarray) -> int:
    """The ghost rule's pixels in the ring one pixel outside `shape_mask`: the truth there is the background, and the
    image is farther than the rule's 40 from it and closer to the object's colour."""
    ring = dilate(shape_mask, 1) & ~shape_mask
    to_bg, to_obj = _distance(image, background), _distance(image, color)
    return int((ring & (to_bg > GHOST_TRUTH_DISTANCE) & (to_obj < to_bg)).sum())


def fit_object(drawn: np.ndarray, color: str, shape: str) -> ShapeObject | None:
    """The ShapeWorld object (integer size and centre) whose mask differs from `drawn` in the fewest pixels, searched
    around the size its area gives and the centre its centroid gives (a stray speck moves neither much, and adds the
    same error to every candidate); None when nothing was drawn."""
    ys, xs = np.nonzero(drawn)
    if len(ys) == 0:
        return None
    area = len(ys)
    size0 = {"circle": 2 * math.sqrt(area / math.pi), "square": math.sqrt(area), "triangle": math.sqrt(2 * area)}[shape]
    below = size0 / 6 if shape == "triangle" else 0.0  # a triangle's centroid lies s/6 below its box's centre
    cx0, cy0 = int(round(xs.mean() + 0.5)), int(round(ys.mean() + 0.5 - below))
    best, best_error = None, None
    for size in range(max(4, round(size0) - FIT_SIZE), round(size0) + FIT_SIZE + 1):
        for cx in range(cx0 - FIT_SHIFT, cx0 + FIT_SHIFT + 1):
            for cy in range(cy0 - FIT_SHIFT, cy0 + FIT_SHIFT + 1):
                candidate = ShapeObject(color, shape, size, cx, cy)
                error = int((candidate.mask() ^ drawn).sum())
                if best_error is None or error < best_error:
                    best, best_error = candidate, error
    return best


def _measure(image: np.ndarray, obj: ShapeObject, background: np.ndarray, truth: bool) -> dict:
    """Ring pixels and outline error of one drawn image against the fitted object (and the truth `obj`)."""
    drawn = drawn_object(image, obj.rgb, background)
    fitted = fit_object(drawn, obj.color, obj.shape)
    row: dict = {"shape": obj.shape, "drawn": bool(drawn.any())}
    if fitted is None:  # nothing drawn: every ring pixel is missing, count it as never ring-free
        row.update(ring_fit=None, error_fit=None)
    else:
        row.update(ring_fit=ring_pixels(image, fitted.mask(), obj.rgb, background),
                   error_fit=int((fitted.mask() ^ drawn).sum()))
    if truth:
        row.update(ring_truth=ring_pixels(image, obj.mask(), obj.rgb, background),
                   error_truth=int((obj.mask() ^ drawn).sum()))
    return row


def _scenes(images: int, seed: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, num_objects=1) for _ in range(images)]


@torch.no_grad()
def _vae_images(editor, pictures: np.ndarray) -> np.ndarray:
    from diffedit.images import from_uint8, to_uint8

    pixels = from_uint8(torch.from_numpy(pictures)).permute(0, 3, 1, 2).to(editor.device, editor.dtype)
    decoded = editor.components.decode_latents(editor.components.encode_images(pixels))
    return to_uint8(decoded).permute(0, 2, 3, 1).cpu().numpy()


def _generated_images(editor, captions: list[str], *, steps: int, guidance: float, seed: int) -> np.ndarray:
    from diffusers import DDIMScheduler

    from diffedit.shapeworld.generate import generate

    parts = {"vae": editor.vae, "unet": editor.unet, "tokenizer": editor.tokenizer, "text_encoder": editor.text_encoder,
             "scheduler": DDIMScheduler.from_config(editor.scheduler.config)}  # a copy: generate sets its timesteps
    return generate(parts, captions, num_inference_steps=steps, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(seed))


def _redrawn_images(editor, pictures: np.ndarray, scenes: list[Scene], *, steps: int, seed: int) -> np.ndarray:
    """The inpainter alone (no caption candidate) inside a hole over each object, the input pasted exactly around it
    (no snap, trim, cover or spill: they would take the input's own outline back)."""
    from diffedit.results import EditOptions

    options = EditOptions(num_inference_steps=steps, caption_candidate=False, edit_snap=False, edit_trim=0.0,
                          edit_cover=0.0, edit_spill=0)
    holes = [dilate(s.objects[0].mask(), REDRAW_MARGIN).astype(np.uint8) * 255 for s in scenes]
    captions = [s.caption() for s in scenes]
    # the source prompt is empty (the editor refuses an edit to the same caption): guidance pushes from no prompt
    result = editor.edit(list(pictures), [""] * len(captions), captions, mask=holes, seed=seed, options=options)
    return np.stack([np.asarray(im) for im in result.images])


def _summary(rows: list[dict]) -> dict:
    """Ring-free share, median ring pixels and outline error, against the fit and (where known) the truth."""
    out: dict = {"images": len(rows), "drawn": sum(r["drawn"] for r in rows)}
    for key in ("fit", "truth"):
        if f"ring_{key}" not in rows[0]:
            continue
        rings = [r[f"ring_{key}"] for r in rows]  # None: nothing drawn, never ring-free
        known = [(ring, r[f"error_{key}"]) for ring, r in zip(rings, rows) if ring is not None]
        out[f"ring_free_{key}"] = float(np.mean([v is not None and v <= MAX_GHOST_PIXELS for v in rings]))
        out[f"median_ring_{key}"] = float(np.median([ring for ring, _ in known])) if known else None
        out[f"median_error_{key}"] = float(np.median([error for _, error in known])) if known else None
    return out


def run_outline(
    model: str | None = None,
    *,
    images: int = 48,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    batch_size: int = 16,
    json_path: str | Path | None = None,
    progress: bool = True,
    editor=None,
) -> dict:
    """Measure the rows on `images` single-object scenes drawn from `seed` (the editor's default steps and guidance).

    Returns {"model", "images", "seed", "rows": {row: summary with "by_shape"}}; `editor`: an already loaded one."""
    from diffedit.bench.models import load_bench_editor

    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    editor = editor or load_bench_editor(model)
    editor.set_progress_bar_config(disable=True)
    scenes = _scenes(images, seed)
    pictures = np.stack([s.render() for s in scenes])
    draws = {"vae": lambda p, s, b: _vae_images(editor, p),
             "generated": lambda p, s, b: _generated_images(editor, [x.caption() for x in s], steps=steps,
                                                            guidance=guidance, seed=seed + b)}
    if editor.inpainter:
        draws["redrawn"] = lambda p, s, b: _redrawn_images(editor, p, s, steps=steps, seed=seed + b)
    report: dict = {"model": model or "shapeworld", "images": images, "seed": seed, "steps": steps, "guidance": guidance,
                    "rows": {}}
    with tqdm(total=images * len(draws), desc="outline", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for name, draw in draws.items():
            rows = []
            for b in range(0, images, batch_size):
                drawn = draw(pictures[b : b + batch_size], scenes[b : b + batch_size], b)
                for image, scene in zip(drawn, scenes[b : b + batch_size]):
                    obj = scene.objects[0]
                    rows.append(_measure(np.asarray(image), obj, render_background(scene.background), name != "generated"))
                bar.update(len(drawn))
            summary = _summary(rows)
            summary["by_shape"] = {shape: _summary([r for r in rows if r["shape"] == shape])
                                   for shape in sorted({r["shape"] for r in rows})}
            report["rows"][name] = summary
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _num(value) -> str:
    return "-" if value is None else f"{value:g}"


def format_outline(report: dict) -> str:
    """A table: per row, ring-free share and medians against the fit and the truth, and ring-free by shape (fit)."""
    shapes = sorted({s for row in report["rows"].values() for s in row["by_shape"]})
    head = (f"outline precision of {report['model']} ({report['images']} single-object scenes, seed {report['seed']}, "
            f"{report['steps']} steps; ring-free: at most {MAX_GHOST_PIXELS} ring pixels)")
    cols = ["row", "ring-free (fit)", "median ring (fit)", "median error (fit)", "ring-free (truth)",
            "median error (truth)", *[f"ring-free {s} (fit)" for s in shapes]]
    lines = [head, " | ".join(cols)]
    for name, r in report["rows"].items():
        cells = [name, _pct(r.get("ring_free_fit")), _num(r.get("median_ring_fit")), _num(r.get("median_error_fit")),
                 _pct(r.get("ring_free_truth")), _num(r.get("median_error_truth")),
                 *[_pct(r["by_shape"].get(s, {}).get("ring_free_fit")) for s in shapes]]
        lines.append(" | ".join(cells))
    return "\n".join(lines)
