"""Metrics of real-image benchmarks (PIE-Bench, Ju et al. 2024; StyleDiffusion, Li et al. 2023): pixel metrics outside
the edit mask, and LPIPS (Zhang et al. 2018) with its networks loaded from a local folder.

PIE-Bench scores the unedited part by multiplying both images by the background mask (1 outside the edit) and
comparing the whole images: the zeroed edit region counts in every mean. That is what `keep=` does here, and why these
figures differ from `diffedit.metrics.psnr(mask=...)`, which averages over the selected pixels only.

Images are uint8 arrays (H, W, 3); masks are bool (H, W). LPIPS needs no torchvision: its three backbones are rebuilt
here with torchvision's layer names, so torchvision's ImageNet checkpoints and the `lpips` package's linear heads load
into them as they are (`load_lpips`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LPIPS", "LPIPS_NETS", "lpips_from_features", "load_lpips", "lpips_distance", "ns_lpips", "masked_unit", "mse",
    "psnr", "ssim",
]


# ---------------------------------------------------------------- pixel metrics, PIE-Bench's way


def masked_unit(image: np.ndarray, keep: np.ndarray | None = None) -> torch.Tensor:
    """(1, 3, H, W) float64 in [0, 1]: a uint8 image (H, W, 3), multiplied by `keep` (bool (H, W)) when given."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(arr.astype(np.float64) / 255.0).permute(2, 0, 1)[None]
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != arr.shape[:2]:
            raise ValueError(f"mask shape {keep.shape} does not match image shape {arr.shape[:2]}")
        x = x * torch.from_numpy(keep)[None, None]
    return x


def _pair(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"image shapes differ: {np.shape(a)} vs {np.shape(b)}")
    return masked_unit(a, keep), masked_unit(b, keep)


def mse(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Mean squared error in [0, 1] units over every pixel and channel of a * keep against b * keep."""
    x, y = _pair(a, b, keep)
    return float(((x - y) ** 2).mean())


def psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    """10 log10(1 / mse) in dB (data range 1), of the images multiplied by keep; inf when they are equal."""
    error = mse(a, b, keep)
    return math.inf if error == 0.0 else 10.0 * math.log10(1.0 / error)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """(size, size) normalised Gaussian, the outer product of a 1-D one centred on the middle tap."""
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None, *, window: int = 11, sigma: float = 1.5) -> float:
    """SSIM (Wang et al. 2004, eq. 13) with a Gaussian window, averaged over the windows inside the image and the
    channels (torchmetrics' default: K1 = 0.01, K2 = 0.03, data range 1), of the images multiplied by keep."""
    x, y = _pair(a, b, keep)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window} x {window} pixels, got {tuple(x.shape[-2:])}")
    c1, c2 = 0.01**2, 0.03**2
    w = _gaussian_window(window, sigma).expand(3, 1, window, window)
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), w, groups=3)  # (5, 3, H', W'): the windows' means
    mu_x, mu_y, xx, yy, xy = stats
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


# ---------------------------------------------------------------- LPIPS


