"""What the page shows and hands out, without gradio: mask overlays, the brush's corrections, ShapeWorld examples,
the candidates' table, and the download (each edit's image with its JSON sidecar, as `diffedit edit` writes it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import write_files
from ..images import mask_overlay
from ..masks import upsample_mask
from ..results import MaskResult
from .session import Edits

__all__ = ["ADD_COLOR", "REMOVE_COLOR", "overlay", "corrections", "shapeworld_examples", "candidate_rows", "save_download",
           "for_display"]

ADD_COLOR, REMOVE_COLOR = "#ff2d55", "#2d7dff"  # the brush: paint the first to add to the mask, the second to remove
MASK_TINT, DECODE_LINE = (255, 45, 85), (255, 214, 10)


def _outline(region: np.ndarray) -> np.ndarray:
    """The pixels of a bool (H, W) region that touch a pixel outside it."""
    padded = np.pad(region, 1, mode="constant")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~inner


def overlay(image: Image.Image, masks: MaskResult, j: int, factor: int) -> np.ndarray:
    """The input with target j's mask tinted (the pixels the composite replaces) and the latent cells decoding paints
    in outlined (what dilation grows), as (H, W, 3) uint8; factor: the VAE's scale factor."""
    tinted = np.asarray(mask_overlay(image, masks.mask_images[j], color=MASK_TINT, opacity=0.55)).copy()
    h, w = tinted.shape[:2]
    cells = masks.mask[j : j + 1]
    region = (upsample_mask(cells, (cells.shape[-2] * factor, cells.shape[-1] * factor)) > 0.5)[0, :h, :w].numpy()
    tinted[_outline(region)] = DECODE_LINE
    return tinted


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)


def corrections(layers: list | None, computed: np.ndarray) -> np.ndarray | None:
    """The mask after the brush: `computed` (bool (H, W)) with the strokes of ADD_COLOR added and those of
    REMOVE_COLOR taken out (each painted pixel goes to the nearer colour); None when nothing is painted.
    layers: the editor's RGBA layers (H, W, 4), resized to the mask's size when the page sent another."""
    painted_any, out = False, computed.copy()
    add, remove = _rgb(ADD_COLOR), _rgb(REMOVE_COLOR)
    for layer in layers or []:
        if layer is None:
            continue
        arr = np.asarray(layer)
        if arr.ndim != 3 or arr.shape[2] != 4:
            continue
        if arr.shape[:2] != computed.shape:
            arr = np.asarray(Image.fromarray(arr.astype(np.uint8), "RGBA").resize(computed.shape[::-1], Image.NEAREST))
        painted = arr[..., 3] > 0
        if not painted.any():
            continue
        painted_any = True
        rgb = arr[..., :3].astype(np.float32)
        to_add = np.linalg.norm(rgb - add, axis=-1) <= np.linalg.norm(rgb - remove, axis=-1)
        out[painted & to_add] = True
        out[painted & ~to_add] = False
    return out if painted_any else None


# (seed, kind, objects) of the scenes offered as examples: a colour, a shape and a both edit, one and two objects
EXAMPLES = ((0, "color", 1), (3, "shape", 1), (5, "color", 2), (8, "both", 2))


def shapeworld_examples(folder: Path) -> list[list[str]]:
    """[image path, source prompt, target prompt] of a few ShapeWorld edits, drawn into `folder` (the embedded model
    knows these scenes: the page works offline)."""
    from ..shapeworld.world import sample_edit

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed, kind, objects in EXAMPLES:
        case = sample_edit(np.random.default_rng(seed), kind=kind, num_objects=objects)
        path = folder / f"shapeworld_{kind}_{seed}.png"
        if not path.exists():
            Image.fromarray(case.source_image).save(path)
        rows.append([str(path), case.source, case.target])
    return rows


DISPLAY_SIDE = 384


def for_display(image: Image.Image) -> Image.Image:
    """A small image scaled up by a whole factor (nearest neighbour) to about DISPLAY_SIDE pixels a side, so the page
    shows its pixels sharp instead of blurred by the browser; larger images as they are."""
    k = DISPLAY_SIDE // max(image.size)
    return image.resize((image.width * k, image.height * k), Image.NEAREST) if k >= 2 else image


def candidate_rows(edits: Edits) -> list[list]:
    """One row per (target, candidate): the target's number, the candidate's label, its score, and whether it was
    kept."""
    rows = []
    for t, result in enumerate(edits.results):
        kept = result.chosen[0] if result.chosen else 0
        scores = result.candidate_scores[0] if result.candidate_scores else [None] * len(result.candidates)
        for c, (label, score) in enumerate(zip(result.candidates, scores)):
            rows.append([t + 1, label, "" if score is None else round(float(score), 4), "kept" if c == kept else ""])
    return rows


def _png(image: Image.Image):
    return lambda tmp: image.save(tmp, format="PNG")


def _json(record: dict):
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2, default=str)
            f.write("\n")

    return write


def save_download(folder: Path, stem: str, edits: Edits, input_name: str) -> list[str]:
    """Each edit's image and its JSON sidecar (the record `diffedit edit` writes: input, outputs, seed, options, the
    candidates and their scores, ...) in `folder`: <stem>_edited[_k].png and .json. Returns the paths, images first."""
    n, files, paths = len(edits.results), [], []
    for j, result in enumerate(edits.results):
        name = f"{stem}_edited" + (f"_{j + 1}" if n > 1 else "")
        image_path, sidecar = folder / f"{name}.png", folder / f"{name}.json"
        record = {"input": input_name, "outputs": [image_path.name], **result.to_dict()}
        if edits.corrected[j]:
            record["user_mask"] = "corrected with the web UI's brush"
        files += [(image_path, _png(result.images[0])), (sidecar, _json(record))]
        paths += [str(image_path), str(sidecar)]
    write_files(files)
    return paths[0::2] + paths[1::2]
