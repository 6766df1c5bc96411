"""Reading any image safely, converting between PIL and tensors, padding to the VAE grid, saving atomically."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import atomic_write, image_format

__all__ = [
    "ImageInput",
    "DEFAULT_MAX_PIXELS",
    "load_image",
    "load_mask",
    "pil_to_tensor",
    "tensor_to_pil",
    "to_uint8",
    "from_uint8",
    "pad_to_multiple",
    "save_image",
    "save_json",
    "mask_overlay",
    "make_panel",
]

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

# 4 megapixels: a 2048 x 2048 edit already needs ~10 GB of activations in an SD 1.5 UNet at batch 2.
DEFAULT_MAX_PIXELS = 2048 * 2048
MIN_SIDE = 16  # below this the VAE's 8x downsampling leaves a latent of one or two cells
T = Image.Transpose
TRANSPOSES = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270,
              7: T.TRANSVERSE, 8: T.ROTATE_90}  # EXIF orientation -> the transpose that shows it upright (as ImageOps)


def _check_size(w: int, h: int, max_pixels: int | None, what: str = "image") -> None:
    if min(w, h) < MIN_SIDE:
        raise ValueError(f"{what} is {w}x{h}; both sides must be at least {MIN_SIDE} pixels")
    if max_pixels is not None and w * h > max_pixels:
        raise ValueError(
            f"{what} is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}; "
            "resize it first or raise max_pixels (--max-pixels)"
        )


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise ValueError("array image holds NaN or infinite values")
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            raise ValueError(f"array images must be uint8 or float in [0, 1], got {arr.dtype}")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"array images must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"array image is empty: shape {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr))


def _open(source: ImageInput, max_pixels: int | None = None, expect: tuple[int, int] | None = None) -> Image.Image:
    """A PIL image from a path, array or PIL image. A file's size is checked from its header, before any pixel is
    decoded (a small file may claim billions of pixels); anything PIL fails on is a ValueError naming the file."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"an image must be a path, a PIL image or an array, got {type(source).__name__}")
    path = Path(source)
    try:
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        if path.is_dir():
            raise ValueError(f"expected an image file, got a directory: {path}")
    except OSError as e:  # a name too long, a loop of links
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"cannot open {path}: {e.strerror or e}") from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image = Image.open(path)
        _read_ycbcr_tiff_as_stored(image)
    except Image.DecompressionBombError as e:
        raise ValueError(f"cannot read {path}: its header claims a huge image ({e})") from e
    except UnidentifiedImageError as e:
        raise ValueError(f"cannot read {path} as an image (not a format PIL knows)") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, struct.error, EOFError ... on corrupt headers
        raise ValueError(f"cannot read {path} as an image: {type(e).__name__}: {e}") from e
    _check_size(*image.size, max_pixels, f"{path} (by its header)")  # before decoding a single pixel
    if expect is not None and tuple(image.size) not in (tuple(expect), tuple(expect)[::-1]):  # EXIF may turn it
        raise ValueError(f"mask is {image.size[0]}x{image.size[1]} but the image is {expect[0]}x{expect[1]}")
    orientation = _take_orientation(image)  # before the pixels: PIL's TIFF loader applies it to some modes only
    try:
        image.load()
        if orientation in TRANSPOSES:
            image = image.transpose(TRANSPOSES[orientation])
            image.info.pop("exif", None)  # applied: nothing left for exif_transpose to apply again
    except Exception as e:  # truncated or corrupt pixel data
        raise ValueError(f"cannot read {path} as an image: {type(e).__name__}: {e}") from e
    return image


def _read_ycbcr_tiff_as_stored(image: Image.Image) -> None:
    """An uncompressed YCbCr TIFF (what PIL writes for a YCbCr image) read as YCbCr. PIL before 13 opens one as RGB
    with 4 bytes a pixel and fails on its pixels ("image file is truncated"); PIL 13 reads it as YCbCr, as here."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or tags.get(0x0106) != 6 or image.mode != "RGB" or not image.tile:  # photometric: YCbCr
        return
    if all(t.codec_name == "raw" and t.args[0] == "RGBX" for t in image.tile):  # 3 samples a pixel, unpacked as 4
        image.tile = [t._replace(args=("YCbCr", *t.args[1:])) for t in image.tile]
        image._mode = "YCbCr"


def _take_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened file, taken out of it, so that we apply it once for every format and mode."""
    try:
        exif = image.getexif()
        orientation = int(exif.get(0x0112, 1))
        if 0x0112 in exif:
            del exif[0x0112]
        tags = getattr(image, "tag_v2", None)  # TIFF: its loader turns some modes only, and garbles others (PIL 13)
        if tags is not None and 0x0112 in tags:
            del tags[0x0112]
            if orientation in (5, 6, 7, 8) and image.tile:  # the size it reports is already turned: as stored
                image._size = (max(t.extents[2] for t in image.tile), max(t.extents[3] for t in image.tile))
        return orientation
    except Exception:  # corrupt EXIF: as stored
        return 1


