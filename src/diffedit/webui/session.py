"""The web UI's server side, without gradio: the editor, and what it keeps between requests.

"Mask preview first": the mask pass runs once per (image, source, targets, seed, mask-pass options) and its rescaled
maps are stored unsmoothed (mask_smooth=0); threshold, smoothing and dilation are applied to the stored maps
(stages.masking.threshold_normalized), so moving a slider never runs the model. "Invert once, edit many": the
inversion is stored per (image, source, inversion options), so an edit that changes only the targets, the guidance
or other decoding options reuses it. Every edit says which of the two it reused.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from ..editor import DiffEditor
from ..flow.editor import FlowEditor
from ..images import DEFAULT_MAX_PIXELS, load_image
from ..results import EditOptions, EditResult, InversionResult, MaskResult
from ..stages import mask_images
from ..stages.inverting import guide_record
from ..stages.masking import threshold_normalized

__all__ = ["Session", "Preview", "Edits", "remask", "select_job", "image_key", "MASK_FIELDS", "INVERSION_FIELDS",
           "ALLOWED_FORMATS", "read_upload"]

# the options the mask pass's model calls depend on (everything after them is threshold_normalized's)
MASK_FIELDS = ("method", "num_inference_steps", "mask_noises", "mask_strength", "mask_reference", "mask_per_change",
               "mask_clamp", "mask_quantile", "mask_mean_ratio", "mask_per_image", "mask_batch_size", "max_pixels")
# the options the inversion depends on (with the image and the source prompt): the candidates' walks
INVERSION_FIELDS = ("method", "num_inference_steps", "strength", "extra_strengths", "noise_candidates",
                    "caption_candidate", "inversion", "inversion_prompt", "max_pixels")
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # what an upload may be, by its header
MAX_SEED = 2**31  # seeds the page draws stay exact in a browser's numbers

Phase = Callable[[str], None]


def read_upload(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An uploaded file as RGB: its type (by header) among ALLOWED_FORMATS and its size within max_pixels, checked
    before its pixels are decoded; otherwise a ValueError saying what is allowed."""
    try:
        with Image.open(path) as probe:
            kind = probe.format
    except Exception:
        kind = None
    if kind not in ALLOWED_FORMATS:
        found = f"a {kind} image" if kind else "not an image PIL can read"
        raise ValueError(f"unsupported image type: the upload is {found}; use {', '.join(ALLOWED_FORMATS)}")
    return load_image(path, max_pixels=max_pixels)


def image_key(image: Image.Image) -> str:
    """A fingerprint of an RGB image's pixels and size."""
    digest = hashlib.sha1(np.asarray(image.convert("RGB")).tobytes())
    digest.update(repr(image.size).encode())
    return digest.hexdigest()


def _fields(options: EditOptions, names: Sequence[str]) -> tuple:
    return tuple((name, getattr(options, name)) for name in names)


def remask(base: MaskResult, options: EditOptions, factor: int) -> MaskResult:
    """The masks of `base` (a mask pass of mask_smooth=0, whose soft maps are the rescaled maps themselves) with the
    threshold, decode threshold, smoothing and dilation of `options`, without the model: equal to a mask pass with
    those options. factor: the VAE's scale factor (the latent grid covers the input padded to its multiple)."""
    size = tuple(base.pixel.shape[-2:])
    padded = (base.soft.shape[-2] * factor, base.soft.shape[-1] * factor)
    soft, latent, pixel = threshold_normalized(base.soft, options, padded, size)
    binary, soft_images = mask_images(soft, pixel, padded, size)
    warnings = [f"target {j + 1}: the mask is empty at this threshold: lower it, or paint the area to edit"
                for j, (m, p) in enumerate(zip(latent, pixel)) if not (bool(m.any()) and bool(p.any()))]
    return MaskResult(soft, latent, pixel, binary, soft_images, base.seed, list(base.seeds),
                      [list(c) for c in base.changes], warnings)


def select_job(result: MaskResult, j: int) -> MaskResult:
    """The mask of job j alone, for an edit of that one target."""
    return replace(result, soft=result.soft[j : j + 1], mask=result.mask[j : j + 1], pixel=result.pixel[j : j + 1],
                   mask_images=[result.mask_images[j]], soft_images=[result.soft_images[j]],
                   changes=[list(result.changes[j])] if result.changes else [],
                   warnings=[w for w in result.warnings if w.startswith(f"target {j + 1}:")])


def _flow_note(decoder: str) -> str:
    """What a flow model's edit did instead of a stored inversion, for the page."""
    if decoder == "flowedit":
        return "inversion: none (a flow model's FlowEdit starts from the image)"
    return f"inversion: inside the {decoder} flow decoder, for each edit (not stored)"


class _Store:
    """A small least-recently-used store."""

    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def get(self, key):
        if key in self.items:
            self.items.move_to_end(key)
        return self.items.get(key)

    def put(self, key, value) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


