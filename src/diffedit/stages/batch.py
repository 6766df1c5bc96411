"""Inputs of one call normalised to jobs: several images, several targets per image; each job is one
(image, target) pair, and the jobs of one image share its mask pass and its inversion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..bounds import check_prompt_text
from ..components import Prompt
from ..images import ImageInput, load_image, pad_to_multiple, pil_to_tensor

__all__ = ["Batch", "prepare_batch", "same_prompt", "describe_prompt", "normalize_prompt"]


@dataclass
class Batch:
    """Images of one call, one source per image, and the jobs: job j edits image job_image[j] to job_target[j]."""

    images: list[Image.Image]
    pixels: torch.Tensor  # (B, 3, Hp, Wp) in [-1, 1], padded to the VAE grid
    size: tuple[int, int]  # (H, W) before padding
    sources: list[Prompt]  # (B,)
    job_image: list[int]  # (J,)
    job_target: list[Prompt]  # (J,)

    @property
    def job_sources(self) -> list[Prompt]:
        return [self.sources[b] for b in self.job_image]


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _check_prompt(p, what: str) -> None:
    if isinstance(p, torch.Tensor):
        if p.dim() not in (2, 3) or (p.dim() == 3 and p.shape[0] != 1):
            raise ValueError(f"{what} embeddings must be (L, D) or (1, L, D), got {tuple(p.shape)}")
    elif not isinstance(p, str):
        raise ValueError(f"{what} must be a string or prompt embeddings, got {type(p).__name__}")
    else:
        check_prompt_text(p, what)


def normalize_prompt(text: str) -> str:
    """A prompt as a CLIP tokenizer reads it: case folded, runs of white space (and control characters) as one space."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split()).casefold()


def same_prompt(a: Prompt, b: Prompt) -> bool:
    """Whether two prompts are the same to the text encoder: equal texts once case and spacing are ignored, or
    equal embeddings."""
    if isinstance(a, str) and isinstance(b, str):
        return normalize_prompt(a) == normalize_prompt(b)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape[-2:] == b.shape[-2:] and bool(torch.equal(a.reshape(b.shape[-2:]).cpu(), b.reshape(b.shape[-2:]).cpu()))
    return False


def describe_prompt(p: Prompt) -> str:
    """A prompt as the sidecar records it: its text, or a note that embeddings were given."""
    return p if isinstance(p, str) else f"<prompt embeddings {tuple(p.shape)}>"


def prepare_batch(
    image: ImageInput | Sequence[ImageInput],
    source: Prompt | Sequence[Prompt],
    target: Prompt | Sequence[Prompt] | Sequence[Sequence[Prompt]],
    *,
    vae_scale_factor: int,
    max_pixels: int | None,
) -> Batch:
    """Normalise (image | images, source | sources, target | targets | targets per image) to jobs."""
    many = isinstance(image, (list, tuple))
    images = [load_image(im, max_pixels=max_pixels) for im in _as_list(image)]
    if not images:
        raise ValueError("no image given")
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ValueError(f"images of one call must share a size, got {sorted(sizes)}; edit them in separate calls")
    sources = _as_list(source)
    if len(sources) == 1:
        sources = sources * len(images)
    if len(sources) != len(images):
        raise ValueError(f"got {len(sources)} source prompts for {len(images)} images")
    if not many:  # one image: target is one prompt or several prompts for it
        targets = [_as_list(target)]
    elif isinstance(target, (str, torch.Tensor)):
        targets = [[target] for _ in images]
    else:
        targets = [_as_list(t) for t in target]
        if len(targets) != len(images):
            raise ValueError(f"got {len(targets)} targets for {len(images)} images (one target, or list per image)")
    job_image, job_target = [], []
    for b, ts in enumerate(targets):
        if not ts:
            raise ValueError(f"image {b} has no target prompt")
        _check_prompt(sources[b], "source prompt")
        for t in ts:
            _check_prompt(t, "target prompt")
            if isinstance(t, str) and not normalize_prompt(t):
                raise ValueError("target prompt is empty: say what the edited image should show")
            if same_prompt(t, sources[b]):
                raise ValueError(
                    f"target prompt equals the source prompt once case and spacing are ignored ({describe_prompt(t)!r} "
                    f"and {describe_prompt(sources[b])!r}): nothing to edit"
                )
            job_image.append(b)
            job_target.append(t)
    pixels = pad_to_multiple(pil_to_tensor(images), vae_scale_factor)
    w, h = images[0].size
    return Batch(images, pixels, (h, w), sources, job_image, job_target)