def _to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited over `background`."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray((np.clip(arr / peak, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")
    elif image.mode == "F":
        arr = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        image = Image.fromarray((np.clip(arr, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")
    if image.mode == "La":  # premultiplied: PIL converts it only to LA
        image = image.convert("LA")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _oriented(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; a corrupt EXIF block is ignored (the pixels are kept as stored)."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # PIL raises assorted errors on malformed EXIF
        return image


def load_image(source: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read a path, PIL image or array as 8-bit RGB, EXIF orientation applied, within the size limit."""
    image = _open(source, max_pixels)
    _check_size(*image.size, max_pixels)
    image = _oriented(image)
    try:
        image = _to_rgb(image)
    except Exception as e:  # a mode PIL cannot convert
        raise ValueError(f"cannot convert a {image.mode} image to RGB: {e}") from e
    return image


def load_mask(source: ImageInput, size: tuple[int, int]) -> np.ndarray:
    """Read a user mask (white = edit) as a bool array of the image's `size` (W, H); any mode is accepted."""
    image = _oriented(_open(source, expect=tuple(size)))
    if image.size != tuple(size):
        raise ValueError(f"mask is {image.size[0]}x{image.size[1]} but the image is {size[0]}x{size[1]}")
    try:
        if image.mode in ("RGBA", "LA"):  # a transparent-background mask: use opacity and lightness together
            gray = np.asarray(image.convert("L"), dtype=np.float32) * (np.asarray(image.getchannel("A")) / 255.0)
        else:
            gray = np.asarray(_to_rgb(image).convert("L"), dtype=np.float32)
    except Exception as e:  # a mode PIL cannot convert
        raise ValueError(f"cannot read a {image.mode} mask: {e}") from e
    return gray >= 127.5


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixel values in [-1, 1] (any shape, any float dtype) -> uint8 in [0, 255], rounded to nearest, clamped."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32 in [-1, 1]; the inverse of `to_uint8` on its outputs."""
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
        x = torch.from_numpy(x if x.flags.writeable else x.copy())  # torch warns on read-only arrays (PIL's)
    return x.float() / 127.5 - 1.0


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> (B, 3, H, W) float32 in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # (B, H, W, 3)
    return from_uint8(arr).permute(0, 3, 1, 2)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB PIL images (rounded to nearest)."""
    return [Image.fromarray(a) for a in to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()]


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right by reflection so H and W are multiples of `multiple`."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return images
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(images, (0, pw, 0, ph), mode=mode)


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save atomically (a half-written file never replaces a good one); format from the suffix."""
    path = Path(path)
    fmt = image_format(path, "L" if image.mode in ("L", "1") else "RGB", image.size)
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def save_json(data: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically."""
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")

    return atomic_write(path, write)


def mask_overlay(image: Image.Image, mask: Image.Image, color=(255, 0, 0), opacity: float = 0.45) -> Image.Image:
    """The image with the mask's area tinted, for showing what an edit touched."""
    m = (np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[..., None] * opacity
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = np.array(color, dtype=np.float32)
    return Image.fromarray((base * (1 - m) + tint * m + 0.5).astype(np.uint8))


def make_panel(rows: list[list[Image.Image]], gap: int = 4) -> Image.Image:
    """Grid of same-size images (rows x columns) on a white canvas."""
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    panel = Image.new("RGB", (cols * w + (cols - 1) * gap, len(rows) * h + (len(rows) - 1) * gap), "white")
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            panel.paste(im.convert("RGB").resize((w, h), Image.NEAREST), (j * (w + gap), i * (h + gap)))
    return panel
