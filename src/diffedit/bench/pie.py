"""PIE-Bench (Ju et al. 2024): real images edited from their source to their target prompt, scored as PIE-Bench's table
does (structure distance; PSNR, LPIPS, MSE and SSIM of the unedited part; CLIP similarity of the whole edit and of its
edited part), plus StyleDiffusion's NS-LPIPS.

The data (pie_data.py) and the scoring networks come from local folders: LPIPS (real_metrics.load_lpips), CLIP and
DINO (feature_metrics). A metric whose networks were not given is left out of the table with a note. Entry i is
edited with seed `seed + i` by every method.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffedit.attention import capture_cross_attention
from diffedit.bench.baselines import OURS_VARIANTS, diffusers_edit, diffusers_pipeline, gt_mask_edit, sdedit
from diffedit.bench.feature_metrics import ClipScorer, StructureDistance
from diffedit.bench.models import load_bench_editor
from diffedit.bench.pie_data import PieEntry, decode_rle, load_pie
from diffedit.bench.quality import BASELINE_STEPS, BASELINE_STRENGTH
from diffedit.bench.real_metrics import LPIPS, load_lpips, lpips_distance, mse, ns_lpips, psnr, ssim
from diffedit.editor import DiffEditor
from diffedit.images import save_json
from diffedit.inversion import ddim_invert
from diffedit.results import EditOptions
from diffedit.schedule import ddim_grid
from diffedit.timing import timed

__all__ = ["PIE_METHODS", "PIE_METRICS", "PieScorers", "load_scorers", "score_pie_edit", "source_word_attention",
           "run_pie", "format_pie"]

PIE_METHODS = ("ours", "diffusers", "sdedit", "gt_mask", *(m for m in OURS_VARIANTS if m != "ours"))
# metric -> (column, scale in the table): PIE-Bench's columns in its order, then NS-LPIPS
PIE_METRICS = {
    "structure_distance": ("struct x1e3", 1e3), "psnr": ("PSNR", 1.0), "lpips": ("LPIPS x1e3", 1e3),
    "mse": ("MSE x1e4", 1e4), "ssim": ("SSIM x1e2", 1e2), "clip_whole": ("CLIP whole", 1.0),
    "clip_edited": ("CLIP edited", 1.0), "ns_lpips": ("NS-LPIPS x1e3", 1e3),
}
PSNR_CAP = 100.0  # an unedited part kept bit for bit has infinite PSNR; rows and means clip it here


@dataclass
class PieScorers:
    """The networks behind the metrics; None where the weights were not given (the metric is then skipped)."""

    lpips: LPIPS | None = None  # PIE-Bench's LPIPS column (SqueezeNet if the folder has it)
    ns_lpips: LPIPS | None = None  # StyleDiffusion's NS-LPIPS (AlexNet if the folder has it)
    clip: ClipScorer | None = None  # both CLIP columns
    structure: StructureDistance | None = None  # the structure distance column
    notes: list[str] = field(default_factory=list)  # what was skipped or substituted, for the table


def load_scorers(lpips: str | Path | None = None, clip: str | Path | None = None, dino: str | Path | None = None, *,
                 device: str | torch.device = "cpu") -> PieScorers:
    """The scoring networks from local folders (any may be None: its metrics are skipped with a note)."""
    s = PieScorers()
    if lpips is not None:
        s.lpips = load_lpips(lpips, device=device)
        try:
            s.ns_lpips = load_lpips(lpips, "alex", device=device)
        except FileNotFoundError:
            s.ns_lpips = s.lpips
            s.notes.append(f"NS-LPIPS with {s.lpips.net} (StyleDiffusion's is alex: alex.pth and alexnet-*.pth)")
    else:
        s.notes.append("LPIPS and NS-LPIPS skipped (no --lpips folder)")
    if clip is not None:
        s.clip = ClipScorer(clip, device=device)
    else:
        s.notes.append("CLIP whole and edited skipped (no --clip folder)")
    if dino is not None:
        s.structure = StructureDistance(dino, device=device)
    else:
        s.notes.append("structure distance skipped (no --dino folder)")
    return s


def _word_tokens(tokenizer, prompt: str, word: str) -> list[int]:
    """Token positions of the first whole word `word` of the prompt (start token counted; punctuation after it left
    out), [] if it has none."""
    words = prompt.split()
    plain = [w.strip(",.;:!?\"'") for w in words]
    if word.lower() not in [w.lower() for w in plain]:
        return []
    j = [w.lower() for w in plain].index(word.lower())

    def content(text: str) -> int:  # tokens of the text, without the end token
        ids = tokenizer(text, truncation=False).input_ids
        return len(ids) - 1 if ids and ids[-1] == tokenizer.eos_token_id else len(ids)

    start, end = content(" ".join(words[:j])), content(" ".join(words[:j] + [plain[j]]))
    return [p for p in range(start, end) if p < tokenizer.model_max_length]


@torch.no_grad()
def source_word_attention(editor: DiffEditor, image: np.ndarray, prompt: str, word: str, steps: int) -> np.ndarray | None:
    """StyleDiffusion's selected region: the cross-attention map of `word` in the source prompt, averaged over every
    layer and UNet call of a DDIM inversion of the image with that prompt, divided by its maximum, at the image's size
    (float (H, W) in [0, 1]); None when the prompt lacks the word."""
    parts = editor.components
    positions = _word_tokens(parts.tokenizer, prompt, word)
    if not positions:
        return None
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    latents = parts.encode_images(pixels)
    with capture_cross_attention(parts.unet) as store:  # the plain UNet: a traced one would skip the recorders
        ddim_invert(parts.unet, latents, parts.encode_prompts([prompt]), ddim_grid(parts.scheduler, steps, 1.0))
    maps = store.maps(tuple(latents.shape[-2:]))[0, positions].mean(0)  # (h, w)
    maps = F.interpolate(maps[None, None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    return (maps.clamp_min(0) / maps.max().clamp_min(1e-12)).cpu().numpy()


def score_pie_edit(scorers: PieScorers, source: np.ndarray, edited: np.ndarray, mask: np.ndarray, target: str,
                   selected: np.ndarray | None = None) -> dict:
    """One edit's metrics (None where a network is absent or the region is empty): the unedited part is ~mask."""
    keep = ~mask
    bg = bool(keep.any())
    row = {
        "structure_distance": scorers.structure(source, edited) if scorers.structure else None,
        "psnr": min(psnr(source, edited, keep), PSNR_CAP) if bg else None,
        "lpips": lpips_distance(scorers.lpips, source, edited, keep) if scorers.lpips and bg else None,
        "mse": mse(source, edited, keep) if bg else None,
        "ssim": ssim(source, edited, keep) if bg else None,
        "clip_whole": scorers.clip(edited, target) if scorers.clip else None,
        "clip_edited": scorers.clip(edited, target, mask) if scorers.clip and mask.any() else None,
        "ns_lpips": ns_lpips(scorers.ns_lpips, source, edited, selected) if scorers.ns_lpips and selected is not None
        else None,
    }
    return row


