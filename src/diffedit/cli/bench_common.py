"""What every `diffedit bench` command shares: the library's defaults, the checks before a model loads, options."""

from __future__ import annotations

import inspect

import typer

from diffedit.cli.common import check_range, check_seed

__all__ = ["MAX_CASES", "library_defaults", "check_run", "SWEEP_MODEL", "SWEEP_JSON", "SWEEP_THREADS", "SWEEP_QUIET"]

MAX_CASES = 100_000


def library_defaults(function) -> dict:
    """A library function's keyword defaults."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def check_run(cases: int | None, seed: int | None, steps: int, batch: int, outputs: dict) -> None:
    """A benchmark's counts and output files, before any model loads (exit 2 with the reason)."""
    from diffedit.cli.checks import check_files
    from diffedit.files import OutputFile

    check_range(cases, "--cases", 1, MAX_CASES)
    check_seed(seed)
    check_range(steps, "--steps", 1, 1000)
    check_range(batch, "--batch", 1, 4096)
    images = {"--plot", "--panel", "--compare-panel"}
    files = [OutputFile(p, flag, "RGB" if flag in images else None) for flag, p in outputs.items() if p is not None]
    check_files(files, [], overwrite=False)


# options several commands share (typer reads an Option's settings, it does not change them)
SWEEP_MODEL = typer.Option(None, "--model", "-m", help="Default: the embedded model.")
SWEEP_JSON = typer.Option(None, "--json", help="Write the full report as JSON.")
SWEEP_THREADS = typer.Option(None, "--threads", help="torch CPU threads (default: torch's).")
SWEEP_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")
