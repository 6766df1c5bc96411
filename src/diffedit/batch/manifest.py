"""A batch's jobs: a manifest (JSONL or CSV) or a folder of images read into jobs, with one error per bad row.

A row names an image (relative to the manifest's folder), a source prompt, a target prompt (in JSONL also a list:
several edits of one image), and optionally a seed, an id (the outputs' name) and options: an "options" object
(in CSV a JSON cell) and/or EditOptions fields as keys or columns. Every row is checked here, before any model
loads: a bad one (unreadable line, missing image, bad option, target equal to the source) becomes a `BadRow`
with its reason, and the others run. A job's `key` hashes everything that decides its output (model, image,
prompts, seed, options), so a finished job is recognised on the next run and a changed one is not.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..bounds import check_prompt_text
from ..results import EditOptions
from ..stages.batch import normalize_prompt
from ..stages.noise import MAX_SEED

__all__ = ["Job", "BadRow", "read_jobs", "image_files", "COLUMNS"]

COLUMNS = ("image", "source", "target", "seed", "id", "options")  # a row's own keys; EditOptions fields are options too
OPTION_NAMES = frozenset(f.name for f in fields(EditOptions))
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # an id is a plain file stem
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")  # what a folder batch reads


@dataclass(frozen=True)
class Job:
    """One edit of a batch: `image` from `source` to `target`, written as <output dir>/<id>.png and <id>.json."""

    row: int  # line of the manifest (CSV: its header is line 1), or 1 + the image's index in a folder
    image: str  # the image as the manifest names it
    path: str  # where it is read from (relative names resolved against the manifest's folder)
    source: str
    target: str
    seed: int  # seed of the image's noise streams (stages/noise.py)
    options: EditOptions  # the run's options with the row's own on top
    id: str  # output stem
    key: str  # sha1 of model, image, prompts, seed and options: a sidecar with this key means the job is done


@dataclass(frozen=True)
class BadRow:
    """A row that cannot run, and why (one line)."""

    row: int
    reason: str
    image: str = ""


def _options(row: dict, base: EditOptions) -> EditOptions:
    """The run's options with the row's "options" object and option-named keys on top (ValueError: which and why)."""
    extra = row.get("options") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError:
            raise ValueError(f"options is not a JSON object: {extra!r}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"options must be an object of EditOptions fields, got {extra!r}")
    extra = {**extra, **{k: v for k, v in row.items() if k in OPTION_NAMES}}
    return base.replace(**extra)


def _seed(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"seed must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**62), got {value!r}")
    return value


def _key(model: str | None, image: str, source: str, target: str, seed: int, options: EditOptions) -> str:
    spec = {"model": model or "embedded", "image": image, "source": source, "target": target, "seed": seed,
            "options": options.to_dict()}
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()


def _default_id(image: str, key: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image).stem).strip("._-")[:60] or "image"
    return f"{stem}-{key[:12]}"


def _row_jobs(row: Any, line: int, folder: Path, base: EditOptions, seed: int, model: str | None) -> list[Job]:
    """The jobs of one manifest row (several for a list of targets), or a ValueError with the reason."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object with image, source and target, got {type(row).__name__}")
    unknown = sorted(set(row) - set(COLUMNS) - OPTION_NAMES)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}: a row takes {', '.join(COLUMNS)} and EditOptions fields")
    image, source, targets = row.get("image"), row.get("source"), row.get("target")
    if not isinstance(image, str) or not image.strip():
        raise ValueError("image is missing: give the path of the input image")
    if source is None:
        raise ValueError("source is missing: say what the image shows now ('' for nothing)")
    check_prompt_text(source, "source")
    targets = targets if isinstance(targets, list) else [targets]
    if not targets or any(not isinstance(t, str) or not normalize_prompt(t) for t in targets):
        raise ValueError("target is missing or empty: say what the edited image should show")
    for t in targets:
        check_prompt_text(t, "target")
        if normalize_prompt(t) == normalize_prompt(source):
            raise ValueError(f"target {t!r} equals the source once case and spacing are ignored: nothing to edit")
    seed, options = _seed(row.get("seed"), seed), _options(row, base)
    given = row.get("id")
    if given is not None and (not isinstance(given, str) or not ID_PATTERN.fullmatch(given)):
        raise ValueError(f"id must be a plain file name (letters, digits, '.', '_', '-'; at most 200), got {given!r}")
    path = Path(image) if Path(image).is_absolute() else folder / image
    if not path.is_file():
        raise ValueError(f"image not found: {path}")
    jobs = []
    for i, t in enumerate(targets):
        key = _key(model, image, source, t, seed, options)
        name = _default_id(image, key) if given is None else given if len(targets) == 1 else f"{given}_{i + 1}"
        jobs.append(Job(line, image, str(path), source, t, seed, options, name, key))
    return jobs


def _jsonl_rows(path: Path):
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                yield line, json.loads(text)
            except ValueError as e:
                yield line, ValueError(f"not a JSON object ({e})")


def _csv_rows(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        unknown = [c for c in header if c not in COLUMNS and c not in OPTION_NAMES]
        if unknown or not {"image", "source", "target"} <= set(header):
            raise ValueError(f"{path}: CSV columns must include image, source, target (also seed, id, options and "
                             f"EditOptions fields); got {header}")
        for row in reader:
            line = reader.line_num
            if None in row:
                yield line, ValueError("more cells than columns")
                continue
            yield line, {k: _cell(k, v) for k, v in row.items() if v is not None and (v != "" or k in ("source",))}


def _cell(name: str, text: str) -> Any:
    """A CSV cell: option columns read as JSON when they parse (0.5, true, [0.9, 1.0]), else as text."""
    if name in OPTION_NAMES:
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def image_files(folder: Path) -> list[Path]:
    """The images of a folder batch: files with an image suffix, not hidden, sorted by name (not recursive)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def read_jobs(
    manifest: Path, *, options: EditOptions | None = None, seed: int = 0, model: str | None = None,
    source: str | None = None, targets: list[str] | None = None,
) -> tuple[list[Job], list[BadRow]]:
    """(jobs, bad rows) of a .jsonl / .csv manifest, or of a folder of images edited from `source` to each of
    `targets`. `options` are the run's (each row may change them), `seed` the seed of rows without one.
    ValueError when the manifest itself cannot be read (missing, unknown format, a CSV header without the columns)."""
    base = options or EditOptions()
    if manifest.is_dir():
        if source is None or not targets:
            raise ValueError(f"{manifest} is a folder: give --source and --target for its images")
        images = image_files(manifest)
        rows = [(i + 1, {"image": p.name, "source": source, "target": list(targets)}) for i, p in enumerate(images)]
        folder = manifest
    elif not manifest.is_file():
        raise ValueError(f"manifest not found: {manifest}")
    else:
        if source is not None or targets:
            raise ValueError("--source and --target are for a folder of images; a manifest names its own prompts")
        suffix = manifest.suffix.lower()
        if suffix not in (".jsonl", ".json", ".ndjson", ".csv"):
            raise ValueError(f"{manifest}: a manifest is .jsonl (one JSON object a line) or .csv")
        rows = list(_csv_rows(manifest) if suffix == ".csv" else _jsonl_rows(manifest))
        folder = manifest.parent
    jobs, bad = [], []
    for line, row in rows:
        try:
            if isinstance(row, Exception):
                raise row
            jobs += _row_jobs(row, line, folder, base, seed, model)
        except (ValueError, OSError) as e:
            image = row.get("image") if isinstance(row, dict) and isinstance(row.get("image"), str) else ""
            bad.append(BadRow(line, str(e), image))
    return jobs, bad
