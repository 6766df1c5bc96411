"""DiffEdit step 1: the edit mask from the difference of two noise estimates (Couairon et al. 2023, sec. 3.2).

The latent is noised at strength 0.5 with n noises; the UNet predicts the noise once conditioned on the
target prompt and once on the reference (source, or empty) prompt; |eps_target - eps_reference|, averaged
over channels and noises, is large where the prompts disagree. Extreme values are removed, the map is
rescaled to [0, 1] for each image on its own, and thresholded (0.5 by default).

When the target changes several words (colour and shape, object and place), the target prompt's map is
dominated by the largest change and min-max rescaling drowns the others. The editor then also maps each
single change on its own (prompts.single_changes) and keeps, per cell, the largest of the rescaled maps
(merge_change_maps): every change is found at its own scale.

No classifier-free guidance here: with the unconditional prediction u, guided estimates
u + g (e_t - u) and u + g (e_s - u) differ by g (e_t - e_s), a constant factor that rescaling removes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "guided_filter",
    "trim_to_background",
    "grow_into_object",
    "noise_difference_maps",
    "normalize_maps",
    "merge_change_maps",
    "gaussian_blur",
    "dilate",
    "erode",
    "threshold_maps",
    "finish_mask",
    "finish_normalized",
    "latent_mask_from_pixels",
    "upsample_mask",
]


@torch.no_grad()
def noise_difference_maps(
    unet,
    noisy_latents: torch.Tensor,
    timestep: int,
    reference_embeds: torch.Tensor,
    target_embeds: torch.Tensor,
    job_image: list[int],
    *,
    max_batch: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Mean over noises and channels of |eps(x_t, target) - eps(x_t, reference)|, one map per job.

    noisy_latents: (B, n, C, h, w), n noisings of each image's latent at `timestep`.
    reference_embeds: (B, L, D), one reference prompt per image; its predictions serve every job of the image.
    target_embeds: (J, L, D), one target prompt per job; `job_image[j]` is the image of job j.
    All B*n + J*n predictions go through the UNet in one batch, or in chunks of `max_batch`.
    Returns (J, h, w) float32.
    """
    b, n, c, h, w = noisy_latents.shape
    if len(job_image) != target_embeds.shape[0]:
        raise ValueError("job_image needs one image index per target embedding")
    # Rows: every image's n latents with its reference prompt, then every job's n latents with its target.
    index = torch.tensor(list(range(b)) + list(job_image), device=noisy_latents.device)  # (B + J,)
    x = noisy_latents[index].reshape(-1, c, h, w)  # ((B + J) * n, C, h, w)
    embeds = torch.cat([reference_embeds, target_embeds]).repeat_interleave(n, dim=0)  # ((B + J) * n, L, D)
    chunk = max_batch or x.shape[0]
    eps = []
    for start in range(0, x.shape[0], chunk):
        xs, es = x[start : start + chunk], embeds[start : start + chunk]
        t = torch.full((xs.shape[0],), int(timestep), device=xs.device, dtype=torch.long)
        eps.append(unet(xs, t, encoder_hidden_states=es).sample.to(torch.float32, copy=True))  # a copy: see CompiledUNet
        if progress is not None:
            progress(xs.shape[0])
    eps = torch.cat(eps).reshape(b + len(job_image), n, c, h, w)
    eps_reference = eps[: b][torch.tensor(job_image, device=eps.device)]  # (J, n, C, h, w)
    eps_target = eps[b:]
    return (eps_target - eps_reference).abs().mean(dim=(1, 2))  # (J, h, w)


