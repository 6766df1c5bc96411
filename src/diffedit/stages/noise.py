"""Seeds and named noise streams: every random draw of an edit comes from (image seed, purpose), so the
seeds saved in the sidecar reproduce the edit whatever the batch, and purposes never share draws."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["STREAMS", "NoiseStreams", "resolve_seeds", "MAX_SEED"]

# purpose -> offset added to the image's seed; far apart, so no two purposes of any two images collide
STREAMS = {
    "mask": 0,  # the mask pass's n noises (DiffEdit step 1)
    "rerank": 2**32,  # the noises that score candidates (rerank.py)
    "fresh": 2**33,  # fresh noise mixed into a noise candidate's starting latent
    "ddpm": 3 * 2**32,  # the noisy levels of edit-friendly DDPM inversion (stages/inverting.py)
    "flowedit": 5 * 2**32,  # FlowEdit's fresh noise of every step (flow/editor.py)
}
MAX_SEED = 2**62  # seeds are drawn below this, so seed + offset + image stays inside a 64-bit generator seed


@dataclass(frozen=True)
class NoiseStreams:
    """One seed per input image; `randn(purpose, b, shape)` draws image b's noise for that purpose on the CPU."""

    seeds: tuple[int, ...]

    def generator(self, purpose: str, image: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seeds[image] + STREAMS[purpose])

    def randn(self, purpose: str, image: int, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator(purpose, image))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**62), got {seed!r}")
    return seed


def resolve_seeds(
    seed: int | Sequence[int] | None, generator: torch.Generator | Sequence[torch.Generator] | None, num_images: int
) -> tuple[int | None, tuple[int, ...]]:
    """(recorded base seed, one seed per image) from a seed, per-image seeds, a generator, per-image generators, or
    nothing (random). An int seed s gives image b the seed s + b; a generator gives a base seed drawn from it, a
    list of generators one seed drawn from each; the per-image seeds are what the sidecar saves."""
    if seed is not None and generator is not None:
        raise ValueError("give a seed or a generator, not both")
    if generator is not None:
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        draws = [int(torch.randint(0, MAX_SEED - 2**34, (1,), generator=g)) for g in gens]
        if len(gens) == 1 and not isinstance(generator, (list, tuple)):
            return draws[0], tuple(draws[0] + b for b in range(num_images))
        if len(gens) != num_images:
            raise ValueError(f"got {len(gens)} generators for {num_images} images (one generator, or one per image)")
        return None, tuple(draws)
    if isinstance(seed, (list, tuple)):
        if len(seed) != num_images:
            raise ValueError(f"got {len(seed)} seeds for {num_images} images (one seed, or one per image)")
        return None, tuple(_check_seed(s) for s in seed)
    if seed is None:
        seed = secrets.randbelow(2**31)
    base = _check_seed(seed)
    if base + num_images > MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**62), got {seed!r}")
    return base, tuple(base + b for b in range(num_images))
