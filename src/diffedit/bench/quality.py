"""Quality: the ShapeEdit benchmark (/work/shared/SHAPEWORLD.md) for ours, its ablations and the baselines.

Every method edits the same cases (`edit_cases(cases, seed)`) with the same weights, and case i always
uses seed `seed + i`, however the cases are batched. Each edit is scored with `score_edit` against the
ground truth (predicted mask at pixel resolution; SDEdit has none), and the scores are summarised by
method x (overall, edit kind, background, number of objects). gt_mask's mask IoU is 1 by construction:
the user mask is reported as given, while the decoding runs in the latent cells that cover it and the
composite pastes exactly inside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffedit.bench.flow_rows import FLOW_METHODS, flow_edit, load_flow_bench_editor
from diffedit.bench.baselines import OURS_VARIANTS, diffusers_edit, diffusers_pipeline, gt_mask_edit, sdedit
from diffedit.bench.models import load_bench_editor
from diffedit.bench.panels import compare_panel, worst_ghost_panel
from diffedit.bench.prompted import PROMPTED, prompted_edit
from diffedit.editor import DiffEditor
from diffedit.images import save_json
from diffedit.metrics import upsample_nearest
from diffedit.results import EditOptions
from diffedit.shapeworld.scoring import PSNR_CAP, score_edit, summarize
from diffedit.shapeworld.world import EditCase, edit_cases
from diffedit.timing import timed

__all__ = ["METHODS", "run_quality", "format_quality", "format_quality_markdown", "plot_quality"]

METHODS = (
    "ours", "diffusers", "sdedit", "gt_mask", "ours_no_smooth", "ours_no_composite", "ours_batch_norm", "ours_no_edit_snap",
    "ours_no_refine", "ours_snap_input", "ours_one_threshold", "ours_no_trim", "ours_whole_prompt_mask", "ours_one_candidate",
    "ours_noise_candidate", "ours_no_cover", "ours_no_spill", "ours_feather2", "ours_attention_mask", "ours_both_mask",
    "ours_no_inpaint", "ours_inpaint", "gt_mask_inpaint", "ours_negative_prompt", "ours_null_text", "ours_direct", "ours_ddpm",
    "p2p", "diffedit_p2p", "diffedit_p2p_no_inpaint",
    *PROMPTED, *FLOW_METHODS,
)


INPAINT_METHODS = ("ours_no_inpaint", "ours_inpaint", "gt_mask_inpaint")  # rows only for an editor with an inpainter
BASELINE_STEPS = 50  # diffusers' pipeline and SDEdit decode with diffusers' default steps unless `steps` is given
BASELINE_STRENGTH = 0.8  # and from diffusers' default encoding ratio


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _edit_method(
    method: str, editor: DiffEditor, cases: list[EditCase], *, seed: int, options: EditOptions, batch_size: int, bar,
    baseline_steps: int = BASELINE_STEPS, notes: dict | None = None, flow_editor=None,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(edited uint8 (128, 128, 3), predicted bool (128, 128) mask or None) for every case; diffusers' pipeline and
    SDEdit decode with `baseline_steps`, ours, its ablations and gt_mask with the options' own steps; the rows with
    derived prompts (prompted.py) note how their prompts came out in `notes`; the flow rows edit with `flow_editor`."""
    if method in FLOW_METHODS:
        return flow_edit(method, flow_editor, cases, seed=seed, options=options, batch_size=batch_size, bar=bar)
    if method in PROMPTED:
        return prompted_edit(method, editor, cases, seed=seed, options=options, batch_size=batch_size, bar=bar,
                             notes=notes if notes is not None else {})
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    if method == "diffusers":  # diffusers' pipeline takes one image per call
        pipe = diffusers_pipeline(editor)
        for i, case in enumerate(cases):
            image, latent_mask = diffusers_edit(
                pipe, case.source_image, case.source, case.target, seed=seed + i,
                num_inference_steps=baseline_steps, strength=BASELINE_STRENGTH, mask_noises=options.mask_noises,
            )
            out.append((np.asarray(image), upsample_nearest(latent_mask, case.mask.shape)))
            bar.update(1)
        return out
    for start, stop in _chunks(len(cases), batch_size):
        batch = cases[start:stop]
        images = [c.source_image for c in batch]
        sources, targets = [c.source for c in batch], [c.target for c in batch]
        if method == "sdedit":
            edited = sdedit(
                editor, images, targets, sources=sources, strength=BASELINE_STRENGTH, seed=seed + start,
                num_inference_steps=baseline_steps, guidance_scale=options.guidance_scale,
            )
            out += [(np.asarray(im), None) for im in edited]
        else:
            if method in ("gt_mask", "gt_mask_inpaint"):
                masks = [c.mask for c in batch]
                gt_options = options.replace(caption_candidate=False) if method == "gt_mask_inpaint" else options
                result = gt_mask_edit(editor, images, sources, targets, masks, seed=seed + start, options=gt_options)
            else:
                variant = options.replace(**OURS_VARIANTS[method])
                result = editor.edit(images, sources, targets, seed=seed + start, options=variant)
            out += [(np.asarray(im), np.asarray(m) > 127) for im, m in zip(result.images, result.mask_images)]
        bar.update(len(batch))
    return out