def _edit(method: str, editor: DiffEditor, image: np.ndarray, entry: PieEntry, *, seed: int, options: EditOptions,
          baseline_steps: int, pipe) -> np.ndarray:
    """One method's edit of an entry, uint8 (H, W, 3)."""
    if method == "diffusers":
        out, _ = diffusers_edit(pipe, image, entry.source, entry.target, seed=seed, num_inference_steps=baseline_steps,
                                strength=BASELINE_STRENGTH, mask_noises=options.mask_noises)
    elif method == "sdedit":
        out = sdedit(editor, [image], [entry.target], sources=[entry.source], strength=BASELINE_STRENGTH, seed=seed,
                     num_inference_steps=baseline_steps, guidance_scale=options.guidance_scale)[0]
    elif method == "gt_mask":  # the annotated region, without the border the evaluation adds
        annotated = decode_rle(list(entry.runs), image.shape[:2], border=False)
        out = gt_mask_edit(editor, [image], [entry.source], [entry.target], [annotated], seed=seed, options=options).images[0]
    else:
        variant = options.replace(**OURS_VARIANTS[method])
        out = editor.edit(image, entry.source, entry.target, seed=seed, options=variant).images[0]
    return np.asarray(out.convert("RGB"))


def _summary(rows: list[dict]) -> dict:
    """Means of every metric over the rows that have it (None when none has), and the count of scored rows."""
    scored = [r for r in rows if "error" not in r]
    out: dict = {"n": len(scored), "failed": len(rows) - len(scored)}
    for metric in PIE_METRICS:
        values = [r[metric] for r in scored if r.get(metric) is not None]
        out[metric] = float(np.mean(values)) if values else None
    return out


def _method_rows(method: str, editor: DiffEditor, entries: list[PieEntry], images: list[np.ndarray],
                 selected: list, scorers: PieScorers, *, seed: int, options: EditOptions, baseline_steps: int,
                 progress: bool) -> tuple[list[dict], float]:
    """Every entry edited and scored by one method: the rows and the seconds spent editing."""
    pipe = diffusers_pipeline(editor) if method == "diffusers" else None
    rows, timings = [], {}
    for i, (entry, image) in enumerate(tqdm(list(zip(entries, images)), desc=method, disable=not progress, leave=False)):
        row = {"key": entry.key, "editing_type": entry.editing_type, "source": entry.source, "target": entry.target}
        try:
            with timed(timings, method, editor.device):
                edited = _edit(method, editor, image, entry, seed=seed + i, options=options, baseline_steps=baseline_steps,
                               pipe=pipe)
        except ValueError as e:  # an entry the method cannot edit (e.g. equal prompts) is reported, not fatal
            rows.append({**row, "error": str(e)})
            continue
        mask = entry.mask(image.shape[:2])
        rows.append({**row, **score_pie_edit(scorers, image, edited, mask, entry.target, selected[i])})
    return rows, timings.get(method, 0.0)


