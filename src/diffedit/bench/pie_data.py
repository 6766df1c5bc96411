"""PIE-Bench's data (Ju et al., "PnP Inversion", ICLR 2024): `mapping_file.json` and `annotation_images/`.

Each entry of the mapping file (keyed by an id such as "000000000000") names an image under annotation_images/, an
`original_prompt` and an `editing_prompt` whose edited words are in brackets ("a [cat] sitting" -> "a [dog] sitting"),
an `editing_instruction`, an `editing_type_id` ("0" random, "1" change object, ..., "9" change style), a `blended_word`
("cat dog": the source and target word, or "" when there is none) and the edit region as a `mask`: run-length
encoded, a flat list [start, length, start, length, ...] of the runs of 1s in the row-major image (512 x 512).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PieEntry", "decode_rle", "encode_rle", "split_prompt", "load_pie"]

EDITING_TYPES = {
    "0": "random", "1": "change object", "2": "add object", "3": "delete object", "4": "change content",
    "5": "change pose", "6": "change color", "7": "change material", "8": "change background", "9": "change style",
}


def decode_rle(runs: list[int], shape: tuple[int, int], *, border: bool = True) -> np.ndarray:
    """bool (H, W) mask of PIE-Bench's run-length encoding; a run past the end is cut there, as PIE-Bench's decoder
    does. border: mark the outermost pixels as edited too, as PIE-Bench's evaluation does "to avoid annotation errors
    in boundary"."""
    runs = [int(r) for r in runs]
    if len(runs) % 2 or any(r < 0 for r in runs):
        raise ValueError("a PIE-Bench mask is an even-length list of non-negative [start, length, ...] pairs")
    h, w = shape
    flat = np.zeros(h * w, dtype=bool)
    for start, length in zip(runs[::2], runs[1::2]):
        flat[start : min(start + length, h * w)] = True
    mask = flat.reshape(h, w)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def encode_rle(mask: np.ndarray) -> list[int]:
    """PIE-Bench's run-length encoding of a bool (H, W) mask: [start, length, ...] of its runs of True, row-major."""
    flat = np.concatenate([[False], np.asarray(mask, dtype=bool).ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # run starts and ends alternate
    starts, ends = edges[::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


_BRACKETED = re.compile(r"\[([^\[\]]*)\]")


def split_prompt(prompt: str) -> tuple[str, tuple[str, ...]]:
    """("a cat sitting", ("cat",)) from "a [cat] sitting": the prompt without its brackets, and the bracketed words."""
    words = tuple(w.strip() for w in _BRACKETED.findall(prompt))
    return prompt.replace("[", "").replace("]", ""), words


@dataclass(frozen=True)
class PieEntry:
    """One PIE-Bench edit: the image, the two prompts without brackets and their bracketed words, and the mask's runs."""

    key: str  # the id in mapping_file.json
    image_path: Path  # under annotation_images/
    source: str  # original_prompt without brackets
    target: str  # editing_prompt without brackets
    source_words: tuple[str, ...]  # the bracketed words of original_prompt
    target_words: tuple[str, ...]  # the bracketed words of editing_prompt
    instruction: str  # editing_instruction
    editing_type: str  # editing_type_id, "0".."9" (EDITING_TYPES)
    blended_words: tuple[str, ...]  # blended_word split: (source word, target word), or () when there is none
    runs: tuple[int, ...]  # the mask's run-length encoding

    def image(self) -> np.ndarray:
        """The image as uint8 (H, W, 3)."""
        from PIL import Image

        with Image.open(self.image_path) as im:
            return np.asarray(im.convert("RGB"))

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The edit region, bool (H, W) (True: edited), border included as PIE-Bench evaluates it."""
        return decode_rle(list(self.runs), shape)


def _entry(key: str, item: dict, images: Path) -> PieEntry:
    missing = [f for f in ("image_path", "original_prompt", "editing_prompt", "mask") if f not in item]
    if missing:
        raise ValueError(f"mapping_file.json entry {key} lacks {', '.join(missing)}")
    source, source_words = split_prompt(item["original_prompt"])
    target, target_words = split_prompt(item["editing_prompt"])
    blended = str(item.get("blended_word", "") or "")
    return PieEntry(
        key=str(key), image_path=images / item["image_path"], source=source, target=target, source_words=source_words,
        target_words=target_words, instruction=str(item.get("editing_instruction", "")),
        editing_type=str(item.get("editing_type_id", "")), blended_words=tuple(blended.split()),
        runs=tuple(int(r) for r in item["mask"]),
    )


def load_pie(data: str | Path, *, limit: int | None = None, types: list[str] | None = None) -> list[PieEntry]:
    """The entries of PIE-Bench's data folder (mapping_file.json and annotation_images/), in the file's order; types:
    keep these editing_type_id values only; limit: the first n kept. Every kept entry's image must exist."""
    data = Path(data)
    mapping = data / "mapping_file.json"
    if not mapping.is_file():
        raise FileNotFoundError(f"{data} has no mapping_file.json: --data is PIE-Bench's data folder "
                                "(mapping_file.json and annotation_images/)")
    items = json.loads(mapping.read_text())
    if not isinstance(items, dict):
        raise ValueError(f"{mapping} must map ids to entries")
    entries = [_entry(k, v, data / "annotation_images") for k, v in items.items()]
    if types is not None:
        unknown = sorted(set(types) - set(EDITING_TYPES))
        if unknown:
            raise ValueError(f"unknown editing types {unknown}: PIE-Bench's are 0-9")
        entries = [e for e in entries if e.editing_type in types]
    entries = entries[:limit] if limit is not None else entries
    absent = [str(e.image_path) for e in entries if not e.image_path.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) of the mapping file are missing, e.g. {absent[0]}")
    return entries