def _run_method(method: str, editor: DiffEditor, case_list: list[EditCase], *, seed: int, options: EditOptions,
                batch_size: int, baseline_steps: int, progress: bool, flow_editor=None) -> tuple[list, list[dict], float, dict]:
    """One method on every case: (edits, scored rows, seconds, prompt notes)."""
    with tqdm(total=len(case_list), desc=method, disable=not progress, leave=False, dynamic_ncols=True) as bar:
        timings: dict[str, float] = {}
        notes: dict = {}
        with timed(timings, method, editor.device):
            edits = _edit_method(method, editor, case_list, seed=seed, options=options, batch_size=batch_size, bar=bar,
                                 baseline_steps=baseline_steps, notes=notes, flow_editor=flow_editor)
    rows = []
    for i, (case, (edited, mask)) in enumerate(zip(case_list, edits)):
        row = score_edit(edited, case, mask)
        rows.append({"case": i, "source": case.source, "target": case.target, **{k: _finite(v) for k, v in row.items()}})
    return edits, rows, timings[method], notes


def _finite(value):
    """JSON has no infinity: PSNRs of exact copies are written as the summaries' cap."""
    if isinstance(value, float) and math.isinf(value):
        return PSNR_CAP
    return value


def _flow_rows(methods: list[str], methods_given: bool, model, flow_model, *, device: str, dtype: str):
    """(methods, the flow rows' FlowEditor or None): 'all' on a model other than the embedded one drops the ShapeWorld
    flow rows unless a flow model is named."""
    if not methods_given and model is not None and flow_model is None:
        methods = [m for m in methods if m not in FLOW_METHODS]
    if not any(m in FLOW_METHODS for m in methods):
        return methods, None
    return methods, load_flow_bench_editor(None if flow_model is None else str(flow_model), device=device, dtype=dtype)


