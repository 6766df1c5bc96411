"""Text-driven semantic image editing with latent diffusion models (DiffEdit, Couairon et al. 2023)."""

from .editor import DiffEditor
from .images import load_image
from .results import EditOptions, EditResult, InversionResult, MaskResult

__all__ = ["DiffEditor", "DiffEditPipeline", "EditOptions", "EditResult", "InversionResult", "MaskResult", "load_image"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """`DiffEditPipeline` is imported on first use: it pulls in much of diffusers that the editor does not need."""
    if name == "DiffEditPipeline":
        from .pipeline import DiffEditPipeline

        return DiffEditPipeline
    raise AttributeError(f"module 'diffedit' has no attribute {name!r}")
