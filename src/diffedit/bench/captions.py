"""Caption accuracy of the zero-shot ShapeWorld captioner (captioning.py) on scenes drawn by `world.sample_scene`.

Scene i is drawn from `default_rng([seed, i])` and captioned with seed `seed + i`. Accuracy: the exact caption, and
per part: the background, the number of objects, the objects in caption order, the objects as a set (order aside).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from diffedit.bench.models import load_bench_editor
from diffedit.captioning import CaptionSearch, caption_shapeworld
from diffedit.images import save_json
from diffedit.shapeworld.world import parse_caption, sample_scene

__all__ = ["run_caption_bench", "format_caption_bench", "caption_parts"]


def caption_parts(found: str, truth: str) -> dict[str, bool]:
    """Which parts of a found caption match the true one."""
    (bg, objects), (true_bg, true_objects) = parse_caption(found), parse_caption(truth)
    return {"exact": found == truth, "background": bg == true_bg, "count": len(objects) == len(true_objects),
            "objects": objects == true_objects, "object_set": sorted(objects) == sorted(true_objects)}


def run_caption_bench(model=None, *, scenes: int = 200, seed: int = 0, search: CaptionSearch | None = None,
                      json_path=None, progress: bool = True) -> dict:
    """Caption `scenes` scenes with the embedded model (or `model`: a DiffEditor, a folder); returns the accuracy per
    part, seconds per image and the per-scene rows."""
    editor = model if hasattr(model, "components") else load_bench_editor(model, device="cpu", dtype="fp32")
    search = search or CaptionSearch()
    rows, rows_spent, seconds = [], [], 0.0
    for i in tqdm(range(scenes), desc="caption", disable=not progress, leave=False, dynamic_ncols=True):
        scene = sample_scene(np.random.default_rng([seed, i]))
        start = time.perf_counter()
        found = caption_shapeworld(editor.components, scene.render(), seed=seed + i, search=search)
        seconds += time.perf_counter() - start
        rows_spent.append(found.rows)
        truth = scene.caption()
        rows.append({"scene": i, "truth": truth, "caption": found.caption, **caption_parts(found.caption, truth)})
    parts = ("exact", "background", "count", "objects", "object_set")
    report = {
        "model": editor.name, "scenes": scenes, "seed": seed, "threads": torch.get_num_threads(),
        "search": {k: v for k, v in vars(search).items()}, "unet_rows_per_image": float(np.mean(rows_spent)),
        "accuracy": {p: float(np.mean([r[p] for r in rows])) for p in parts},
        "seconds_per_image": seconds / scenes, "rows": rows,
    }
    if json_path is not None:
        save_json(report, json_path)
    return report


def format_caption_bench(report: dict) -> str:
    """One line of figures and a table of accuracy per part."""
    acc = report["accuracy"]
    lines = [f"zero-shot captions: model {report['model']}, {report['scenes']} scenes (seed {report['seed']}), "
             f"{report['threads']} thread(s), {report['unet_rows_per_image']:.0f} UNet rows per image, "
             f"{report['seconds_per_image']:.2f} s / image"]
    lines += [f"  {part:<11}{100 * value:6.1f} %" for part, value in acc.items()]
    return "\n".join(lines)