class _Fire(nn.Module):
    """SqueezeNet's fire module (Iandola et al. 2016): a 1x1 squeeze, then 1x1 and 3x3 expansions side by side."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


def _alexnet() -> nn.Sequential:
    conv = nn.Conv2d
    return nn.Sequential(
        conv(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2), conv(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2), conv(192, 384, 3, padding=1), nn.ReLU(), conv(384, 256, 3, padding=1), nn.ReLU(),
        conv(256, 256, 3, padding=1), nn.ReLU(),
    )


def _vgg16() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers)


def _squeezenet1_1() -> nn.Sequential:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(), pool(), _Fire(64, 16, 64, 64), _Fire(128, 16, 64, 64), pool(),
        _Fire(128, 32, 128, 128), _Fire(256, 32, 128, 128), pool(), _Fire(256, 48, 192, 192), _Fire(384, 48, 192, 192),
        _Fire(384, 64, 256, 256), _Fire(512, 64, 256, 256),
    )


# name -> (torchvision's architecture, its builder, the feature indices where LPIPS taps a layer, their widths)
LPIPS_NETS = {
    "alex": ("alexnet", _alexnet, (2, 5, 8, 10, 12), (64, 192, 384, 256, 256)),
    "vgg": ("vgg16", _vgg16, (4, 9, 16, 23, 30), (64, 128, 256, 512, 512)),
    "squeeze": ("squeezenet1_1", _squeezenet1_1, (2, 5, 8, 10, 11, 12, 13), (64, 128, 256, 384, 384, 512, 512)),
}
_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' input scaling layer: (x - shift) / scale, x in [-1, 1]
_SCALE = (0.458, 0.448, 0.450)


def lpips_from_features(feats0: list[torch.Tensor], feats1: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS (Zhang et al. 2018, eq. 1) from two feature stacks: per layer l, the features (B, C_l, H_l, W_l) unit-
    normalised along channels, their squared difference weighted by w_l (C_l,), summed over channels and averaged over
    positions; summed over layers. Returns (B,)."""
    total = 0.0
    for f0, f1, w in zip(feats0, feats1, weights, strict=True):
        n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + ((n0 - n1) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    return total


class LPIPS(nn.Module):
    """LPIPS v0.1: a torchvision backbone tapped after its ReLU blocks, and one non-negative linear head per tap."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
        _, build, self.taps, widths = LPIPS_NETS[net]
        self.net = net
        self.features = build()
        self.heads = nn.ParameterList([nn.Parameter(torch.zeros(c)) for c in widths])  # (C_l,) each
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def tapped(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's features at every tap, for images (B, 3, H, W) in [-1, 1]."""
        x, out, start = (x - self.shift) / self.scale, [], 0
        for end in self.taps:
            x = self.features[start:end](x)
            out.append(x)
            start = end
        return out

    @torch.no_grad()
    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """(B,) distances of images (B, 3, H, W) in [-1, 1]."""
        return lpips_from_features(self.tapped(x0), self.tapped(x1), list(self.heads))


def load_lpips(folder: str | Path, net: str | None = None, *, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS from a local folder holding the linear heads as the `lpips` package ships them (`lpips/weights/v0.1/
    {alex,vgg,squeeze}.pth`, also in torchmetrics) and torchvision's ImageNet checkpoint of the backbone as torch hub
    caches it (`alexnet-*.pth`, `vgg16-*.pth`, `squeezenet1_1-*.pth`). net: which one (default: squeeze, PIE-Bench's,
    else alex, else vgg, whichever heads the folder has)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"LPIPS folder {folder} does not exist")
    names = [net] if net is not None else [n for n in ("squeeze", "alex", "vgg") if (folder / f"{n}.pth").is_file()]
    if not names or not (folder / f"{names[0]}.pth").is_file():
        wanted = f"{net}.pth" if net else "squeeze.pth, alex.pth or vgg.pth"
        raise FileNotFoundError(f"{folder} has no LPIPS linear heads ({wanted}): copy them from the lpips package's "
                                "weights/v0.1/ folder (or torchmetrics' functional/image/lpips_models/)")
    model = LPIPS(names[0])
    arch = LPIPS_NETS[model.net][0]
    backbones = sorted(folder.glob(f"{arch}*.pth"))
    if not backbones:
        raise FileNotFoundError(f"{folder} has no {arch} backbone ({arch}-*.pth): copy torchvision's ImageNet "
                                f"checkpoint from ~/.cache/torch/hub/checkpoints/ (torchvision.models.{arch}(weights="
                                "'IMAGENET1K_V1') downloads it)")
    state = torch.load(backbones[0], map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    model.features.load_state_dict(features)
    heads = torch.load(folder / f"{model.net}.pth", map_location="cpu", weights_only=True)
    for i, head in enumerate(model.heads):
        weight = [v for k, v in heads.items() if k.startswith(f"lin{i}.") and k.endswith("weight")]
        if len(weight) != 1 or weight[0].numel() != head.numel():
            raise ValueError(f"{folder / (model.net + '.pth')} is not LPIPS' {model.net} heads: lin{i} is missing or "
                             f"not {head.numel()} wide")
        head.data.copy_(weight[0].flatten())
    return model.to(device)


def _tensor(image: np.ndarray, keep: np.ndarray | None, device) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] on the network's device."""
    return masked_unit(image, keep).float().to(device)


def lpips_distance(model: LPIPS, a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    """LPIPS between two uint8 images multiplied by keep, mapped to [-1, 1] (PIE-Bench's `lpips_unedit_part`)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"image shapes differ: {np.shape(a)} vs {np.shape(b)}")
    device = model.shift.device
    return float(model(_tensor(a, keep, device) * 2 - 1, _tensor(b, keep, device) * 2 - 1)[0])


def ns_lpips(model: LPIPS, source: np.ndarray, edited: np.ndarray, selected: np.ndarray, *, size: int = 256) -> float:
    """NS-LPIPS (StyleDiffusion, Li et al. 2023): LPIPS on the non-selected region, both images multiplied by the soft
    map 1 - selected (selected: float (H, W) in [0, 1], the edited word's normalised cross-attention), at size x size.

    As StyleDiffusion's eval_metrics/ns_lpips.py does, the images are resized bilinearly and their [0, 1] pixel
    values go into the network as they are (its LPIPS expects [-1, 1]); its published figures use AlexNet."""
    from PIL import Image

    if np.shape(source) != np.shape(edited):
        raise ValueError(f"image shapes differ: {np.shape(source)} vs {np.shape(edited)}")
    selected = np.asarray(selected, dtype=np.float32)
    if selected.shape != np.shape(source)[:2] or selected.min() < 0 or selected.max() > 1:
        raise ValueError("selected must be a float (H, W) map in [0, 1] of the images' size")
    small = lambda im: np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))  # noqa: E731
    background = np.asarray(Image.fromarray(1.0 - selected).resize((size, size), Image.BILINEAR))  # mode F
    device = model.shift.device
    weight = torch.from_numpy(background.astype(np.float32)).clamp(0, 1)[None, None].to(device)
    x0 = _tensor(small(np.asarray(source)), None, device) * weight
    x1 = _tensor(small(np.asarray(edited)), None, device) * weight
    return float(model(x0, x1)[0])
