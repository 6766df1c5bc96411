"""Tiny random SD-shaped components built offline in memory (the project's `get_dummy_components`)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from diffedit.bench.models import _char_tokenizer, tiny_components  # one builder for tests and benchmarks

WORDS = ["a", "cat", "dog", "red", "blue", "circle", "square", "on", "photo", "of", "the", "bowl"]


def tiny_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """Word-level CLIP tokenizer: each word above is one token; other text falls back to letters."""
    return _char_tokenizer(max_length, tuple(WORDS))


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
