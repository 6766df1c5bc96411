"""What the library raises besides ValueError (a bad input), and how to recognise a run out of memory.

ValueError: an input or option that cannot be used (the message names it). ModelError: a model that cannot be
loaded (a missing component, a file that is not a checkpoint); it is also an OSError, as loading errors were.
NonFiniteError: the numbers of an edit overflowed (NaN or inf in latents or pixels, typically fp16): nothing
that holds them is returned as an image.
"""

from __future__ import annotations

import torch

__all__ = ["ModelError", "NonFiniteError", "check_finite", "is_out_of_memory", "OUT_OF_MEMORY_ADVICE"]

OUT_OF_MEMORY_ADVICE = (
    "lower the mask noises (--mask-noises) or chunk the UNet calls (--set mask_batch_size=2), decode one candidate "
    "(--one-candidate), edit a smaller image (--max-pixels), or on a GPU use --dtype fp16"
)


class ModelError(OSError, ValueError):
    """A model folder or file that cannot be loaded; the message names the file or component at fault."""


class NonFiniteError(RuntimeError):
    """NaN or inf in an edit's latents, maps or pixels (numeric overflow, usually of fp16)."""


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise NonFiniteError when `x` holds a NaN or an infinity; `what` names the step that produced it."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        dtype = str(x.dtype).removeprefix("torch.")
        raise NonFiniteError(
            f"{what} produced NaN/inf values ({dtype}; a numeric overflow, common in fp16): nothing was saved; "
            "run in float32 (torch_dtype=torch.float32, CLI: --dtype fp32) or bf16"
        )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocation failure: CUDA or CPU, from torch or Python."""
    if isinstance(error, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")
    )
