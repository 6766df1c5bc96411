"""Captions of an input image: a zero-shot captioner of the ShapeWorld grammar that asks the diffusion model itself,
and any transformers image-to-text model from a local folder (BLIP, as diffusers' DiffEdit guide uses).

The zero-shot captioner is a diffusion classifier (Li et al., "Your Diffusion Model is Secretly a Zero-Shot
Classifier", ICCV 2023) over the grammar's captions: noise the image's latent, predict the noise under each caption,
and keep the caption with the lowest error (rerank.denoising_errors, the score the candidates use). The grammar has
1296 captions, too many to score each with several noises on a CPU, so the search is staged, each stage with noises
shared by all its captions: (1) the background, from the 72 one-object captions at a high noise level, where only the
background is left to tell them apart; (2) the likeliest object, from the 18 one-object captions with that background
at mid levels; (3) the second object: that object alone, or with any other kind on either side; (4) for two objects,
the first object again given the second; (5) the layout, at high levels where it is settled, with more noises: the
pair, swapped, with colours or shapes exchanged, or either object alone.
About 520 UNet rows an image, against 1296 captions x the noises of a full scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .components import Components
from .images import ImageInput, load_image, pad_to_multiple, pil_to_tensor
from .rerank import denoising_errors
from .shapeworld.world import BACKGROUNDS, COLORS, SHAPES, format_caption, parse_caption

__all__ = ["CaptionSearch", "Captioning", "caption_shapeworld", "ImageToTextCaptioner"]

KINDS = [(c, s) for c in COLORS for s in SHAPES]  # the 18 objects of the grammar


@dataclass(frozen=True)
class CaptionSearch:
    """The noise levels (fractions of the training range) and noises of each stage of the staged search."""

    background_levels: tuple[float, ...] = (0.8,)  # near pure noise, only the background still differs
    background_noises: int = 1
    levels: tuple[float, ...] = (0.4, 0.5, 0.6)  # mid levels tell colours and shapes apart
    noises: int = 2  # per level, in the stages that find the objects
    order_levels: tuple[float, ...] = (0.6, 0.7, 0.8)  # the layout (which object is left, bindings) settles at high noise
    order_noises: int = 8

    def __post_init__(self) -> None:
        for name in ("background_levels", "levels", "order_levels"):
            levels = getattr(self, name)
            if not levels or not all(0.0 < x < 1.0 for x in levels):
                raise ValueError(f"{name} must be noise levels in (0, 1), got {levels!r}")
        for name in ("background_noises", "noises", "order_noises"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Captioning:
    """The caption found, the last stage's captions with their errors (lowest first), and the UNet rows spent."""

    caption: str
    candidates: list[tuple[str, float]] = field(default_factory=list)
    rows: int = 0


def _latent(parts: Components, image: ImageInput) -> torch.Tensor:
    """(1, C, h, w) latent of one image (the posterior mean, as the editor encodes it)."""
    pixels = pil_to_tensor([load_image(image)])
    return parts.encode_images(pad_to_multiple(pixels, parts.vae_scale_factor))


class _Scorer:
    """Denoising errors of one latent under captions, each call with fresh noises that all its captions share."""

    def __init__(self, parts: Components, latent: torch.Tensor, seed: int):
        self.parts, self.latent, self.rows = parts, latent, 0
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, captions: list[str], levels, noises: int) -> list[tuple[str, float]]:
        """(caption, error) pairs, lowest error first."""
        parts, latent = self.parts, self.latent
        train_steps = parts.scheduler.config.num_train_timesteps
        timesteps = [min(train_steps - 1, int(round(level * train_steps))) for level in levels]
        eps = torch.randn((len(timesteps), noises, *latent.shape[1:]), generator=self.generator)
        region = torch.zeros(1, *latent.shape[-2:], dtype=torch.bool, device=latent.device)  # empty: every cell counts
        errors = denoising_errors(
            parts.denoiser, latent, parts.encode_prompts(captions), region, parts.scheduler.alphas_cumprod, timesteps,
            eps.to(parts.device, parts.dtype), prediction_type=parts.scheduler.config.prediction_type,
        )[0].float().cpu()
        self.rows += len(captions) * len(timesteps) * noises
        return sorted(zip(captions, errors.tolist()), key=lambda c: c[1])