def run_quality(
    model: str | Path | DiffEditor | None = None,
    *,
    cases: int = 300,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    batch_size: int = 8,
    steps: int | None = None,
    options: EditOptions | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    panel_path: str | Path | None = None,
    compare_panel_path: str | Path | None = None,
    progress: bool = True,
    flow_model: str | Path | None = None,
    inpaint_model: str | None = "auto",
) -> dict:
    """Run the ShapeEdit benchmark; returns {"methods": {name: {"summary", "seconds_per_edit", "rows"}}, ...}.

    model: a DiffEditor, a model path / hub id, or None for the embedded ShapeWorld model (loaded at
    `dtype` on `device`; fp32 by default, where diffusers' pipeline can share the VAE). options: our
    EditOptions (default: EditOptions()); steps, when given, overrides every method's steps, else diffusers' pipeline
    and SDEdit decode with BASELINE_STEPS from BASELINE_STRENGTH (their defaults); they take guidance and mask noises
    from the options. Ours, its ablations, gt_mask and SDEdit run `batch_size` cases per call. panel_path: a PNG of
    the first method's 8 cases with the most ghost pixels (input | truth | edit | ghosts in magenta); compare_panel_path:
    a PNG of the first two methods on the same cases (typical ones, then the first method's worst). flow_model: the
    flow rows' model (default: the embedded ShapeWorld flow model).
    """
    # 1. Check inputs, load the model and the cases
    methods_given = methods is not None
    methods = list(METHODS if methods is None else methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if cases < 1 or batch_size < 1:
        raise ValueError("cases and batch_size must be >= 1")
    if compare_panel_path is not None and len(methods) < 2:
        raise ValueError("a comparison panel needs two methods")
    if plot_path is not None:
        _matplotlib()  # before the edits, not after them
    options = options or EditOptions()
    options = options if steps is None else options.replace(num_inference_steps=steps)
    baseline_steps = BASELINE_STEPS if steps is None else steps
    editor = model if isinstance(model, DiffEditor) else load_bench_editor(
        None if model is None else str(model), device=device, dtype=dtype, inpaint_model=inpaint_model
    )
    editor.set_progress_bar_config(disable=True)
    needs_inpainter = [m for m in methods if m in INPAINT_METHODS]
    if needs_inpainter and not editor.inpainter:
        if methods_given:
            raise ValueError(f"{', '.join(needs_inpainter)} need an inpainting model, and {editor.name} has none loaded")
        methods = [m for m in methods if m not in INPAINT_METHODS]
    case_list = edit_cases(cases, seed)
    methods, flow_editor = _flow_rows(methods, methods_given, model, flow_model, device=device, dtype=dtype)

    # 2. Edit and score, method by method
    report: dict = {
        "model": editor.name, "inpainter": editor.components.inpaint_name, "cases": cases, "seed": seed,
        "steps": options.num_inference_steps,
        "baseline_steps": baseline_steps, "batch_size": batch_size,
        "options": options.to_dict(), "device": str(editor.device), "threads": torch.get_num_threads(),
        "psnr_cap_db": PSNR_CAP, "methods": {},
    }
    compared: list = []  # (edits, rows) of the first two methods, for compare_panel_path
    for method in methods:
        edits, rows, seconds, notes = _run_method(method, editor, case_list, seed=seed, options=options,
                                                  batch_size=batch_size, baseline_steps=baseline_steps, progress=progress,
                                                  flow_editor=flow_editor)
        report["methods"][method] = {"summary": summarize(rows), "seconds_per_edit": seconds / cases, "rows": rows,
                                     **({"prompts": notes} if notes else {})}
        if panel_path is not None and method == methods[0]:
            worst_ghost_panel(case_list, [e for e, _ in edits], rows, panel_path)
        if compare_panel_path is not None and method in methods[:2]:
            compared.append(([e for e, _ in edits], rows))
            if len(compared) == 2:
                compare_panel(case_list, compared[0][0], compared[1][0], compared[0][1], compare_panel_path)

    # 3. Report: table, JSON, plot (the returned dict is the JSON's: number-of-objects keys become strings)
    report = json.loads(json.dumps(report, allow_nan=False))
    if progress:
        print(format_quality(report))
    if json_path is not None:
        save_json(report, json_path)
    if plot_path is not None:
        plot_quality(report, plot_path)
    if markdown_path is not None:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_path).write_text(format_quality_markdown(report) + "\n")
    return report


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    """value * scale in spec; "-" right-aligned to the same width when there is no value."""
    if value is None:
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(value * scale, spec)


