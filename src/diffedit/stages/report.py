"""What an edit did not change, and why: per job a flag and a one-line warning (EditResult.edited / .warnings).

An edit changes nothing when its mask is empty (a threshold that keeps no cell, an all-black user mask) or, with
the composite on, when its output equals the input pixel for pixel (nothing of the mask survived the edit snap
and trim). The editor reports these plainly instead of returning the input as if it were an edit.
"""

from __future__ import annotations

import torch

from ..images import to_uint8
from .batch import Batch, describe_prompt
from .masking import JobMasks

__all__ = ["job_changes", "empty_mask_warnings"]


def _job_name(batch: Batch, j: int) -> str:
    source, target = describe_prompt(batch.job_sources[j]), describe_prompt(batch.job_target[j])
    return f"edit {j + 1} ({source!r} -> {target!r})"


def _empty_mask_reason(options, computed: bool) -> str:
    if not computed:
        return "the given mask is empty (no white pixel): nothing to edit"
    return (f"the mask is empty (no cell of the map is above the threshold {options.latent_threshold:g}): nothing "
            "to edit; lower the threshold (--threshold, --decode-threshold) or check the prompts")


def empty_mask_warnings(batch: Batch, masks: JobMasks, options) -> list[str]:
    """One warning per job whose mask is empty: no latent cell to decode, or no pixel to paste."""
    out = []
    for j, (latent, pixel) in enumerate(zip(masks.latent, masks.pixel)):
        if not bool(latent.any()):
            out.append(f"{_job_name(batch, j)}: {_empty_mask_reason(options, masks.computed)}")
        elif not bool(pixel.any()):
            out.append(f"{_job_name(batch, j)}: no pixel of the map is above the threshold {options.mask_threshold:g}: "
                       "the mask is empty; lower the threshold (--threshold)")
    return out


def job_changes(
    batch: Batch, masks: JobMasks, images_u8: torch.Tensor, pixel_mask: torch.Tensor, options
) -> tuple[list[bool], list[str]]:
    """(per job: whether the edit changed anything, a warning for each job that did not). images_u8: the outputs
    (J, 3, H, W); pixel_mask: the composite's final masks (J, H, W)."""
    h, w = batch.size
    original = to_uint8(batch.pixels[:, :, :h, :w])[batch.job_image]
    edited, warnings = [], []
    for j, latent in enumerate(masks.latent):
        reason = ""
        if not bool(latent.any()):
            reason = _empty_mask_reason(options, masks.computed)
        elif options.composite and not bool(masks.pixel[j].any()):
            reason = (f"no pixel of the map is above the threshold {options.mask_threshold:g}, so nothing was pasted "
                      "into the input; lower the threshold (--threshold)")
        elif options.composite and not bool(pixel_mask[j].any()):
            reason = "the edit snap and trim left no pixel of the mask, so nothing was pasted (try --set edit_snap=false)"
        elif options.composite and torch.equal(images_u8[j], original[j]):
            reason = "the edit left every pixel as it was"
        edited.append(not reason)
        if reason:
            warnings.append(f"{_job_name(batch, j)}: {reason}")
    return edited, warnings
