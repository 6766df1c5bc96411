"""Text-driven semantic image editing with latent diffusion models (DiffEdit)."""
