"""What every command shares: one-line errors, device/dtype/threads, quiet libraries, loading, output paths."""

from __future__ import annotations

from pathlib import Path

import typer

DTYPES = ("auto", "fp32", "fp16", "bf16")


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device} asked for, but no CUDA device is available (use --device cpu)")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return dtype


def quiet_libraries() -> None:
    """Keep diffusers/transformers advice and weight-loading bars out of the tool's output (errors still show)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            fail(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def load_editor(model: str | None, device: str | None, dtype: str, config: str | None, quiet: bool):
    from diffedit import DiffEditor

    quiet_libraries()

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    try:
        return DiffEditor.from_pretrained(model, device=device, dtype=dtype, config=config, progress=not quiet)
    except (FileNotFoundError, ValueError, OSError) as e:
        fail(str(e))


def default_output(image: Path, suffix: str) -> Path:
    """<stem>_<suffix>.png beside the input image."""
    return image.with_name(f"{image.stem}_{suffix}.png")


def indexed(path: Path, i: int, n: int) -> Path:
    """path itself for a single output, else <stem>_<i + 1><suffix>."""
    return path if n == 1 else path.with_name(f"{path.stem}_{i + 1}{path.suffix}")
