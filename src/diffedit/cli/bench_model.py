"""`diffedit bench caption` and `outline`: benchmarks of the model itself rather than of an edit (bench.py registers
them): the zero-shot captioner's accuracy, and how precisely the model draws a shape."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffedit.bench import outline as outline_lib
from diffedit.cli.bench_common import MAX_CASES, SWEEP_JSON, SWEEP_MODEL, SWEEP_QUIET, SWEEP_THREADS, check_run, library_defaults
from diffedit.cli.common import check_range, fail, set_threads

OUTLINE = library_defaults(outline_lib.run_outline)


def caption(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: the embedded ShapeWorld model."),
    scenes: int = typer.Option(200, "--scenes", "-n", help="ShapeWorld scenes to caption (scene i from seed, i)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes; scene i is captioned with seed + i."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report with every scene's caption."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Caption accuracy of the zero-shot ShapeWorld captioner (`--source auto`), exact and per part, and s / image."""
    from diffedit.bench.captions import format_caption_bench, run_caption_bench

    check_run(scenes, seed, 1, 1, {"--json": json_path})
    set_threads(threads)
    report = run_caption_bench(model, scenes=scenes, seed=seed, json_path=json_path, progress=not quiet)
    typer.echo(format_caption_bench(report))


def outline(
    model: Optional[str] = SWEEP_MODEL,
    images: int = typer.Option(OUTLINE["images"], "--images", "-n", help="Single-object ShapeWorld scenes."),
    seed: int = typer.Option(OUTLINE["seed"], "--seed", help="Seed of the scenes and the drawing noise."),
    steps: int = typer.Option(OUTLINE["steps"], "--steps", help="DDIM steps of the generated and redrawn rows."),
    json_path: Optional[Path] = SWEEP_JSON,
    threads: Optional[int] = SWEEP_THREADS,
    quiet: bool = SWEEP_QUIET,
) -> None:
    """How precisely the model draws a shape (VAE, its own drawing, the inpainter's redraw): the ceiling of ghost-free
    shape edits."""
    check_range(images, "--images", 1, MAX_CASES)
    check_run(None, seed, steps, 1, {"--json": json_path})
    set_threads(threads)
    try:
        report = outline_lib.run_outline(model, images=images, seed=seed, steps=steps, json_path=json_path, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(outline_lib.format_outline(report))
