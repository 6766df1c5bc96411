"""Metrics from pretrained encoders loaded from local folders: CLIP similarity (Hessel et al. 2021's CLIPScore, as
torchmetrics computes it) and PIE-Bench's structure distance (DINO ViT key self-similarity, Tumanyan et al. 2022).

Both read transformers folders (`save_pretrained`'s layout, e.g. a download of openai/clip-vit-large-patch14, PIE-
Bench's CLIP, or facebook/dino-vitb8, its DINO); nothing is downloaded. Images are uint8 arrays (H, W, 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ClipScorer", "StructureDistance", "key_self_similarity"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _folder(path: str | Path, what: str, example: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a {what} folder (no config.json): give a local transformers folder, "
                                f"e.g. a download of {example}")
    return path


class ClipScorer:
    """CLIP similarity of an image and a text: 100 * max(cos(image embedding, text embedding), 0) (torchmetrics'
    CLIPScore, PIE-Bench's CLIP columns), from a CLIPModel and CLIPProcessor folder."""

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        path = _folder(path, "CLIP model", "openai/clip-vit-large-patch14")
        try:
            self.processor = CLIPProcessor.from_pretrained(path)
            self.model = CLIPModel.from_pretrained(path).to(device).eval().requires_grad_(False)
        except OSError as e:
            raise FileNotFoundError(f"{path}: cannot load CLIP (model weights, tokenizer and preprocessor_config.json "
                                    f"are needed): {e}") from e
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, text: str, keep: np.ndarray | None = None) -> float:
        """The score of the image (multiplied by keep, bool (H, W), when given: the region CLIP sees) and the text."""
        arr = np.asarray(image)
        if keep is not None:
            arr = (arr * np.asarray(keep, dtype=bool)[..., None]).astype(np.uint8)
        inputs = self.processor(text=[text], images=[arr], return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_length)
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        image_embeds = F.normalize(out.image_embeds.float(), dim=-1)
        text_embeds = F.normalize(out.text_embeds.float(), dim=-1)
        return max(100.0 * float((image_embeds * text_embeds).sum(-1)[0]), 0.0)


def key_self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """(T, T) cosine similarities of a layer's keys (T, D), every token's against every token's (heads concatenated)."""
    norms = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.T) / (norms @ norms.T).clamp_min(1e-8)


class StructureDistance:
    """PIE-Bench's structure distance: the mean squared difference of the last ViT layer's key self-similarity
    matrices of two images (Splicing ViT features, Tumanyan et al. 2022), from a ViTModel folder (DINO ViT-B/8).

    As PIE-Bench's evaluation does, each image is resized to `size` on its shorter side (at most 480 on the longer),
    its 0-255 pixel values normalised with ImageNet's mean and standard deviation, so figures compare with its table."""

    def __init__(self, path: str | Path, *, size: int = 224, device: str | torch.device = "cpu"):
        from transformers import ViTModel

        path = _folder(path, "DINO ViT", "facebook/dino-vitb8")
        try:
            self.model = ViTModel.from_pretrained(path, add_pooling_layer=False).to(device).eval().requires_grad_(False)
        except OSError as e:
            raise FileNotFoundError(f"{path}: cannot load the DINO ViT: {e}") from e
        keys = [m for name, m in self.model.named_modules() if name.endswith(("k_proj", "attention.key"))]
        if not keys:
            raise ValueError(f"{path}: no key projection found in the ViT's attention layers")
        self.key_layer = keys[-1]  # the last layer's (DINO ViT-B/8: layer 11 of 0-11, as PIE-Bench takes)
        self.size, self.device = size, torch.device(device)

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W) in 0-255
        h, w = x.shape[-2:]
        short, long = min(h, w), max(h, w)
        scale = min(self.size / short, 480 / long)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def keys(self, image: np.ndarray) -> torch.Tensor:
        """(T, D) keys of the last layer for the image's tokens (class token first)."""
        captured: list[torch.Tensor] = []
        handle = self.key_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(pixel_values=self._pixels(image), interpolate_pos_encoding=True)
        finally:
            handle.remove()
        return captured[-1][0].float()

    def __call__(self, source: np.ndarray, edited: np.ndarray) -> float:
        """Structure distance of the edit from the source (0: the same self-similarity)."""
        a, b = key_self_similarity(self.keys(source)), key_self_similarity(self.keys(edited))
        if a.shape != b.shape:
            raise ValueError(f"image shapes differ: {np.shape(source)} vs {np.shape(edited)}")
        return float(((a - b) ** 2).mean())