def run_pie(
    data: str | Path,
    model: str | Path | DiffEditor | None = None,
    *,
    limit: int | None = None,
    types: Sequence[str] | None = None,
    methods: Sequence[str] = ("ours",),
    scorers: PieScorers | None = None,
    seed: int = 0,
    options: EditOptions | None = None,
    baseline_steps: int = BASELINE_STEPS,
    device: str = "cpu",
    dtype: str = "fp32",
    json_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Edit PIE-Bench's entries with every method and score them; returns {"methods": {name: {"summary",
    "by_type", "seconds_per_edit", "rows"}}, ...} (the JSON's content); `progress`: a bar per method.

    data: PIE-Bench's data folder; model: a DiffEditor, a model path / hub id, or None for the embedded model;
    scorers: load_scorers(...) (default: none, so only PSNR, MSE and SSIM); options: ours' EditOptions, whose steps
    the NS-LPIPS attention inversion uses too; baseline_steps: diffusers' pipeline and SDEdit's steps.
    """
    # 1. Check inputs, read the entries, load the model
    unknown = [m for m in methods if m not in PIE_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(PIE_METHODS)}")
    entries = load_pie(data, limit=limit, types=None if types is None else list(types))
    if not entries:
        raise ValueError(f"no PIE-Bench entries to run in {data}")
    scorers = scorers or PieScorers(notes=["LPIPS, NS-LPIPS, CLIP and structure distance skipped (no networks given)"])
    options = options or EditOptions()
    editor = model if isinstance(model, DiffEditor) else load_bench_editor(
        None if model is None else str(model), device=device, dtype=dtype)
    editor.set_progress_bar_config(disable=True)
    images = [e.image() for e in entries]

    # 2. StyleDiffusion's selected regions (one inversion per entry whose source prompt holds its blended word)
    selected = [source_word_attention(editor, im, e.source, e.blended_words[0], options.num_inference_steps)
                if scorers.ns_lpips is not None and e.blended_words else None for e, im in zip(entries, images)]

    # 3. Edit and score, method by method
    report: dict = {
        "benchmark": "PIE-Bench", "data": str(data), "model": editor.name, "entries": len(entries), "seed": seed,
        "options": options.to_dict(), "baseline_steps": baseline_steps, "device": str(editor.device),
        "lpips_net": scorers.lpips.net if scorers.lpips else None,
        "ns_lpips_net": scorers.ns_lpips.net if scorers.ns_lpips else None, "psnr_cap_db": PSNR_CAP,
        "notes": list(scorers.notes), "methods": {},
    }
    for method in methods:
        rows, seconds = _method_rows(method, editor, entries, images, selected, scorers, seed=seed, options=options,
                                     baseline_steps=baseline_steps, progress=progress)
        by_type = {t: _summary([r for r in rows if r["editing_type"] == t]) for t in sorted({r["editing_type"] for r in rows})}
        report["methods"][method] = {"summary": _summary(rows), "by_type": by_type,
                                     "seconds_per_edit": seconds / max(1, len(rows)), "rows": rows}

    # 4. Report (format_pie prints it as PIE-Bench's table)
    report = json.loads(json.dumps(report, allow_nan=False))
    if json_path is not None:
        save_json(report, json_path)
    return report


def _cell(value, scale: float) -> str:
    return f"{'-':>14}" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:14.2f}"


def format_pie(report: dict) -> str:
    """PIE-Bench's table: one row per method, a column per metric (skipped ones blank), then the notes."""
    r = report
    opts = r["options"]
    lines = [
        f"PIE-Bench: model {r['model']}, {r['entries']} entries (seed {r['seed']}), {opts['num_inference_steps']} steps "
        f"(baselines {r['baseline_steps']}); LPIPS {r['lpips_net'] or '-'}, NS-LPIPS {r['ns_lpips_net'] or '-'}; "
        f"unedited part = outside the mask, PSNR capped at {r['psnr_cap_db']:g} dB",
        f"  {'method':<22}" + "".join(f"{col:>14}" for col, _ in PIE_METRICS.values()) + f"{'s/edit':>9}{'failed':>8}",
    ]
    for name, m in r["methods"].items():
        s = m["summary"]
        cells = "".join(_cell(s[metric], scale) for metric, (_, scale) in PIE_METRICS.items())
        lines.append(f"  {name:<22}{cells}{m['seconds_per_edit']:9.2f}{s['failed']:8d}")
    lines += [f"  note: {n}" for n in r["notes"]]
    return "\n".join(lines)
