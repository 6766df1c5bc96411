"""What every command shares: one-line errors, device/dtype/threads, quiet libraries, loading, output paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from diffedit.cli.guard import one_line

DTYPES = ("auto", "fp32", "fp16", "bf16")  # diffedit.devices.DTYPES and "auto"
SET_HELP = (
    "Advanced: any EditOptions field (see docs/options.md), as NAME=VALUE; repeatable, applied after the options "
    "above. VALUE is read as JSON when it parses (0.5, true, null, [0.9, 1.0]), else as a string."
)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit (2: the command cannot run as asked)."""
    typer.secho(f"error: {one_line(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print a one-line warning on stderr (what ran but did not do what was asked)."""
    typer.secho(f"warning: {one_line(message)}", fg=typer.colors.YELLOW, err=True)


def check_seed(seed: int | None, flag: str = "--seed") -> None:
    """Seeds are integers in [0, 2**62) (stages/noise.py): checked before any work."""
    from diffedit.stages.noise import MAX_SEED

    if seed is not None and not 0 <= seed < MAX_SEED:
        fail(f"{flag} must be an integer in [0, 2**62), got {seed}")


def check_range(value: float | None, flag: str, low: float | None = None, high: float | None = None) -> None:
    """A CLI-only number (not an EditOptions field) within [low, high] and finite; None passes."""
    import math

    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"{flag} must be a finite number, got {value}")
    if low is not None and value < low:
        fail(f"{flag} must be >= {low}, got {value}")
    if high is not None and value > high:
        fail(f"{flag} must be <= {high}, got {value}")


def resolve_device(device: str | None) -> str:
    """--device: None or "auto" is cuda when available, else cpu; a missing CUDA device is a one-line error."""
    from diffedit import devices

    try:
        return devices.resolve_device(device)
    except ValueError as e:
        fail(f"--{e}")


def resolve_dtype(dtype: str, device: str) -> str:
    """--dtype: "auto" is fp16 on CUDA and fp32 elsewhere."""
    from diffedit import devices

    if dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return devices.auto_dtype(device) if dtype == "auto" else dtype


def require(module: str, extra: str, what: str) -> None:
    """Fail with a one-line install hint, before any work, when an optional dependency is missing."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        fail(f"{what} needs {module}, which the core install leaves out: pip install 'diffedit[{extra}]'")


def quiet_libraries() -> None:
    """Keep diffusers/transformers advice and weight-loading bars out of the tool's output (errors still show)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


MAX_THREADS = 256  # more threads than cores only slow torch down; thousands would exhaust memory


def set_threads(threads: int | None) -> None:
    if threads is not None:
        check_range(threads, "--threads", 1, MAX_THREADS)
        import torch

        torch.set_num_threads(threads)


def parse_settings(settings: list[str] | None) -> dict[str, Any]:
    """`--set NAME=VALUE` items -> {name: value}: VALUE as JSON when it parses, else the string; '-' in NAME reads '_'."""
    parsed: dict[str, Any] = {}
    for item in settings or []:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            fail(f"--set takes NAME=VALUE (an EditOptions field, see docs/options.md), got {item!r}")
        try:
            parsed[name] = json.loads(text)
        except ValueError:
            special = text.strip().lower().lstrip("+")
            parsed[name] = float(text) if special in ("nan", "inf", "-inf", "infinity", "-infinity") else text
    return parsed


def _annotation(t: Any) -> str:
    """A field's annotation as written: "float | None", "tuple[float, ...]", "int"."""
    if isinstance(t, str):  # postponed annotations
        return t
    return t.__name__ if type(t) is type else str(t)


def _fits(value: Any, annotation: str) -> bool:
    """Whether a JSON value suits an EditOptions field annotation ("int", "float | None", "tuple[float, ...]" ...)."""
    kinds = {k.strip() for k in annotation.split("|")}
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    floats = any(k.startswith("tuple[float") for k in kinds)
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "float"}) or floats
    if isinstance(value, float):
        return "float" in kinds or floats
    if isinstance(value, str):
        return "str" in kinds
    if isinstance(value, list):
        return floats and all(number(v) for v in value)
    return False


