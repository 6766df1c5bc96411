"""The inpainting decoder (issue 21): DiffEdit's mask, then an inpainting UNet draws inside it.

An inpainting UNet (Stable Diffusion's inpainting checkpoints, the embedded ShapeWorld inpainter) takes 9 input
channels: the noisy latent, the mask (1 = paint) and the latent of the input with the masked pixels set to 0
(mid-grey), in that order. Its candidate decodes from the top level of the unconditional inversion (r = 1), as the
plain r = 1 candidate does, so the inverted latent still tells it where and how large the object is, while the
masked image shows it the surroundings without the old object; outside the mask the background is blended from
the inversion at every level as in the masked decoding, and the candidate is finished and scored as every other one.
(Starting from fresh noise inside the mask, as inpainting pipelines do, the embedded inpainter scored 87.5 % against
93.8 % on tuning seed 1000: docs/inpainting.md.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..components import Components
from ..masks import dilate, grow_into_object, threshold_maps, upsample_mask
from .decoding import MaskedDDIMDecoder

__all__ = [
    "InpaintingUNet", "InpaintingDecoder", "check_inpainter", "inpaint_hole", "masked_image_latents", "pixel_hole",
    "job_masked_latents", "sees_source",
    "INPAINT_CHANNELS",
]

INPAINT_CHANNELS = 9  # noisy latent (4) + mask (1) + masked-image latent (4), diffusers' inpainting layout


def inpaint_hole(masks, options) -> torch.Tensor:
    """(J, h, w) bool: the latent cells the inpainting UNet paints in: the decoding's latent mask, or with
    `inpaint_threshold` the soft map thresholded there (and grown by `mask_dilate`); a user's mask stays as given."""
    if options.inpaint_threshold is None or not masks.computed:
        return masks.latent
    return dilate(threshold_maps(masks.soft, options.inpaint_threshold), options.mask_dilate).bool()


def check_inpainter(unet, own) -> None:
    """A ValueError unless `unet` is an inpainting UNet that fits the model of UNet `own`: 9 input channels, the
    latent channels of its VAE and the width of its text embeddings."""
    config = unet.config
    if config.in_channels != INPAINT_CHANNELS:
        raise ValueError(f"an inpainting UNet takes {INPAINT_CHANNELS} input channels, this one {config.in_channels}")
    if config.out_channels != own.config.out_channels or config.cross_attention_dim != own.config.cross_attention_dim:
        raise ValueError(
            f"the inpainting UNet does not fit this model: it predicts {config.out_channels} latent channels from "
            f"text embeddings of width {config.cross_attention_dim}, the model's UNet {own.config.out_channels} from "
            f"{own.config.cross_attention_dim}"
        )


def pixel_hole(masks, latent_hole: torch.Tensor, pixels: torch.Tensor, cover: float) -> torch.Tensor:
    """(J, Hp, Wp) bool: the pixels the masked image holes, inside the latent hole's cells: the composite's pixel mask
    (a user's mask as given), grown over the old object's pixels connected to it (`cover`, as the composite's edit
    snap grows it), so the inpainter sees the exact extent of what changes and nothing of the old object.

    pixels: the job images (J, 3, Hp, Wp) in [-1, 1], padded; masks.pixel is at the input's size, inside them."""
    j, (hp, wp) = len(pixels), pixels.shape[-2:]
    cells = upsample_mask(latent_hole.reshape(j, *latent_hole.shape[-2:]), (hp, wp)) > 0.5
    out = torch.zeros(j, hp, wp, dtype=torch.bool)
    h, w = masks.pixel.shape[-2:]
    out[:, :h, :w] = masks.pixel.bool().cpu()
    out &= cells
    if masks.computed and cover > 0:
        ring = (upsample_mask(dilate(latent_hole.float(), 1), (hp, wp)) > 0.5) & ~cells
        image = (pixels.float().cpu() + 1.0) / 2.0
        out = torch.stack([grow_into_object(out[i], image[i], cells[i], ring[i], cover) for i in range(j)])
    return out