@dataclass
class Preview:
    """The masks of every target at the current threshold options, and how they were obtained."""

    masks: MaskResult
    seed: int
    computed: bool  # True: the mask pass ran for this call; False: the stored maps were thresholded again
    seconds: float = 0.0


@dataclass
class Edits:
    """One edit per target (each reproducible on its own by `diffedit edit` with its sidecar's seed and options)."""

    results: list[EditResult]
    seed: int
    corrected: list[bool]  # per target: edited with a mask corrected by the brush
    notes: list[str] = field(default_factory=list)  # what was computed and what reused, for the page


class Session:
    """One editor shared by the page's requests, with the stored mask maps and inversions (a few images' worth)."""

    def __init__(self, editor: DiffEditor | FlowEditor, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, keep: int = 4):
        self.editor, self.max_pixels = editor, max_pixels
        self.maps, self.inversions = _Store(keep), _Store(keep)
        self.lock = threading.Lock()  # the stores are shared by the queue's workers
        self.counts = {"mask": 0, "invert": 0, "edit": 0}  # model calls, for the page's notes and the tests

    def options(self, **changes) -> EditOptions:
        return EditOptions(max_pixels=self.max_pixels).replace(**changes)

    def _map_key(self, image, source, targets, seed, options) -> tuple:
        return image_key(image), source, tuple(targets), seed, _fields(options, MASK_FIELDS)

    def preview(self, image: Image.Image, source: str, targets: Sequence[str], seed: int | None, options: EditOptions,
                *, compute: bool = True, phase: Phase | None = None) -> Preview | None:
        """The targets' masks with `options`' thresholds; the mask pass runs only when its maps are not stored (and
        `compute`; otherwise None). A seed of None draws one, which the page then shows."""
        seed = secrets.randbelow(MAX_SEED) if seed is None else int(seed)
        key = self._map_key(image, source, targets, seed, options)
        with self.lock:
            base = self.maps.get(key)
        computed, start = base is None, time.perf_counter()
        if base is None:
            if not compute:
                return None
            if phase:
                phase("computing the mask")
            base = self.editor.mask(image, source, list(targets), seed=seed, options=options, mask_smooth=0.0)
            self.counts["mask"] += 1
            with self.lock:
                self.maps.put(key, base)
        return Preview(remask(base, options, self.editor.vae_scale_factor), seed, computed, time.perf_counter() - start)

    def inversion(self, image: Image.Image, source: str, options: EditOptions, phase: Phase | None = None
                  ) -> tuple[InversionResult | None, bool]:
        """(The inversion of `image` for edits with these options, whether it was stored already); (None, False) for a
        flow model's editor, whose FlowEdit decodes from the image itself."""
        if not hasattr(self.editor, "invert"):
            return None, False
        key = (image_key(image), source, _fields(options, INVERSION_FIELDS), tuple(guide_record(options).items()))
        with self.lock:
            stored = self.inversions.get(key)
        if stored is not None:
            return stored, True
        if phase:
            phase("inverting the image")
        inversion = self.editor.invert(image, source, options=options)
        self.counts["invert"] += 1
        with self.lock:
            self.inversions.put(key, inversion)
        return inversion, False

    def edit(self, image: Image.Image, source: str, targets: Sequence[str], seed: int | None, options: EditOptions,
             corrections: dict[int, np.ndarray] | None = None, phase: Phase | None = None,
             decoder: str | None = None) -> Edits:
        """Edit `image` into each target with the stored (or computed) mask and inversion; `corrections` maps a
        target's index to its brushed mask (bool (H, W), True = edit), used instead of the computed one. decoder: a
        flow model's ("flowedit" or "inverted"; None: the editor's own); refused for any other model."""
        if decoder is not None and not isinstance(self.editor, FlowEditor):
            raise ValueError("a decoder choice applies to flow models only (SD3, FLUX, shapeworld-flow)")
        preview = self.preview(image, source, targets, seed, options, phase=phase)
        inversion, reused = self.inversion(image, source, options, phase)
        notes = [f"mask: computed ({preview.seconds:.1f} s)" if preview.computed
                 else "mask: reused the stored map (no model run)",
                 _flow_note(decoder or self.editor.decoder) if inversion is None
                 else "inversion: reused the stored inversion of this image" if reused
                 else "inversion: computed, stored for the next edits of this image"]
        given = ({} if inversion is None else {"inversion": inversion}) | ({} if decoder is None else {"decoder": decoder})
        corrections = corrections or {}
        results = []
        for j, target in enumerate(targets):
            if phase:
                phase(f"editing target {j + 1} of {len(targets)}: {target}")
            mask = corrections.get(j)
            mask = Image.fromarray(mask.astype(np.uint8) * 255, "L") if mask is not None else select_job(preview.masks, j)
            results.append(self.editor.edit(image, source, target, mask=mask, seed=preview.seed, options=options,
                                            **given))
            self.counts["edit"] += 1
        notes += [f"target {j + 1}: mask corrected with the brush" for j in sorted(corrections)]
        return Edits(results, preview.seed, [j in corrections for j in range(len(targets))], notes)
