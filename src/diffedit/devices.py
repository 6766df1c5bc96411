"""Devices and dtypes by name: what the CLI, the benchmarks and the editor share."""

from __future__ import annotations

import torch

__all__ = ["DTYPES", "parse_dtype", "resolve_device", "auto_dtype"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype by name ("fp32", "fp16", "bf16", or torch's "float16" ...), a torch.dtype, or None (kept None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    parsed = DTYPES.get(dtype)
    if parsed is None and isinstance(dtype, str):
        parsed = getattr(torch, dtype, None)
    if not isinstance(parsed, torch.dtype):
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or a torch.dtype), got {dtype!r}")
    return parsed


def resolve_device(device: str | torch.device | None = None) -> str:
    """None or "auto": cuda when available, else cpu. Otherwise cpu, cuda, cuda:N or mps, and only one that this
    machine has: any other name (tpu, meta, "") or an absent device is a ValueError saying what is available."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device).strip()
    cuda = torch.cuda.is_available()
    available = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if cuda else [])
    available += ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else []
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps") or (parsed.type != "cuda" and parsed.index not in (None, 0)):
        raise ValueError(f"device {text!r} is not one this library runs on; available here: {', '.join(available)}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {text} asked for, but no CUDA device is available (use cpu)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {text} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and "mps" not in available:
        raise ValueError(f"device {text} asked for, but MPS is not available here; available: {', '.join(available)}")
    return text


def auto_dtype(device: str | torch.device) -> str:
    """The dtype name an edit runs at by default on a device: fp16 on CUDA, fp32 elsewhere."""
    return "fp16" if torch.device(device).type == "cuda" else "fp32"
