"""Stage (b): the training set of the UNet, a fixed set of scenes encoded once into latents, and tokenized captions."""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from diffedit.shapeworld import world
from diffedit.shapeworld.evaluate import images_to_tensor


@torch.no_grad()
def encode_dataset(
    vae,
    n: int,
    seed: int,
    *,
    batch_size: int = 64,
    quiet: bool = False,
    two_object_share: float | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """n fresh scenes encoded once: scaled latents (n, 4, 16, 16) float16 on the CPU, and captions.

    `two_object_share` is the probability of a two-object scene (None: the world's own 1/2).
    """
    if two_object_share is not None and not 0.0 <= two_object_share <= 1.0:
        raise ValueError(f"two_object_share must be in [0, 1], got {two_object_share}")
    rng = np.random.default_rng(seed)

    def scene():
        if two_object_share is None:
            return world.sample_scene(rng)
        return world.sample_scene(rng, num_objects=1 + int(rng.random() < two_object_share))

    latents, captions = [], []
    scale = vae.config.scaling_factor
    for i in tqdm(range(0, n, batch_size), desc="latents", disable=quiet or not sys.stderr.isatty()):
        scenes = [scene() for _ in range(min(batch_size, n - i))]
        x = images_to_tensor(np.stack([s.render() for s in scenes])).to(vae.device, vae.dtype)
        latents.append((vae.encode(x).latent_dist.mean.float() * scale).half().cpu())
        captions += [s.caption() for s in scenes]
    return torch.cat(latents), captions


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (B, T) padded to the tokenizer's max length."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def two_object_share_of(captions: list[str]) -> float:
    """The share of two-object scenes among captions (as recorded in a UNet stage's history)."""
    return sum(" and a " in c for c in captions) / len(captions)