@torch.no_grad()
def masked_image_latents(
    parts: Components, pixels: torch.Tensor, latent_mask: torch.Tensor, hole: torch.Tensor | None = None
) -> torch.Tensor:
    """Latents (J, C, h, w) of the job images (J, 3, Hp, Wp) in [-1, 1] with the hole's pixels set to 0: `hole`
    (J, Hp, Wp) bool (pixel_hole), or else the masked cells of latent_mask (J, h, w), 1 = paint, each cell
    vae_scale_factor x vae_scale_factor pixels."""
    if hole is None:
        m = latent_mask.float().reshape(len(pixels), 1, *latent_mask.shape[-2:]).to(pixels.device)
        hole = F.interpolate(m, scale_factor=parts.vae_scale_factor, mode="nearest")[..., : pixels.shape[-2], : pixels.shape[-1]]
    else:
        hole = hole.to(pixels.device, pixels.dtype)[:, None]
    return parts.encode_images(pixels * (1 - hole))


def job_masked_latents(parts: Components, batch, masks, hole: torch.Tensor, options) -> torch.Tensor:
    """The masked-image latents (J, C, h, w) of a batch's jobs for the latent hole (J, h, w): the whole input for an
    inpainter that sees the source (sees_source), else holed at the pixel mask (pixel_hole) with `inpaint_pixel_hole`,
    else at the hole's whole cells."""
    pixels = batch.pixels[batch.job_image]
    if sees_source(parts, options):
        return masked_image_latents(parts, pixels, hole, torch.zeros(len(pixels), *pixels.shape[-2:], dtype=torch.bool))
    exact = pixel_hole(masks, hole, pixels, options.edit_cover) if options.inpaint_pixel_hole else None
    return masked_image_latents(parts, pixels, hole, exact)


def sees_source(parts: Components, options) -> bool:
    """Whether the inpainter's masked image is the whole input: `inpaint_source`, or when None the inpainter's own
    flag (loading.load_inpaint_unet reads it from its folder: trained on unholed inputs, it redraws what it sees)."""
    if options.inpaint_source is not None:
        return options.inpaint_source
    return bool(getattr(parts.inpaint_unet, "sees_source", False))


class InpaintingUNet:
    """A 9-channel UNet called as a 4-channel one: every call's rows get their job's mask and masked-image latent
    appended (rows are the jobs repeated, as classifier-free guidance doubles them)."""

    def __init__(self, unet, mask: torch.Tensor, masked: torch.Tensor):
        self.unet = unet
        self.extra = torch.cat([mask.to(masked.dtype), masked], dim=1)  # (J, 1 + C, h, w)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor):
        jobs = self.extra.shape[0]
        if x.shape[0] % jobs:
            raise ValueError(f"the inpainting UNet got {x.shape[0]} rows for {jobs} jobs")
        extra = self.extra.repeat(x.shape[0] // jobs, 1, 1, 1).to(x.dtype)
        return self.unet(torch.cat([x, extra], dim=1), t, encoder_hidden_states=encoder_hidden_states)


class InpaintingDecoder(MaskedDDIMDecoder):
    """The masked DDIM decoding (stages/decoding.py) through an inpainting UNet: every call is given the mask and the
    masked-image latents (J, C, h, w) of the jobs it decodes."""

    phase = "inpaint"

    def __init__(self, unet, masked: torch.Tensor):
        self.unet, self.masked = unet, masked

    def denoiser(self, parts: Components, mask: torch.Tensor, starts: list[int] | None) -> InpaintingUNet:
        if starts is not None and len(set(starts)) > 1:
            raise ValueError("the inpainting decoder decodes every job from one level")
        return InpaintingUNet(self.unet, mask.reshape(len(self.masked), 1, *mask.shape[-2:]).to(self.masked.device),
                              self.masked)
