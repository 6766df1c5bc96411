"""Tiny random SD-shaped components built offline in memory (the project's `get_dummy_components`).

The builder is the benchmark's `tiny` model (diffedit.bench.models); what only tests need (a tokenizer of
another length, the model written as a diffusers folder) is here."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from diffedit.bench.models import TINY_WORDS, char_tokenizer, tiny_components  # one builder for tests and benchmarks

__all__ = ["save_tiny_model", "tiny_components", "tiny_tokenizer"]


def tiny_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """The tiny model's tokenizer at another length: each of TINY_WORDS is one token, other text falls back to letters."""
    return char_tokenizer(max_length, TINY_WORDS)


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """Write the tiny components as a diffusers folder (as a user's local model would be)."""
    c = tiny_components(seed)
    path.mkdir(parents=True, exist_ok=True)
    c.vae.save_pretrained(path / "vae")
    c.unet.save_pretrained(path / "unet")
    c.text_encoder.save_pretrained(path / "text_encoder")
    c.tokenizer.save_pretrained(path / "tokenizer")
    c.scheduler.save_pretrained(path / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