def normalize_maps(
    maps: torch.Tensor,
    *,
    clamp: str = "quantile",
    quantile: float = 0.99,
    mean_ratio: float = 3.0,
    per_image: bool = True,
) -> torch.Tensor:
    """Remove extreme values and rescale each (h, w) map of (J, h, w) to [0, 1].

    clamp="quantile": clip at the map's `quantile`, then min-max rescale (the paper's wording).
    clamp="mean_ratio": clip to [0, mean * mean_ratio] and divide by it (diffusers' generate_mask).
    per_image=False pools the statistics over the whole batch, as diffusers does (an image's mask then
    depends on the other images in the batch); kept for comparison only.
    """
    j = maps.shape[0]
    flat = maps.reshape(j, -1).float() if per_image else maps.reshape(1, -1).float()
    if clamp == "quantile":
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        hi = torch.quantile(flat, quantile, dim=1, keepdim=True)
        lo = flat.amin(dim=1, keepdim=True)
        out = (flat.clamp(max=hi) - lo) / (hi - lo).clamp_min(1e-12)
    elif clamp == "mean_ratio":
        if mean_ratio <= 0:
            raise ValueError(f"mean_ratio must be > 0, got {mean_ratio}")
        hi = flat.mean(dim=1, keepdim=True) * mean_ratio
        out = flat.clamp(min=0).clamp(max=hi) / hi.clamp_min(1e-12)
    else:
        raise ValueError(f"clamp must be 'quantile' or 'mean_ratio', got {clamp!r}")
    return out.reshape(maps.shape)


def merge_change_maps(full: torch.Tensor, parts: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """One raw map (h, w) from the target's map `full` and the maps of single changes `parts` (P, h, w).

    Each map is clipped at its own `quantile` and min-max rescaled, the cellwise maximum taken, and the
    result put back on `full`'s scale (times its clip level), so that maps of other jobs, pooled with it
    (per_image=False), stay comparable.
    """
    maps = torch.cat([full[None], parts]).float()
    merged = normalize_maps(maps, clamp="quantile", quantile=quantile, per_image=True).amax(0)
    return merged * torch.quantile(full.float().flatten(), quantile)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (J, h, w) maps (reflect padding); sigma in cells, 0 = none."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(maps.dtype)
    out = maps.unsqueeze(1)  # (J, 1, h, w)
    pad_h, pad_w = min(radius, out.shape[-2] - 1), min(radius, out.shape[-1] - 1)
    kh = k[radius - pad_h : radius + pad_h + 1]
    kw = k[radius - pad_w : radius + pad_w + 1]
    out = F.conv2d(F.pad(out, (pad_w, pad_w, 0, 0), mode="reflect"), (kw / kw.sum()).view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, pad_h, pad_h), mode="reflect"), (kh / kh.sum()).view(1, 1, -1, 1))
    return out.squeeze(1)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a (J, h, w) binary mask by `radius` cells (square structuring element)."""
    if radius <= 0:
        return mask
    out = F.max_pool2d(mask.float().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius).squeeze(1)
    return out.to(mask.dtype)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Shrink a (J, h, w) binary mask by `radius` cells (square structuring element)."""
    if radius <= 0:
        return mask
    out = -F.max_pool2d(-mask.float().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius).squeeze(1)
    return out.to(mask.dtype)