def format_quality(report: dict) -> str:
    """Text tables of a run_quality report: overall figures, then edit success by group."""
    r = report
    width = max(19, *(len(name) + 1 for name in r["methods"]))  # the method column fits the longest name
    lines = [
        f"ShapeEdit: model {r['model']}" + (f" (inpainter {r['inpainter']})" if r.get("inpainter") else "")
        + f", {r['cases']} cases (seed {r['seed']}), {r['steps']} steps "
        f"(baselines {r.get('baseline_steps', r['steps'])}), "
        f"strength {r['options']['strength']}, guidance {r['options']['guidance_scale']}, PSNR capped at {r['psnr_cap_db']:g} dB",
        f"  {'method':<{width}}{'mask IoU':>9}{'bg PSNR':>9}{'tgt PSNR':>9}{'success':>9}{'no ghost':>9}{'clean':>9}"
        f"{'ghost px':>9}{'size':>7}{'s/edit':>9}",
    ]
    for name, m in r["methods"].items():
        o = m["summary"]["overall"]
        lines.append(
            f"  {name:<{width}}{_fmt(o['mask_iou'], '9.3f')}{_fmt(o['background_psnr'], '9.2f')}"
            f"{_fmt(o['target_psnr'], '9.2f')}{_fmt(o['success'], '8.1f', 100)}%{_fmt(o.get('ghost_free'), '8.1f', 100)}%"
            f"{_fmt(o.get('clean'), '8.1f', 100)}%{_fmt(o.get('ghost_pixels'), '9.1f')}{_fmt(o.get('drawn_size'), '7.2f')}"
            f"{m['seconds_per_edit']:9.2f}"
        )
    lines += [f"  {name}: source caption exact {m['prompts']['caption_exact']}/{r['cases']}, target exact "
              f"{m['prompts']['target_exact']}/{r['cases']}, no prompts {m['prompts']['not_derived']}/{r['cases']}"
              for name, m in r["methods"].items() if "prompts" in m]
    first = next(iter(r["methods"].values()))["summary"]
    groups = [(g, k) for g in ("by_kind", "by_background", "by_num_objects") for k in first[g]]
    head = "".join(f"{str(k) + (' obj' if g == 'by_num_objects' else ''):>10}" for g, k in groups)
    for metric, unit, spec, scale in (("success", " %", "10.1f", 100), ("ghost_free", " %", "10.1f", 100),
                                      ("clean", " %", "10.1f", 100), ("drawn_size", "", "10.2f", 1)):
        lines += [f"{metric}{unit} by kind, background and number of objects", f"  {'method':<{width}}{head}"]
        for name, m in r["methods"].items():
            s = m["summary"]
            cells = "".join(f"{_fmt(s[g][k].get(metric) if k in s[g] else None, spec, scale)}" for g, k in groups)
            lines.append(f"  {name:<{width}}{cells}")
    return "\n".join(lines)


def format_quality_markdown(report: dict) -> str:
    """The overall figures and edit success by kind as a Markdown table (the README's)."""
    first = next(iter(report["methods"].values()))["summary"]
    kinds = list(first["by_kind"])
    head = ["method", "mask IoU", "bg PSNR (dB)", "target PSNR (dB)", "success"] + [f"success: {k}" for k in kinds]
    head += ["ghost-free"] + [f"ghost-free: {k}" for k in kinds] + ["clean", "drawn size", "s / edit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in report["methods"].items():
        o, by_kind = m["summary"]["overall"], m["summary"]["by_kind"]
        cells = [f"`{name}`", _fmt(o["mask_iou"], ".3f").strip(), _fmt(o["background_psnr"], ".1f"),
                 _fmt(o["target_psnr"], ".1f"), _fmt(o["success"], ".1f", 100) + " %"]
        cells += [_fmt(by_kind[k]["success"], ".1f", 100) + " %" if k in by_kind else "-" for k in kinds]
        cells.append(_fmt(o.get("ghost_free"), ".1f", 100) + " %")
        cells += [_fmt(by_kind[k].get("ghost_free"), ".1f", 100) + " %" if k in by_kind else "-" for k in kinds]
        cells += [_fmt(o.get("clean"), ".1f", 100) + " %", _fmt(o.get("drawn_size"), ".2f"), f"{m['seconds_per_edit']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _matplotlib():
    """matplotlib.pyplot on the Agg backend; it is the `bench` extra (pip install 'diffedit[bench]')."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plotting the ShapeEdit report needs matplotlib: pip install 'diffedit[bench]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(report: dict, path: str | Path) -> Path:
    """Scatter of background PSNR (x) against edit success (y), one labelled point per method."""
    plt = _matplotlib()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "os^DvP*XhH<>"
    for i, (name, m) in enumerate(report["methods"].items()):
        o = m["summary"]["overall"]
        ours = name == "ours"  # drawn larger, outlined and on top: ablations often land on it
        ax.scatter([o["background_psnr"]], [100 * o["success"]], s=110 if ours else 50, marker=markers[i % len(markers)],
                   label=name, zorder=3 if ours else 2, edgecolors="black" if ours else "none")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.set_xlabel(f"background PSNR (dB, capped at {report['psnr_cap_db']:g})")
    ax.set_ylabel("edit success (%)")
    ax.set_title(f"ShapeEdit, {report['cases']} cases, {report['steps']} steps: {report['model']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