@torch.no_grad()
def caption_shapeworld(
    parts: Components, image: ImageInput, *, seed: int = 0, search: CaptionSearch | None = None,
    shows: tuple[str, str] | None = None,
) -> Captioning:
    """The ShapeWorld caption the model finds likeliest for `image`, by the staged search of the module docstring;
    `shows`: a (colour, shape) known to be in the image (an instruction names it), which stage 2 then takes as the
    first object instead of searching. Deterministic for a seed."""
    search = search or CaptionSearch()
    if shows is not None and tuple(shows) not in KINDS:
        raise ValueError(f"shows must be a (colour, shape) of the ShapeWorld grammar, got {shows!r}")
    score = _Scorer(parts, _latent(parts, image), seed)
    # 1. Background: every one-object caption near pure noise; the background of the best one
    singles = {format_caption(bg, [kind]): bg for bg in BACKGROUNDS for kind in KINDS}
    background = singles[score(list(singles), search.background_levels, search.background_noises)[0][0]]
    # 2. The likeliest object: the 18 one-object captions with that background (or the object known to be there)
    singles = {format_caption(background, [kind]): kind for kind in KINDS}
    first = tuple(shows) if shows is not None else singles[score(list(singles), search.levels, search.noises)[0][0]]
    # 3. The second object, if any: that object alone, or with any other kind on either side
    others = [k for k in KINDS if k != first]
    captions = {format_caption(background, objs): objs for objs in [[first]] + [[first, k] for k in others]
                + [[k, first] for k in others]}
    ranked = score(list(captions), search.levels, search.noises)
    objects = captions[ranked[0][0]]
    if len(objects) == 2:
        if shows is None:  # 4. The first object again, given the second: any other kind in its slot, or swapped
            slot, kept = objects.index(first), objects[1 - objects.index(first)]
            options = [[k, kept] if slot == 0 else [kept, k] for k in KINDS if k != kept] + [objects[::-1]]
            ranked = score([format_caption(background, objs) for objs in options], search.levels, search.noises)
        # 5. The layout: the pair, swapped, with colours or shapes exchanged, or either object alone
        layouts = [o for o in _layouts(parse_caption(ranked[0][0])[1]) if shows is None or first in o]
        ranked = score([format_caption(background, o) for o in layouts], search.order_levels, search.order_noises)
    return Captioning(ranked[0][0], ranked, score.rows)


def _layouts(objects: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """A pair of objects, then the pairs and singles its binding or count may have been mistaken for."""
    (c1, s1), (c2, s2) = objects
    options = [objects, objects[::-1], [(c2, s1), (c1, s2)], [(c1, s2), (c2, s1)], objects[:1], objects[1:]]
    unique = {tuple(o): o for o in options if len(set(o)) == len(o)}  # no two identical objects
    return list(unique.values())


class ImageToTextCaptioner:
    """A transformers image-to-text model from a local folder (BLIP: BlipForConditionalGeneration and BlipProcessor,
    or any AutoModelForImageTextToText with its AutoProcessor); `captioner(image) -> str`, greedy decoding."""

    def __init__(self, model, processor, *, name: str = "image-to-text", max_new_tokens: int = 30):
        self.model, self.processor, self.name, self.max_new_tokens = model.eval(), processor, name, max_new_tokens

    @classmethod
    def from_pretrained(cls, path: str, *, device: str | torch.device = "cpu", **kwargs) -> "ImageToTextCaptioner":
        import transformers

        kind = transformers.AutoConfig.from_pretrained(path, local_files_only=True).model_type
        model_class = transformers.BlipForConditionalGeneration if kind == "blip" else (
            getattr(transformers, "AutoModelForVision2Seq", None) or transformers.AutoModelForImageTextToText)
        model = model_class.from_pretrained(path, local_files_only=True).to(device)
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, processor, name=str(path), **kwargs)

    @torch.no_grad()
    def __call__(self, image: ImageInput) -> str:
        inputs = self.processor(images=load_image(image), return_tensors="pt").to(self.model.device)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
