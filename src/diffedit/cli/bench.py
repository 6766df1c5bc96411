"""`diffedit bench quality` (ShapeEdit), `pie` (PIE-Bench's real images and table), `speed` (ours against diffusers'
pipeline), `caption` and `outline` (the model itself: bench_model.py), `masks` and `composite` (sweeps), `batch` and
`resume` (diffedit batch: throughput against one process per job; kill and resume).

Every default is the library function's own (read from its signature), so the CLI and `run_quality(...)` & co.
cannot drift apart. The benchmark modules import light (diffusers' pipelines, scipy and matplotlib only when used).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from diffedit.bench import masks as masks_lib
from diffedit.bench import pie as pie_lib
from diffedit.bench import quality as quality_lib
from diffedit.bench import speed as speed_lib
from diffedit.cli import bench_model
from diffedit.cli.bench_common import SWEEP_JSON, SWEEP_MODEL, SWEEP_QUIET, SWEEP_THREADS, check_run, library_defaults
from diffedit.cli.common import check_range, edit_options, fail, quiet_libraries, require, resolve_device
from diffedit.cli.common import resolve_dtype, set_threads
from diffedit.results import EditOptions

bench_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Benchmarks that print figures: quality (ShapeEdit) and speed (ours vs diffusers' DiffEdit pipeline).",
)


QUALITY = library_defaults(quality_lib.run_quality)
SPEED = library_defaults(speed_lib.run_speed)
PIE = library_defaults(pie_lib.run_pie)
MASKS = library_defaults(masks_lib.run_mask_sweep)
COMPOSITE = library_defaults(masks_lib.run_composite_sweep)


@bench_app.callback()
def _setup() -> None:
    """Benchmarks print figures: keep diffusers/transformers loading advice out of them."""
    quiet_libraries()


bench_app.command("caption")(bench_model.caption)
bench_app.command("outline")(bench_model.outline)


@bench_app.command()
def quality(
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model folder or hub id (default: the embedded ShapeWorld model).",
    ),
    cases: int = typer.Option(QUALITY["cases"], "--cases", "-n", help="Number of ShapeEdit cases."),
    seed: int = typer.Option(QUALITY["seed"], "--seed", help="Seed of the cases; case i is edited with seed + i."),
    methods: str = typer.Option(
        "all", "--methods",
        help="Comma-separated methods to run, or 'all' (every method of diffedit.bench.quality.METHODS: ours, "
        "diffusers, sdedit, gt_mask and our ablations).",
    ),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="DDIM steps of every method (default: ours its options', the baselines diffusers' 50).",
    ),
    preset: str = typer.Option("default", "--preset", help="Our options: fast | default | quality, then --set."),
    batch: int = typer.Option(
        QUALITY["batch_size"], "--batch", "-b", help="Cases per call for ours, its ablations, gt_mask and SDEdit.",
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report (summaries and per-edit rows)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of background PSNR vs edit success."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write the overall table as Markdown."),
    panel: Optional[Path] = typer.Option(
        None, "--panel", help="Write a PNG of the first method's 8 cases with the most ghost pixels (ghosts in magenta).",
    ),
    compare_panel: Optional[Path] = typer.Option(
        None, "--compare-panel",
        help="Write a PNG of the first two methods on the same cases: two of each edit kind, then the first's 6 worst.",
    ),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", metavar="NAME=VALUE", help="An EditOptions field for ours and its ablations (repeatable).",
    ),
    device: str = typer.Option(QUALITY["device"], "--device", help="cpu or cuda."),
    dtype: str = typer.Option(
        QUALITY["dtype"], "--dtype", help="fp32 | fp16 | bf16 (diffusers' pipeline needs the VAE in the UNet's dtype).",
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars and no table (use --json)."),
    flow_model: Optional[str] = typer.Option(
        None, "--flow-model", help="Flow model folder of the flow rows (default: the embedded ShapeWorld flow model).",
    ),
    inpaint_model: str = typer.Option(
        "auto", "--inpaint-model", help="Inpainting model of ours' first candidate, as `diffedit edit` takes it.",
    ),
) -> None:
    """ShapeEdit quality of ours, its ablations and the baselines on the same cases and weights."""
    check_run(cases, seed, steps, batch, {"--json": json_path, "--plot": plot, "--markdown": markdown, "--panel": panel,
                                           "--compare-panel": compare_panel})
    set_threads(threads)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if plot is not None:
        require("matplotlib", "bench", "--plot")
    names = None if methods.strip() == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    options = edit_options({"noise_candidates": (1.0,)} if inpaint_model == "same" else {}, settings, preset)
    try:
        quality_lib.run_quality(model, cases=cases, seed=seed, methods=names, batch_size=batch, steps=steps, device=device,
                                dtype=dtype, options=options, json_path=json_path, plot_path=plot, markdown_path=markdown,
                                panel_path=panel, compare_panel_path=compare_panel, progress=not quiet,
                                flow_model=flow_model, inpaint_model=inpaint_model)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if not quiet:
        for path in (json_path, plot, markdown, panel, compare_panel):
            if path is not None:
                typer.echo(f"wrote {path}")


@bench_app.command("pie")
def pie(
    data: Path = typer.Option(..., "--data", help="PIE-Bench's data folder: mapping_file.json and annotation_images/."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model folder, file or hub id (default: the embedded ShapeWorld model).",
    ),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Only the first N entries (after --types)."),
    types: Optional[str] = typer.Option(None, "--types", help="Comma-separated editing_type_id values (0-9) to keep."),
    methods: str = typer.Option(
        ",".join(PIE["methods"]), "--methods",
        help="Comma-separated: ours, diffusers, sdedit, gt_mask (ours inside the annotated mask) or an ablation of ours.",
    ),
    lpips: Optional[Path] = typer.Option(
        None, "--lpips", help="Folder with LPIPS' heads (squeeze.pth, alex.pth: lpips' weights/v0.1) and torchvision's "
        "backbone checkpoints (squeezenet1_1-*.pth, alexnet-*.pth); without it LPIPS and NS-LPIPS are skipped.",
    ),
    clip: Optional[Path] = typer.Option(
        None, "--clip", help="CLIP model folder (e.g. openai/clip-vit-large-patch14); without it the CLIP columns are skipped.",
    ),
    dino: Optional[Path] = typer.Option(
        None, "--dino", help="DINO ViT folder (facebook/dino-vitb8) for the structure distance; skipped without it.",
    ),
    seed: int = typer.Option(PIE["seed"], "--seed", help="Seed of entry 0; entry i is edited with seed + i."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps of ours (default: the preset's)."),
    baseline_steps: int = typer.Option(PIE["baseline_steps"], "--baseline-steps", help="Steps of diffusers and sdedit."),
    preset: str = typer.Option("default", "--preset", help="Our options: fast | default | quality, then --set."),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", metavar="NAME=VALUE", help="An EditOptions field for ours and its ablations (repeatable).",
    ),
    device: str = typer.Option(PIE["device"], "--device", help="cpu or cuda (the editor and the scoring networks)."),
    dtype: str = typer.Option(PIE["dtype"], "--dtype", help="fp32 | fp16 | bf16."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report with every entry's metrics."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """PIE-Bench: edit its real images and print its table (structure distance, PSNR / LPIPS / MSE / SSIM outside the
    mask, CLIP of the whole edit and of its edited part, NS-LPIPS, s / edit)."""
    check_run(None, seed, steps or 1, 1, {"--json": json_path})
    check_range(limit, "--limit", 1, None)
    check_range(baseline_steps, "--baseline-steps", 1, 1000)
    set_threads(threads)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    options = edit_options({} if steps is None else {"num_inference_steps": steps}, settings, preset)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    kinds = None if types is None else [t.strip() for t in types.split(",") if t.strip()]
    try:
        scorers = pie_lib.load_scorers(lpips, clip, dino, device=device)
        report = pie_lib.run_pie(data, model, limit=limit, types=kinds, methods=names, scorers=scorers, seed=seed,
                                 options=options, baseline_steps=baseline_steps, device=device, dtype=dtype,
                                 json_path=json_path, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(pie_lib.format_pie(report))
    if json_path is not None:
        typer.echo(f"wrote {json_path}")


@bench_app.command()
def speed(
    model: str = typer.Option(SPEED["model"], "--model", "-m", help="tiny | shapeworld | sd15-random | a model path."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | fp16 | bf16 (default: fp16 on cuda, fp32 on cpu)."),
    size: int = typer.Option(SPEED["size"], "--size", help="Image side in pixels (random images)."),
    steps: int = typer.Option(SPEED["steps"], "--steps", help="Steps of diffusers and one_decoding (presets: their own)."),
    strength: float = typer.Option(SPEED["strength"], "--strength", "-r", help="Encoding ratio r of diffusers and one_decoding."),
    mask_noises: int = typer.Option(SPEED["mask_noises"], "--mask-noises", help="Mask noises of diffusers and one_decoding."),
    batch: int = typer.Option(SPEED["batch"], "--batch", "-b", help="Images per edit: ours in one call, diffusers in a loop."),
    repeats: int = typer.Option(SPEED["repeats"], "--repeats", help="Timed runs per method (median); a warm-up run is excluded."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the UNet (CUDA only)."),
    accel: Optional[str] = typer.Option(
        None, "--accel", help="Our UNet: 'none' (plain, as a one-off edit), 'trace' (TorchScript per shape at once); "
        "default: the editor's own 'auto' (small CPU inputs traced once a shape repeats).",
    ),
    methods: str = typer.Option(
        ",".join(SPEED["methods"]), "--methods",
        help="Comma-separated: presets fast, default, quality (as a user gets them); one_decoding (the work diffusers' "
        "pipeline does, at --steps); diffusers (its pipeline at --steps, --strength, --mask-noises: its defaults).",
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the figures as JSON."),
) -> None:
    """Time our presets and diffusers' DiffEdit pipeline on one model: phases, totals, ratios, memory."""
    check_run(None, None, steps, batch, {"--json": json_path})
    check_range(size, "--size", 16, 8192)
    check_range(strength, "--strength", 0.0, 1.0)
    check_range(mask_noises, "--mask-noises", 1, 64)
    check_range(repeats, "--repeats", 1, 1000)
    set_threads(threads)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype or "auto", device)
    try:
        speed_lib.run_speed(model, device=device, dtype=dtype, size=size, steps=steps, strength=strength,
                            mask_noises=mask_noises, batch=batch, repeats=repeats, compile=compile, accel=accel,
                            methods=tuple(m.strip() for m in methods.split(",") if m.strip()), json_path=json_path)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if json_path is not None:
        typer.echo(f"wrote {json_path}")




