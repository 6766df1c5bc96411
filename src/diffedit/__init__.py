"""Text-driven semantic image editing with latent diffusion models (DiffEdit, Couairon et al. 2023)."""

from .editor import DiffEditor
from .images import load_image
from .results import EditOptions, EditResult, InversionResult, MaskResult

__all__ = ["DiffEditor", "EditOptions", "EditResult", "InversionResult", "MaskResult", "load_image"]
__version__ = "0.1.0"