def edit_options(flags: dict[str, Any], settings: list[str] | None, preset: str = "default"):
    """EditOptions from a preset, the command's own flags (None: the preset's), then `--set` items; a bad one is a
    one-line error."""
    from dataclasses import fields

    from diffedit import EditOptions

    extra = parse_settings(settings)
    annotations = {f.name: _annotation(f.type) for f in fields(EditOptions)}
    for name, value in extra.items():
        if name in annotations and not _fits(value, annotations[name]):
            fail(f"--set {name}={json.dumps(value)}: {name} takes {annotations[name]} "
                 "(JSON: true/false, null, numbers, [lists]; anything else is a string)")
    try:
        given = {k: v for k, v in flags.items() if v is not None}
        return EditOptions.preset(preset).replace(**{**given, **extra})
    except ValueError as e:
        fail(str(e))


EMBEDDED_NAMES = ("shapeworld", "shapeworld-flow")  # --model names of the embedded noise and flow models


def embedded_model(model: str | None) -> str | None:
    """--model with the embedded models' names resolved: 'shapeworld' -> None (the default), 'shapeworld-flow' -> its
    folder; anything else as given."""
    if model == "shapeworld":
        return None
    if model == "shapeworld-flow":
        from diffedit.loading import embedded_flow_path

        return str(embedded_flow_path())
    return model


def load_editor(model: str | None, device: str | None, dtype: str, config: str | None, quiet: bool,
                inpaint_model: str | None = "auto"):
    from diffedit import DiffEditor

    quiet_libraries()
    model = embedded_model(model)

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    refuse_flow_inpainter(model, inpaint_model)
    try:
        flow = _flow_editor(model, device, dtype, quiet)  # an SD3 or FLUX folder: the flow editor (docs/flow.md)
        if flow is not None:
            return flow
        return DiffEditor.from_pretrained(model, device=device, torch_dtype=dtype, config=config, progress=not quiet,
                                          inpaint_model=inpaint_model)
    except (FileNotFoundError, ValueError, OSError) as e:
        from diffedit.errors import is_out_of_memory

        if is_out_of_memory(e):
            raise
        fail(str(e))


def refuse_flow_inpainter(model: str | None, inpaint_model: str | None) -> None:
    """Exit 2 when an inpainting model is named for a flow model (SD3, FLUX, shapeworld-flow): FlowEdit takes none."""
    from diffedit.flow.loading import flow_family

    if inpaint_model not in (None, "auto", "none") and flow_family(model) is not None:
        fail("a flow model (SD3, FLUX, shapeworld-flow) decodes with FlowEdit: it takes no --inpaint-model")


def check_flow_decoder(model: str | None, decoder: str | None) -> None:
    """Exit 2 for a --flow-decoder given with a model that is no flow model, or naming no decoder (before loading)."""
    from diffedit.flow.loading import flow_family

    if decoder is None:
        return
    if flow_family(model) is None:
        fail("--flow-decoder applies to flow models only (SD3, FLUX, shapeworld-flow)")
    from diffedit.flow.editor import DECODERS

    if decoder not in DECODERS:
        fail(f"unknown --flow-decoder {decoder!r}; available: {', '.join(DECODERS)}")


def _flow_editor(model: str | None, device, dtype, quiet: bool):
    """A FlowEditor when `model` is a diffusers folder of an SD3 or FLUX pipeline (model_index.json), else None."""
    from diffedit.flow.loading import flow_family

    if flow_family(model) is None:
        return None
    from diffedit.flow.editor import FlowEditor

    return FlowEditor.from_pretrained(model, device=device, torch_dtype=dtype, progress=not quiet)


def default_output(image: Path, suffix: str) -> Path:
    """<stem>_<suffix>.png beside the input image."""
    return image.with_name(f"{image.stem}_{suffix}.png")


def indexed(path: Path, i: int, n: int) -> Path:
    """path itself for a single output, else <stem>_<i + 1><suffix>."""
    return path if n == 1 else path.with_name(f"{path.stem}_{i + 1}{path.suffix}")
