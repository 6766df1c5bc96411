"""Pasting another editor's output into its input: the pixel side of `diffedit composite`.

An instruction editor (InstructPix2Pix and kin) repaints the whole image: besides the asked change, it often
shifts every colour a little (a warmer tone, more contrast). To keep the input's pixels outside the edit, its
output EDITED is pasted into INPUT inside a mask. Without prompts, the mask is where EDITED differs from INPUT
*after the global colour change is removed*: a gain and an offset per channel (brightness, contrast, white
balance), EDITED ~ gain * INPUT + offset, fitted robustly (MSAC over lines through random pixel pairs, then least
squares on the pixels it explains), so that the edited region, up to about half the image, does not pull it; what
it leaves unexplained, smoothed, is thresholded and cleaned (specks dropped, enclosed holes filled, optionally
grown). Images here are uint8 tensors (3, H, W) unless said otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .masks import dilate, gaussian_blur
from .sampling import composite, feathered_alpha

__all__ = ["match_size", "fit_colors", "apply_colors", "undo_colors", "difference_map", "label_components",
           "remove_specks", "fill_holes", "difference_mask", "paste"]

FIT_TRIALS = 256  # candidate lines (pixel pairs): one through two unchanged pixels of different colours is enough
FIT_SPREAD = 16 / 255  # a pair closer than this in a channel says nothing of its gain (noise would)
FIT_SAMPLES = 1 << 16  # pixels taken (at even strides) for the least squares: enough for 6 numbers, bounded time
FIT_SCORED = 4096  # pixels each candidate is scored on
FIT_ROUNDS = 3  # least squares on the pixels the fit explains, then again with the new fit
FIT_RIDGE = 1e-3  # pull of each gain towards 1, per pixel: decides only what INPUT's own colours cannot
FIT_GAINS = (0.5, 2.0)  # a global tone change keeps the order of values: no gain flips a channel or crushes it


def match_size(edited: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, str | None]:
    """EDITED at INPUT's size (W, H), resized (Lanczos) when it differs, with a note saying so (else None)."""
    if edited.size == tuple(size):
        return edited, None
    note = f"the edited image is {edited.size[0]}x{edited.size[1]}, the input {size[0]}x{size[1]}: resized it to the input's size"
    if abs(edited.size[0] / edited.size[1] - size[0] / size[1]) > 0.01:
        note += " (their aspect ratios differ: it is stretched)"
    return edited.resize(tuple(size), Image.Resampling.LANCZOS), note