def threshold_maps(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binary mask of cells strictly above `threshold` (diffusers' convention: 0 where <= 0.5)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"mask threshold must be in [0, 1], got {threshold}")
    return maps > threshold


def latent_mask_from_pixels(mask: np.ndarray | torch.Tensor, factor: int) -> torch.Tensor:
    """(H, W) bool pixel mask -> (H / factor, W / factor) latent mask; a cell is on if any pixel is on."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]
    return F.max_pool2d(m, factor, stride=factor, ceil_mode=True)[0, 0] > 0


def upsample_mask(maps: torch.Tensor, size: tuple[int, int], *, soft: bool = False) -> torch.Tensor:
    """(J, h, w) latent maps -> (J, H, W): nearest neighbour for binary masks, bilinear for soft maps."""
    x = maps.float().unsqueeze(1)
    if soft:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    else:
        x = F.interpolate(x, size=size, mode="nearest")
    return x.squeeze(1)


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window around each pixel of (N, C, H, W), windows clipped at the border.

    Separable: a row mean, then a column mean (exact, as a clipped window is a rectangle), so the cost
    grows with 2r+1, not its square.
    """
    k = 2 * radius + 1
    rows = F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(rows, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


def guided_filter(maps: torch.Tensor, guide: torch.Tensor, radius: int, eps: float = 1e-3) -> torch.Tensor:
    """Edge-aware smoothing of soft maps (J, H, W) by guide images (J, C, H, W) in [0, 1].

    The colour guided filter (He, Sun & Tang, "Guided Image Filtering", TPAMI 2013): in every window
    the output is an affine function of the guide's C channels fitted to the map by least squares
    (ridge `eps`), and the fits of the windows covering a pixel are averaged. Where the guide has an
    edge, the output steps there; where the guide is flat, the output is the map's local mean. A guide
    of two images stacked (C = 6) steps at the edges of either.
    """
    p = maps.float().unsqueeze(1)  # (J, 1, H, W)
    guide = guide.float()
    c, radius = guide.shape[1], max(1, int(radius))
    mean_i, mean_p = _box(guide, radius), _box(p, radius)
    cov_ip = _box(guide * p, radius) - mean_i * mean_p  # (J, C, H, W)
    rows, cols = torch.triu_indices(c, c)  # the covariance is symmetric: box-filter its upper triangle
    upper = _box(guide[:, rows] * guide[:, cols], radius) - mean_i[:, rows] * mean_i[:, cols]  # (J, C(C+1)/2, H, W)
    var = guide.new_empty(guide.shape[0], guide.shape[2], guide.shape[3], c, c)  # (J, H, W, C, C)
    var[..., rows, cols] = upper.permute(0, 2, 3, 1)
    var[..., cols, rows] = upper.permute(0, 2, 3, 1)
    var = var + eps * torch.eye(c, dtype=var.dtype, device=var.device)
    a = torch.linalg.solve(var, cov_ip.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1).permute(0, 3, 1, 2)
    b = mean_p - (a * mean_i).sum(1, keepdim=True)
    return ((_box(a, radius) * guide).sum(1, keepdim=True) + _box(b, radius)).squeeze(1)


def finish_mask(
    maps: torch.Tensor,
    *,
    clamp: str = "quantile",
    quantile: float = 0.99,
    mean_ratio: float = 3.0,
    per_image: bool = True,
    smooth: float = 0.0,
    threshold: float = 0.5,
    dilate_cells: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw difference maps (J, h, w) -> (soft map in [0, 1], binary mask): clamp, rescale, smooth, threshold, dilate."""
    soft = normalize_maps(maps, clamp=clamp, quantile=quantile, mean_ratio=mean_ratio, per_image=per_image)
    return finish_normalized(soft, smooth=smooth, threshold=threshold, dilate_cells=dilate_cells)


def finish_normalized(
    soft: torch.Tensor, *, smooth: float = 0.0, threshold: float = 0.5, dilate_cells: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """finish_mask's second half: rescaled maps (J, h, w) -> (soft map, binary mask): smooth, threshold, dilate.

    A map stored unsmoothed (`DiffEditor.mask(..., mask_smooth=0)` keeps the rescaled map itself) can be smoothed
    and thresholded again here, without the model: the result is the one the mask pass gives with those options."""
    if smooth > 0:  # blurring lowers the peaks: rescale again so the threshold keeps its meaning
        soft = normalize_maps(gaussian_blur(soft, smooth), clamp="quantile", quantile=1.0)
    return soft, dilate(threshold_maps(soft, threshold), dilate_cells)


def _ring_colors(guide: torch.Tensor, ring: torch.Tensor, max_samples: int) -> torch.Tensor:
    """(K, C) colours of the ring's pixels in guide (C, H, W), quantised to 1/64; past `max_samples`, taken at even
    strides (a textured ring is then matched against part of its colours), so time and memory stay bounded."""
    samples = torch.unique((guide[:, ring].T.float() * 64).round(), dim=0) / 64  # (K, C)
    if samples.shape[0] > max_samples:
        samples = samples[torch.linspace(0, samples.shape[0] - 1, max_samples, device=samples.device).long()]
    return samples


def _far_from(pixels: torch.Tensor, colors: torch.Tensor, tau: float, chunk: int) -> torch.Tensor:
    """(P,) bool: pixels (P, C) farther than tau from every colour (K, C); at most chunk x K distances at once."""
    return torch.cat([torch.cdist(pixels[i : i + chunk], colors).amin(1) > tau for i in range(0, pixels.shape[0], chunk)])


def trim_to_background(
    mask: torch.Tensor, guide: torch.Tensor, ring: torch.Tensor, tau: float, *, max_samples: int = 1024, chunk: int = 8192
) -> torch.Tensor:
    """Drop the pixels of a (H, W) mask whose guide colour lies within `tau` of a colour of the ring.

    guide: (C, H, W) in [0, 1], e.g. the input and the edit stacked (C = 6); ring: (H, W) bool, pixels
    just outside the region the mask may cover, i.e. the background around it. A pixel that looks like
    that background in every channel (before and after the edit) is background: a guided filter keeps a
    halo of it where the soft map is still high past an object's outline. The ring's colours are
    quantised to 1/64 and, past `max_samples`, taken at even strides (fewer pixels dropped, never more),
    so time and memory stay bounded: at most `chunk` x `max_samples` distances at once.
    """
    if tau <= 0 or not bool(mask.any()) or not bool(ring.any()):
        return mask
    keep = _far_from(guide[:, mask].T.float(), _ring_colors(guide, ring, max_samples), tau, chunk)
    out = mask.clone()
    out[mask] = keep
    return out


def object_pixels(
    image: torch.Tensor, region: torch.Tensor, ring: torch.Tensor, tau: float, max_samples: int = 1024, chunk: int = 8192
) -> torch.Tensor:
    """(H, W) bool: the pixels of `region` whose colour in image (C, H, W, in [0, 1]) lies farther than `tau` from every
    colour of the ring (the background around the region): the input's object there."""
    out = torch.zeros_like(region)
    out[region] = _far_from(image[:, region].T.float(), _ring_colors(image, ring, max_samples), tau, chunk)
    return out


def reconstruct(seed: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """The pixels of `within` (H, W) connected (8-neighbourhood) to `seed`: a geodesic reconstruction."""
    grown = seed & within
    for _ in range(within.shape[-2] * within.shape[-1]):  # one pixel further each pass; stops when nothing grows
        step = dilate(grown[None], 1)[0] & within
        if torch.equal(step, grown):
            break
        grown = step
    return grown


def trim_spill(
    mask: torch.Tensor, image: torch.Tensor, region: torch.Tensor, ring: torch.Tensor, tau: float, width: int, *,
    max_samples: int = 1024, chunk: int = 8192,
) -> torch.Tensor:
    """Drop from a (H, W) mask the slivers, at most 2 * `width` pixels thick, that lie outside the old object and
    within `width` pixels of it; image (C, H, W, in [0, 1]) is the input, the old object its pixels inside `region`
    farther than `tau` from every colour of the ring (as grow_into_object).

    A decoder redraws a kept outline a pixel or two off: a recoloured object comes out a pixel larger, and the
    composite pastes that rim of new colour over the background next to the old edge. The input keeps those pixels,
    so the new object ends at the old one's edge. A sliver connected to a thicker new part stays with it (a square
    drawn over a circle keeps its whole sides, not only its corners), and so does everything farther from the old
    object (a thin new feature away from it is never trimmed)."""
    if width <= 0 or tau <= 0 or not bool(mask.any()) or not bool(ring.any()):
        return mask
    old = object_pixels(image, region, ring, tau, max_samples, chunk)
    outside = mask & ~old
    thick = dilate(erode(outside[None], width), width)[0] & outside  # the opening keeps what is thicker than a sliver
    shape_change = reconstruct(thick, outside)  # a new part together with the thin ends that lead up to it
    return mask & ~(outside & ~shape_change & dilate(old[None], width)[0])


def grow_into_object(
    mask: torch.Tensor, image: torch.Tensor, region: torch.Tensor, ring: torch.Tensor, tau: float, *,
    max_samples: int = 1024, chunk: int = 8192,
) -> torch.Tensor:
    """Grow a (H, W) mask, inside `region`, over the pixels connected to it whose colour in image (C, H, W, in
    [0, 1]) lies farther than `tau` from every colour of the ring (the background around the region).

    The composite's mask follows the edit's edges; where the decoder drew the new object smaller or shifted,
    it stops short of the old object, whose pixels would survive as a ghost. Grown over the input's object
    pixels, the mask takes the old object's whole footprint, and the decoder's pixels replace it.
    """
    if tau <= 0 or not bool(mask.any()) or not bool(ring.any()):
        return mask
    return reconstruct(mask, object_pixels(image, region, ring, tau, max_samples, chunk) | mask)
