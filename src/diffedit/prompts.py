"""Text encoding: prompts to CLIP embeddings, each distinct prompt encoded once per call."""

from __future__ import annotations

import difflib
import logging

import torch

__all__ = ["encode_prompts", "single_changes"]

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


def single_changes(source: str, target: str, max_changes: int = 4) -> list[str]:
    """The source prompt with one word-level change of source -> target applied, for each change.

    Changes are the words that differ (difflib over whitespace-split words; a replaced run of another
    length is one change): "a red circle on a gray background" -> "a blue square on a gray background"
    has two, giving "a blue circle ..." and "a red square ...". Fewer than two changes (or more than
    `max_changes`, where the prompts no longer share a frame) give []: the target is the only change.
    """
    s, t = source.split(), target.split()
    changes = []  # (i1, i2, j1, j2): source words s[i1:i2] become t[j1:j2]
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=s, b=t, autojunk=False).get_opcodes():
        if op == "replace" and i2 - i1 == j2 - j1:  # word for word: each word its own change
            changes += [(i1 + k, i1 + k + 1, j1 + k, j1 + k + 1) for k in range(i2 - i1)]
        elif op != "equal":
            changes.append((i1, i2, j1, j2))
    if not 2 <= len(changes) <= max_changes:
        return []
    return [" ".join(s[:i1] + t[j1:j2] + s[i2:]) for i1, i2, j1, j2 in changes]
