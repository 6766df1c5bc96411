"""Text encoding: prompts to CLIP embeddings, each distinct prompt encoded once per call."""

from __future__ import annotations

import logging

import torch

__all__ = ["encode_prompts"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device=None, dtype=None) -> torch.Tensor:
    """(P,) prompts -> (P, L, D) last hidden states of the text encoder, L = tokenizer.model_max_length."""
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}")
    device = device if device is not None else text_encoder.device
    unique = list(dict.fromkeys(prompts))
    max_length = tokenizer.model_max_length
    tokens = tokenizer(unique, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    full = tokenizer(unique, padding="longest", return_tensors="pt").input_ids
    for prompt, ids in zip(unique, full):
        if int((ids != tokenizer.pad_token_id).sum()) > max_length:
            logger.warning("prompt longer than %d tokens was truncated: %r", max_length, prompt)
    hidden = text_encoder(tokens.input_ids.to(device))[0]  # (U, L, D)
    if dtype is not None:
        hidden = hidden.to(dtype)
    index = torch.tensor([unique.index(p) for p in prompts], device=hidden.device)
    return hidden[index]
