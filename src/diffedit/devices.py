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
    """None or "auto": cuda when available, else cpu; a CUDA device asked for where there is none is an error."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but no CUDA device is available (use cpu)")
    return device


def auto_dtype(device: str | torch.device) -> str:
    """The dtype name an edit runs at by default on a device: fp16 on CUDA, fp32 elsewhere."""
    return "fp16" if torch.device(device).type == "cuda" else "fp32"