@bench_app.command("masks")
def masks(
    model: Optional[str] = SWEEP_MODEL,
    cases: int = typer.Option(MASKS["cases"], "--cases", help="Edit cases to tune on."),
    seed: int = typer.Option(MASKS["seed"], "--seed", help="Seed of the tuning cases (report on another)."),
    steps: int = typer.Option(MASKS["steps"], "--steps", help="DDIM steps over the full noise range."),
    batch: int = typer.Option(MASKS["batch_size"], "--batch", help="Cases per call."),
    top: int = typer.Option(library_defaults(masks_lib.format_mask_sweep)["top"], "--top", help="Rows to print."),
    json_path: Optional[Path] = SWEEP_JSON,
    threads: Optional[int] = SWEEP_THREADS,
    quiet: bool = SWEEP_QUIET,
) -> None:
    """Sweep the mask's post-processing (reference, clamp, smoothing, threshold, dilation) for mask IoU."""
    check_run(cases, seed, steps, batch, {"--json": json_path})
    check_range(top, "--top", 1, None)
    set_threads(threads)
    try:
        report = masks_lib.run_mask_sweep(model, cases=cases, seed=seed, batch_size=batch, steps=steps,
                                          json_path=json_path, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(masks_lib.format_mask_sweep(report, top))


@bench_app.command("composite")
def composite_sweep(
    model: Optional[str] = SWEEP_MODEL,
    cases: int = typer.Option(COMPOSITE["cases"], "--cases", help="Edit cases to tune on."),
    seed: int = typer.Option(COMPOSITE["seed"], "--seed", help="Seed of the tuning cases (report on another)."),
    steps: int = typer.Option(COMPOSITE["steps"], "--steps", help="DDIM steps over the full noise range."),
    batch: int = typer.Option(COMPOSITE["batch_size"], "--batch", help="Cases per call."),
    json_path: Optional[Path] = SWEEP_JSON,
    threads: Optional[int] = SWEEP_THREADS,
    quiet: bool = SWEEP_QUIET,
) -> None:
    """Sweep the pixel composite (mask dilation x feather width): background PSNR against edit success."""
    check_run(cases, seed, steps, batch, {"--json": json_path})
    set_threads(threads)
    try:
        report = masks_lib.run_composite_sweep(model, cases=cases, seed=seed, batch_size=batch, steps=steps,
                                               json_path=json_path, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(masks_lib.format_composite_sweep(report))


# options the two batch benchmarks share
BATCH_STEPS = typer.Option(EditOptions.num_inference_steps, "--steps", help="DDIM steps over the full noise range.")
BATCH_SIZE = typer.Option(8, "--batch-size", "-b", help="Jobs per model call of diffedit batch.")
BATCH_ONE = typer.Option(False, "--one-candidate", help="One decoding per edit, no scoring (both sides).")
BATCH_WORKDIR = typer.Option(
    None, "--workdir", help="Keep the manifest, images and outputs in this new folder (default: a temporary one).",
)


def _workdir(path: Path | None):
    """A fresh folder for a batch benchmark: the given one (which must not exist or be empty), or a temporary one."""
    import tempfile
    from contextlib import nullcontext

    if path is None:
        return tempfile.TemporaryDirectory(prefix="diffedit-bench-batch-")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        fail(f"--workdir {path} exists and is not an empty folder")
    path.mkdir(parents=True, exist_ok=True)
    return nullcontext(str(path))


@bench_app.command("batch")
def batch_throughput(
    model: Optional[str] = SWEEP_MODEL,
    jobs: int = typer.Option(8, "--jobs", "-n", help="ShapeWorld jobs (case i edited with seed + i)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the cases."),
    steps: int = BATCH_STEPS,
    batch_size: int = BATCH_SIZE,
    one_candidate: bool = BATCH_ONE,
    targets_per_image: int = typer.Option(1, "--targets-per-image", help="Edits of each scene (they share a mask pass)."),
    threads: Optional[int] = SWEEP_THREADS,
    workdir: Optional[Path] = BATCH_WORKDIR,
    json_path: Optional[Path] = SWEEP_JSON,
) -> None:
    """Edits per second of `diffedit batch` against one `diffedit edit` process per job, on the same jobs."""
    from diffedit.bench.batch import format_throughput, run_throughput

    check_run(jobs, seed, steps, batch_size, {"--json": json_path})
    check_range(targets_per_image, "--targets-per-image", 1, 16)
    check_range(threads, "--threads", 1, 256)
    with _workdir(workdir) as folder:
        report = run_throughput(Path(folder), jobs=jobs, seed=seed, model=model, steps=steps, batch_size=batch_size,
                                one_candidate=one_candidate, threads=threads, targets_per_image=targets_per_image)
    typer.echo(format_throughput(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


@bench_app.command("resume")
def batch_resume(
    model: Optional[str] = SWEEP_MODEL,
    jobs: int = typer.Option(200, "--jobs", "-n", help="ShapeWorld jobs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the cases."),
    kill_seed: Optional[int] = typer.Option(None, "--kill-seed", help="Seed of the kill's moment (default: random)."),
    steps: int = BATCH_STEPS,
    batch_size: int = BATCH_SIZE,
    one_candidate: bool = BATCH_ONE,
    targets_per_image: int = typer.Option(2, "--targets-per-image", help="Edits of each scene."),
    threads: Optional[int] = SWEEP_THREADS,
    workdir: Optional[Path] = BATCH_WORKDIR,
    json_path: Optional[Path] = SWEEP_JSON,
) -> None:
    """Kill `diffedit batch` (SIGKILL) at a random moment, run it again: every job written once, no partial file."""
    from diffedit.bench.batch import format_resume, resume_ok, run_resume

    check_run(jobs, seed, steps, batch_size, {"--json": json_path})
    check_range(jobs, "--jobs", 2, None)
    check_range(targets_per_image, "--targets-per-image", 1, 16)
    check_range(threads, "--threads", 1, 256)
    with _workdir(workdir) as folder:
        report = run_resume(Path(folder), jobs=jobs, seed=seed, kill_seed=kill_seed, model=model, steps=steps,
                            batch_size=batch_size, one_candidate=one_candidate, threads=threads,
                            targets_per_image=targets_per_image)
    typer.echo(format_resume(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    if not resume_ok(report):
        raise typer.Exit(1)