def _rows(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 -> (H * W, 4) float64: colours in [0, 1] and a 1 for the offset."""
    x = image.reshape(3, -1).T.double() / 255.0
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def _candidates(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gains, offsets), (3, T) each: per channel, the line through two random pixels (gain 1 where they agree in
    INPUT), and as the first candidate the median offset alone."""
    g = torch.Generator().manual_seed(0)  # deterministic: the same images give the same fit
    i, j = torch.randint(x.shape[1], (2, FIT_TRIALS), generator=g)
    dx = x[:, i] - x[:, j]
    spread = dx.abs() > FIT_SPREAD
    gain = torch.where(spread, (y[:, i] - y[:, j]) / torch.where(spread, dx, 1.0), 1.0).clamp(*FIT_GAINS)
    gain = torch.cat([torch.ones(3, 1, dtype=x.dtype), gain], dim=1)
    offset = torch.cat([(y - x).median(dim=1).values[:, None], y[:, i] - gain[:, 1:] * x[:, i]], dim=1)
    return gain, offset


def fit_colors(
    image: torch.Tensor, edited: torch.Tensor, *, tolerance: float = 0.1, exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """The colour map A (4, 3) with edited ~ [image, 1] @ A on the pixels the edit left alone: a gain and an offset
    per channel (A's diagonal and last row), gains within FIT_GAINS.

    Robust to the edit (MSAC, Torr & Zisserman 2000): of FIT_TRIALS lines through random pixel pairs, the one whose
    residuals (largest channel, in [0, 1], capped at `tolerance`) sum least; then least squares on the pixels it
    explains within `tolerance` (FIT_ROUNDS times). Not a full 3 x 3 matrix: on an image of few colours, 12 numbers
    map the old object's colour onto the new one and explain the edit itself away. exclude: (H, W) bool, pixels
    known to be edited."""
    x, y = image.reshape(3, -1).double() / 255.0, edited.reshape(3, -1).double() / 255.0  # (3, N) each
    if exclude is not None and bool((~exclude).any()):
        x, y = x[:, ~exclude.flatten()], y[:, ~exclude.flatten()]
    x, y = x[:, :: max(1, x.shape[1] // FIT_SAMPLES)], y[:, :: max(1, x.shape[1] // FIT_SAMPLES)]
    tol = tolerance if tolerance > 0 else 0.05
    gains, offsets = _candidates(x, y)
    xs, ys = x[:, :: max(1, x.shape[1] // FIT_SCORED)].float(), y[:, :: max(1, x.shape[1] // FIT_SCORED)].float()
    residual = (gains.float()[:, :, None] * xs[:, None] + offsets.float()[:, :, None] - ys[:, None]).abs().amax(0)  # (T, n)
    best = int(residual.clamp(max=tol).square().sum(1).argmin())
    gain, offset = gains[:, best], offsets[:, best]
    for _ in range(FIT_ROUNDS):
        chosen = (gain[:, None] * x + offset[:, None] - y).abs().amax(dim=0) <= tol
        if int(chosen.sum()) < 2:
            break
        xc, yc = x[:, chosen], y[:, chosen]
        mx, my, lam = xc.mean(1), yc.mean(1), FIT_RIDGE * xc.shape[1]
        cov = ((xc - mx[:, None]) * (yc - my[:, None])).sum(1)
        var = ((xc - mx[:, None]) ** 2).sum(1)
        gain = ((cov + lam) / (var + lam)).clamp(*FIT_GAINS)  # least squares with a slight pull towards 1
        offset = my - gain * mx
    return torch.cat([torch.diag(gain), offset[None]]).float()


def apply_colors(image: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 through the colour map A (4, 3): (3, H, W) float in [0, 1], unclamped."""
    return (_rows(image).float() @ fit).T.reshape(image.shape)


def undo_colors(edited: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """EDITED with the colour map A undone (solved for the input colours that A maps onto it), uint8 (3, H, W)."""
    y = edited.reshape(3, -1).T.double() / 255.0 - fit[3].double()
    x = y @ torch.linalg.pinv(fit[:3].double())  # (H * W, 3)
    return (x.T.reshape(edited.shape) * 255.0).round().clamp(0, 255).to(torch.uint8)


def difference_map(image: torch.Tensor, edited: torch.Tensor, fit: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """(H, W) float: how far EDITED's colour lies from INPUT's through the colour map (largest channel, in [0, 1]),
    Gaussian-smoothed by sigma pixels so that single noisy pixels (JPEG, a regenerated texture) count less."""
    residual = (apply_colors(image, fit) - edited.float() / 255.0).abs().amax(dim=0)
    return gaussian_blur(residual[None], sigma)[0]


def label_components(mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """(H, W) bool -> (H, W) int64: each connected component of the mask labelled by the smallest flat index of its
    pixels, -1 outside. Minimum propagation over the neighbourhood with pointer jumping (label <- label[label])."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    h, w = mask.shape
    outside = float(h * w)
    flat_mask = mask.flatten()
    labels = torch.where(mask, torch.arange(h * w, dtype=torch.float64).reshape(h, w), outside)

    def lowest(x: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:  # min over a k window (padding counts as +inf)
        return -F.max_pool2d(-x[None, None], k, stride=1, padding=(k[0] // 2, k[1] // 2))[0, 0]

    while True:
        low = lowest(labels, (3, 3)) if connectivity == 8 else torch.minimum(lowest(labels, (3, 1)), lowest(labels, (1, 3)))
        low = torch.where(mask, low, outside).flatten()
        jumped = torch.where(flat_mask, low[low.clamp(max=h * w - 1).long()], outside).reshape(h, w)
        if torch.equal(jumped, labels):
            return torch.where(mask, jumped.long(), -1)
        labels = jumped


def remove_specks(mask: torch.Tensor, min_area: int) -> torch.Tensor:
    """The (H, W) mask without its 8-connected components of fewer than min_area pixels."""
    if min_area <= 1 or not bool(mask.any()):
        return mask
    labels = label_components(mask, 8)
    area = torch.bincount(labels[mask], minlength=mask.numel())
    return mask & (area[labels.clamp(min=0)] >= min_area)


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """The (H, W) mask with every hole filled: the parts of its complement (4-connected) that do not reach the border."""
    if not bool(mask.any()):
        return mask
    labels = label_components(~mask, 4)
    border = torch.cat([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return mask | ((labels >= 0) & ~torch.isin(labels, border[border >= 0]))


def difference_mask(
    image: torch.Tensor, edited: torch.Tensor, *, threshold: float, grow: int, speck: float, fit: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (H, W) bool, colour map A (4, 3)): where EDITED differs from INPUT beyond `threshold` once the global
    colour change A is removed; specks under `speck` of the image dropped, holes filled, grown by `grow` pixels."""
    fit = fit_colors(image, edited, tolerance=threshold) if fit is None else fit
    mask = difference_map(image, edited, fit) > threshold
    mask = fill_holes(remove_specks(mask, int(round(speck * mask.numel()))))
    return dilate(mask[None], grow)[0], fit


def paste(image: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor, feather: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(INPUT with EDITED inside the (H, W) mask, every pixel EDITED touched): opacity ramps over `feather` pixels
    outside the mask; every pixel beyond keeps INPUT's value bit for bit."""
    alpha = feathered_alpha(mask[None], feather)  # (1, H, W)
    return composite(image[None], edited[None], alpha)[0], alpha[0] > 0
