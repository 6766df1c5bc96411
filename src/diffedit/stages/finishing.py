"""Finishers: decoded images to the outputs, in pixel space.

Protocol: `finisher(parts, batch, decoded, masks, options) -> (uint8 images (J, 3, H, W), pixel masks (J, H, W))`.
`composite` snaps the mask to the edges of the input and of the edit, trims what matches the background
around it, and pastes the edit into the input with a feathered edge: every pixel outside stays bit-exact.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..components import Components
from ..images import to_uint8
from ..masks import dilate, grow_into_object, guided_filter, trim_spill, trim_to_background, upsample_mask
from ..sampling import composite, feathered_alpha
from .batch import Batch
from .masking import JobMasks
from .registry import register

__all__ = ["CompositeFinisher", "snap_to_edit", "mask_images"]


def snap_to_edit(
    soft: torch.Tensor, latent: torch.Tensor, original: torch.Tensor, edited: torch.Tensor, threshold: float,
    trim: float, factor: int, device: torch.device, cover: float = 0.0, spill: int = 0,
) -> torch.Tensor:
    """The composite's pixel mask (J, H, W) from the soft map snapped to the edges of input and edit.

    The soft map, upsampled, goes through a guided filter whose guide stacks the input and the decoded edit
    (J, 3, H, W each, in [-1, 1]): it steps where either has an edge, so the mask follows the old object's
    outline and the new one's, which the input alone does not show. It may spill one latent cell past the
    latent mask, where the decoder draws the edge of what it painted inside. The filter runs on `device`, on
    each image's box around that reach (exact: an output pixel depends on the inputs within twice the radius).
    With `trim` > 0 it then drops the pixels that match, in input and edit together, a colour of the ring one
    latent cell wide around that reach (`trim_to_background`): the filter's halo past an outline. With `cover`
    > 0 it grows the mask, inside that reach, over the input's pixels connected to it that match no colour of
    the ring (`grow_into_object`): the old object's whole footprint, where the decoder drew the new one smaller.
    """
    (h, w), f = original.shape[-2:], factor
    padded = (latent.shape[-2] * f, latent.shape[-1] * f)
    region = (upsample_mask(dilate(latent, 1), padded) > 0.5)[:, :h, :w].to(device)
    ring = (upsample_mask(dilate(latent, 2), padded) > 0.5)[:, :h, :w].to(device) & ~region
    soft_px = upsample_mask(soft, padded, soft=True)[:, :h, :w].to(device)
    guide = (torch.cat([original, edited], dim=1).to(device, torch.float32) + 1.0) / 2.0  # (J, 6, H, W)
    out = torch.zeros_like(region)
    for j in range(region.shape[0]):
        ys, xs = torch.nonzero(region[j], as_tuple=True)
        if ys.numel() == 0:
            continue
        y0, y1 = max(0, int(ys.min()) - 2 * f), min(h, int(ys.max()) + 1 + 2 * f)
        x0, x1 = max(0, int(xs.min()) - 2 * f), min(w, int(xs.max()) + 1 + 2 * f)
        snapped = guided_filter(soft_px[j : j + 1, y0:y1, x0:x1], guide[j : j + 1, :, y0:y1, x0:x1], radius=f, eps=1e-2)
        out[j, y0:y1, x0:x1] = region[j, y0:y1, x0:x1] & (snapped[0] > threshold)
        out[j] = trim_to_background(out[j], guide[j], ring[j], trim)
        box = (slice(y0, y1), slice(x0, x1))  # the region and its ring lie inside: growing stays there
        out[j][box] = grow_into_object(out[j][box], guide[j, :3][(slice(None), *box)], region[j][box], ring[j][box], cover)
        out[j][box] = trim_spill(out[j][box], guide[j, :3][(slice(None), *box)], region[j][box], ring[j][box], cover, spill)
    return out.cpu()


@register("finisher", "composite")
class CompositeFinisher:
    """Edit snap and trim (computed masks only), then the feathered composite; `composite=False` keeps the decoder's
    pixels everywhere."""

    def __call__(
        self, parts: Components, batch: Batch, decoded: torch.Tensor, masks: JobMasks, options
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = batch.size
        decoded_u8, pixel = to_uint8(decoded).cpu(), masks.pixel
        if not options.composite:
            return decoded_u8, pixel
        if options.edit_snap and masks.computed:
            inputs = batch.pixels[batch.job_image][:, :, :h, :w]
            pixel = snap_to_edit(
                masks.soft, masks.latent, inputs, decoded.clamp(-1, 1), options.mask_threshold, options.edit_trim,
                parts.vae_scale_factor, parts.device, cover=options.edit_cover, spill=options.edit_spill,
            )
        original = to_uint8(batch.pixels[:, :, :h, :w])[batch.job_image]
        alpha = feathered_alpha(pixel, options.feather)
        return composite(original, decoded_u8, alpha), alpha > 0  # the mask reported: every pixel the edit touched


def mask_images(soft: torch.Tensor, pixel: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]):
    """(binary masks, soft maps) as "L" PIL images of the input's size."""
    h, w = size
    soft_px = upsample_mask(soft, padded, soft=True)[:, :h, :w].clamp(0, 1)
    to_l = lambda a: Image.fromarray((a.cpu().numpy() * 255.0 + 0.5).astype(np.uint8), mode="L")  # noqa: E731
    return [to_l(m.float()) for m in pixel], [to_l(s) for s in soft_px]
