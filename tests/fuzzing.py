"""Strategies of the fuzz suite (tests/test_fuzz.py): image bytes, PIL images of every mode, prompts, option
values at and beyond their bounds, output paths of every kind, broken models.

A CLI input is assembled from `Piece`s, each knowing what it should make the command do: OK (run: reach the
model), BAD (exit 2, one line) or NOTHING (exit 3, nothing to edit). The command's expected exit is the worst
piece's: any BAD gives 2, else any NOTHING gives 3, else it must reach the model.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image, TiffImagePlugin

from diffedit.bounds import BOUNDS, MAX_PROMPT_CHARS

OK, BAD, NOTHING = 0, 2, 3
MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La",
         "I;16", "I;16B", "I;16L", "I;16N"]
SAVE_AS = {  # formats that store a mode as it is
    "PNG": {"1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I;16B"},
    "TIFF": {"1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "F", "LA", "PA", "RGBX", "I;16", "I;16B", "I;16L"}
    & set(TiffImagePlugin.SAVE_INFO),  # PIL 11 writes no I;16L TIFF
    "JPEG": {"L", "RGB", "CMYK", "YCbCr"},
    "WEBP": {"RGB", "RGBA"},
    "BMP": {"1", "L", "P", "RGB"},
    "GIF": {"L", "P"},
}
EXIF_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")  # the formats `encode` writes an EXIF orientation into
WORDS = ["a", "cat", "dog", "red", "blue", "circle", "square", "on", "photo", "of", "the", "bowl"]
ODD_TEXT = ["café", "猫", "🐶", "\t", "\x07", "\u200b", "Ⅻ", "ß", "\r\n", "naïve", "\x1b[31m", "🏳️‍🌈", "\u202e"]


@dataclass
class Piece:
    """Part of a command line: its arguments ("{d}" is the example's folder), files it needs, what it should cause."""

    args: list[str]
    verdict: int = OK
    setup: Callable[[Path], None] | None = None
    size: tuple[int, int] | None = None  # an input image's (W, H), when known
    max_pixels: int | None = None  # an option piece's --max-pixels, when it sets one
    steps_strength: tuple[int | None, float | None] = (None, None)
    extras: dict = field(default_factory=dict)


def verdict(pieces: list[Piece]) -> int:
    codes = {p.verdict for p in effective(pieces)}
    return BAD if BAD in codes else NOTHING if NOTHING in codes else OK


def effective(pieces: list[Piece]) -> list[Piece]:
    """The pieces whose values the command uses: of a flag given twice, or a --set field set twice, the last; a
    flag's EditOptions field that --set sets too is --set's (applied after). A value that does not parse as the
    flag's type is an error wherever it stands."""
    last = {p.extras["key"]: i for i, p in enumerate(pieces) if p.extras.get("key")}
    set_fields = {p.extras["field"] for p in pieces if p.extras.get("key", "").startswith("set:")}
    out = []
    for i, p in enumerate(pieces):
        key = p.extras.get("key")
        if key and not p.extras.get("parse_bad"):
            if last[key] != i or (not key.startswith("set:") and p.extras.get("field") in set_fields):
                continue
        out.append(p)
    return out


# ---------------------------------------------------------------- images
def rgb_array(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 128, np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = (220, 50, 50)
    return np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)


def saveable(image: Image.Image, fmt: str) -> Image.Image:
    """The image itself when `fmt` stores its mode, else an RGB version of it (a gray one if PIL cannot convert)."""
    if image.mode in SAVE_AS[fmt]:
        return image
    try:
        return (image.convert("LA") if image.mode == "La" else image).convert("RGB")
    except ValueError:
        return Image.new("RGB", image.size, (90, 90, 90))


def encode(image: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    image = saveable(image, fmt)
    buf = io.BytesIO()
    kwargs = {}
    if orientation and fmt in EXIF_FORMATS:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (CRCs right, one row of data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@st.composite
def pil_images(draw, min_side: int = 1, max_side: int = 96):
    """(PIL image of any mode, size, aspect ratio), its EXIF orientation (or None)."""
    mode = draw(st.sampled_from(MODES))
    w = draw(st.integers(min_side, max_side))
    h = draw(st.one_of(st.integers(min_side, max_side), st.just(max(min_side, w // 7)), st.just(min(max_side, w * 5))))
    arr = rgb_array(w, h, draw(st.integers(0, 3)))
    image = Image.fromarray(arr).convert(mode) if mode not in ("I;16", "I;16B", "I;16L", "I;16N", "La", "PA", "RGBa") \
        else Image.new(mode, (w, h))
    return image, draw(st.one_of(st.none(), st.integers(1, 8)))


@st.composite
def image_files(draw):
    """Bytes of a file offered as an image: valid in every format and mode, truncated, bit-flipped, claiming a huge
    size in its header, or random; and the file's suffix."""
    kind = draw(st.sampled_from(["valid", "valid", "truncated", "flipped", "header", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=300)), draw(st.sampled_from([".png", ".jpg", ".gif", ".bin", ""]))
    if kind == "header":
        w, h = draw(st.integers(1, 2**31 - 1)), draw(st.sampled_from([1, 16, 5000, 70000, 2**31 - 1]))
        return png_claiming(w, h), ".png"
    image, orientation = draw(pil_images(min_side=8, max_side=64))
    fmt = draw(st.sampled_from([f for f, modes in SAVE_AS.items() if image.mode in modes] or ["PNG"]))
    data = encode(image, fmt, orientation)
    if kind == "truncated":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "flipped":
        data = bytearray(data)
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=6)):
            data[pos] ^= draw(st.integers(1, 255))
        data = bytes(data)
    return data, {"JPEG": ".jpg", "TIFF": ".tif"}.get(fmt, "." + fmt.lower())


# ---------------------------------------------------------------- prompts
@st.composite
def prompt_text(draw, allow_empty: bool = True):
    """Prompts: words, non-ASCII, control characters, any unicode, very long."""
    kind = draw(st.sampled_from(["words", "odd", "unicode", "long"] + (["empty"] if allow_empty else [])))
    if kind == "words":
        return " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8)))
    if kind == "odd":
        return "".join(draw(st.lists(st.sampled_from(WORDS + ODD_TEXT + [" "]), min_size=1, max_size=10)))
    if kind == "unicode":
        return draw(st.text(min_size=1, max_size=40))
    if kind == "long":
        return draw(st.sampled_from(WORDS)) + " x" * draw(st.sampled_from([200, MAX_PROMPT_CHARS // 2]))
    return draw(st.sampled_from(["", " ", "\t\n", "\x00", "\u3000"]))


def respell(text: str, draw) -> str:
    """The same prompt to a CLIP tokenizer: other case, other spacing."""
    words = text.split()
    return draw(st.sampled_from(["  ", " ", "\t"])).join(w.upper() if draw(st.booleans()) else w for w in words) + " "


# ---------------------------------------------------------------- option values at and beyond their bounds
def _fmt(x) -> str:
    return repr(x) if isinstance(x, float) and math.isfinite(x) else str(x)


def in_bounds(name: str, draw):
    """A valid value of an EditOptions field, boundaries included."""
    b = BOUNDS[name]
    if b.optional and draw(st.integers(0, 5)) == 0:
        return None
    if b.kind == "bool":
        return draw(st.booleans())
    if name == "method":
        from diffedit.stages.registry import METHODS

        return draw(st.sampled_from(sorted(METHODS)))
    if b.kind == "str":
        return draw(st.sampled_from(b.choices)) if b.choices else draw(prompt_text(allow_empty=True))[:100]
    lo = b.low if b.low is not None else 0
    hi = b.high if b.high is not None else 1000
    if b.kind == "int":
        return draw(st.sampled_from([int(lo), int(hi), draw(st.integers(int(lo), int(hi)))]))
    value = draw(st.sampled_from([lo, hi, draw(st.floats(lo, hi, allow_nan=False))]))
    if (b.low_open and value == lo) or (b.high_open and value == hi):
        value = (lo + hi) / 2
    if b.off_or_above and 0 < value < b.off_or_above:
        value = b.off_or_above
    if b.kind == "floats":
        return [value] * draw(st.integers(max(b.min_items, 1), b.max_items))
    return value


def out_of_bounds(name: str, draw):
    """An invalid value of an EditOptions field: beyond a bound, NaN/inf, the wrong type, too many items."""
    b = BOUNDS[name]
    bad = [[1, "x"], {"a": 1}] + (["nan-text"] if b.kind != "str" or b.choices or name == "method" else [])
    bad += [10**30] if b.kind != "float" or b.high is not None else []  # huge is fine where nothing bounds it
    if b.kind in ("float", "floats"):
        bad += [math.nan, math.inf, -math.inf]
    if b.off_or_above:
        bad += [b.off_or_above / 2, 2.2250738585e-313]
    if b.kind in ("int", "float", "floats"):
        if b.low is not None:
            bad.append(b.low - (1 if b.kind == "int" else 0.5) if not b.low_open else b.low)
        if b.high is not None:
            bad.append(b.high + (1 if b.kind == "int" else 0.5) if not b.high_open else b.high)
        bad.append(True)
    if b.kind == "int":
        bad.append(1.5)
    if b.kind == "bool":
        bad += [1, "true", None]
    if b.kind == "str":
        bad += [3, "x" * (MAX_PROMPT_CHARS + 1)] + ([None] if not b.optional else []) + (["nope"] if b.choices else [])
    if b.kind == "floats" and b.max_items:
        bad.append([0.5] * (b.max_items + 1))
    if b.kind == "floats" and b.min_items:
        bad.append([])
    return draw(st.sampled_from(bad))


# ---------------------------------------------------------------- command-line pieces
FLAGS = {  # flag of `diffedit edit` -> its EditOptions field
    "--steps": "num_inference_steps", "--strength": "strength", "--guidance": "guidance_scale",
    "--threshold": "mask_threshold", "--decode-threshold": "decode_threshold", "--mask-noises": "mask_noises",
    "--smooth": "mask_smooth", "--dilate": "mask_dilate", "--feather": "feather", "--max-pixels": "max_pixels",
}
GOOD_SUFFIXES = [".png", ".jpg", ".jpeg", ".webp", ".tif", ".bmp", ".gif", ".PNG"]
BAD_SUFFIXES = ["", ".xyz", ".json", ".txt", ".xbm", ".pbm", ".pdf", ".ico"]


# fields whose in-bounds values may still clash with another's (the method's stages, the inversion's prompts): the
# option-level fuzz (test_fuzz_edit_options_at_and_beyond_their_bounds) covers them; the CLI's sets them only beyond
TIED = {"method", "inversion", "mask_source", "cross_replace", "self_replace",
        "reweight", "local_blend", "blend_threshold"}


@st.composite
def option_piece(draw, clean: bool = False) -> Piece:
    """One option: an everyday flag or a --set field, with a value within its bounds or (unless clean) beyond them."""
    import json

    good = clean or draw(st.booleans())
    if draw(st.booleans()):
        flag = draw(st.sampled_from(sorted(FLAGS)))
        name = FLAGS[flag]
        if good:
            value = in_bounds(name, draw)
            value = BOUNDS[name].low if value is None else value
            text = str(int(value)) if BOUNDS[name].kind == "int" else _fmt(float(value))
        else:
            value = draw(st.sampled_from([v for v in (out_of_bounds(name, draw), "nan", "inf", "-inf", "abc", "", "1.5")
                                          if not isinstance(v, (list, dict, bool))]))
            text = _fmt(value)
            good = False
        args = [flag, text]
    else:
        name = draw(st.sampled_from(sorted(BOUNDS) if not good else [n for n in sorted(BOUNDS) if n not in TIED]))
        value = in_bounds(name, draw) if good else out_of_bounds(name, draw)
        text = json.dumps(list(value) if isinstance(value, tuple) else value)
        args = ["--set", f"{draw(st.sampled_from([name, name.replace('_', '-')]))}={text}"]
    fields = {name: value} if good else {}
    key = args[0] if args[0] != "--set" else f"set:{name}"
    parse_bad = args[0] != "--set" and not parses(args[1], int if BOUNDS[name].kind == "int" else float)
    return Piece(args, OK if good else BAD, extras={"fields": fields, "key": key, "field": name, "parse_bad": parse_bad})


def parses(text: str, kind) -> bool:
    try:
        kind(text)
        return True
    except ValueError:
        return False


@st.composite
def device_piece(draw, clean: bool = False) -> Piece:
    flag = draw(st.sampled_from(["--device", "--dtype", "--threads", "--seed"]))
    good = {"--device": ["cpu", "auto", "cpu:0"], "--dtype": ["auto", "fp32", "bf16", "fp16"],
            "--threads": ["1", "2", "256"], "--seed": ["0", "7", str(2**62 - 1)]}[flag]
    bad = {"--device": ["tpu", "meta", "", "xla", "cpu:3", "cuda:99", "gpu"], "--dtype": ["fp8", "", "float64", "FP32"],
           "--threads": ["0", "-3", "257", "x", "100000"], "--seed": ["-1", str(2**62), str(2**70), "x", "1e3"]}[flag]
    ok = clean or draw(st.booleans())
    value = draw(st.sampled_from(good if ok else bad))
    parse_bad = flag in ("--threads", "--seed") and not parses(value, int)
    return Piece([flag, value], OK if ok else BAD, extras={"key": flag, "parse_bad": parse_bad})


def write(name: str, data: bytes | None = None, folder: bool = False):
    def setup(d: Path) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if folder else path.write_bytes(data or b"")
    return setup


@st.composite
def input_piece(draw, clean: bool = False) -> Piece:
    """The input image: valid (any mode, size, EXIF orientation), missing, a folder, corrupt, too small, a header bomb."""
    kinds = ["valid", "valid", "valid", "missing", "folder", "corrupt", "small", "bomb", "text"]
    kind = "valid" if clean else draw(st.sampled_from(kinds))
    if kind == "valid":
        image, orientation = draw(pil_images(min_side=16, max_side=64))
        fmt = draw(st.sampled_from([f for f, modes in SAVE_AS.items() if image.mode in modes] or ["PNG"]))
        data = encode(image, fmt, orientation)
        w, h = image.size
        size = (h, w) if orientation in (5, 6, 7, 8) and fmt in EXIF_FORMATS else (w, h)
        name = "in" + {"JPEG": ".jpg", "TIFF": ".tif"}.get(fmt, "." + fmt.lower())
        return Piece(["{d}/" + name], OK, write(name, data), size=size, extras={"name": name})
    if kind == "missing":
        return Piece(["{d}/nothere.png"], BAD)
    if kind == "folder":
        return Piece(["{d}/in.png"], BAD, write("in.png", folder=True))
    if kind == "small":
        side = draw(st.integers(1, 15))
        return Piece(["{d}/in.png"], BAD, write("in.png", encode(Image.new("RGB", (side, 40)), "PNG")))
    if kind == "bomb":
        w, h = draw(st.sampled_from([(50000, 50000), (5000, 5000), (2**31 - 1, 2**31 - 1), (3000, 3000)]))
        return Piece(["{d}/in.png"], BAD, write("in.png", png_claiming(w, h)))
    if kind == "text":
        return Piece(["{d}/in.png"], BAD, write("in.png", b"this is not an image\n"))
    junk = draw(st.binary(min_size=0, max_size=60))
    return Piece(["{d}/in.png"], BAD, write("in.png", b"\x89PNG\r\n\x1a\n" + junk))


@st.composite
def output_pieces(draw, input_name: str | None, n: int, clean: bool = False) -> list[Piece]:
    """-o / --mask-output / --panel of every kind: fine, unknown or missing suffix, a format that cannot hold the
    image, a folder, under a file, over the input (with or without --overwrite), over each other, too long. With
    n targets the outputs are <stem>_1 ... <stem>_n: a clash with the input or the panel needs n = 1."""
    good_kinds = ["none", "good", "good", "nested", "input_overwrite"]
    bad_kinds = ["bad_suffix", "folder", "under_file", "input", "clash_mask", "clash_panel", "long", "sidecar_folder"]
    kind = draw(st.sampled_from(good_kinds if clean else good_kinds + bad_kinds))
    extra = []
    if draw(st.booleans()):
        extra.append(Piece(["--mask-output", "{d}/m" + draw(st.sampled_from(GOOD_SUFFIXES))]))
    if draw(st.booleans()):
        extra.append(Piece(["--panel", "{d}/p" + draw(st.sampled_from(GOOD_SUFFIXES[:4]))]))
    out = "{d}/out" + draw(st.sampled_from(GOOD_SUFFIXES))
    if kind == "none":
        return extra
    if kind == "good":
        return [Piece(["-o", out])] + extra
    if kind == "nested":
        return [Piece(["-o", "{d}/new/deeper/out.png"])] + extra
    if kind == "bad_suffix":
        return [Piece(["-o", "{d}/out" + draw(st.sampled_from(BAD_SUFFIXES))], BAD)] + extra
    if kind == "folder":
        name = "dir.png" if n == 1 else "dir_1.png"
        return [Piece(["-o", "{d}/dir.png"], BAD, write(name, folder=True))] + extra
    if kind == "sidecar_folder":
        return [Piece(["-o", "{d}/o.png"], BAD, write("o.json", folder=True))] + extra
    if kind == "under_file":
        return [Piece(["-o", "{d}/afile/out.png"], BAD, write("afile", b"x"))] + extra
    if kind == "long":
        return [Piece(["-o", "{d}/" + "x" * 300 + ".png"], BAD)] + extra
    if kind in ("input", "input_overwrite") and input_name:
        bad_suffix = Path(input_name).suffix not in GOOD_SUFFIXES
        overwrite = kind == "input_overwrite"
        clash = n == 1 and not overwrite
        return [Piece(["-o", "{d}/" + input_name] + (["--overwrite"] if overwrite else []),
                      BAD if bad_suffix or clash else OK)] + extra
    if kind == "clash_mask":
        return [Piece(["-o", "{d}/same.png", "--mask-output", "{d}/same.png"], BAD)]
    if kind == "clash_panel":
        return [Piece(["-o", "{d}/same.png", "--panel", "{d}/same.png"], BAD if n == 1 else OK)]
    return extra


@st.composite
def mask_piece(draw, size: tuple[int, int] | None, clean: bool = False, black: bool = False) -> list[Piece]:
    """--mask: none, fine, all black (nothing to edit), of another size, corrupt, missing."""
    kinds = ["black"] if black else ["none", "good"] if clean else ["none", "none", "good", "black", "other_size",
                                                                     "corrupt", "missing"]
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return []
    if kind == "missing":
        return [Piece(["--mask", "{d}/nomask.png"], BAD)]
    if kind == "corrupt":
        return [Piece(["--mask", "{d}/mask.png"], BAD, write("mask.png", b"GIF89a\x00"))]
    if size is None:  # the image is bad anyway: any mask will do
        return [Piece(["--mask", "{d}/mask.png"], OK, write("mask.png", encode(Image.new("L", (20, 20), 255), "PNG")))]
    w, h = size
    if kind == "other_size":
        return [Piece(["--mask", "{d}/mask.png"], BAD, write("mask.png", encode(Image.new("L", (w + 1, h)), "PNG")))]
    m = np.zeros((h, w), np.uint8)
    if kind == "good":
        m[h // 4 : h // 2 + 1, w // 4 : w // 2 + 1] = 255
    mode = draw(st.sampled_from(["L", "1", "RGB", "RGBA"]))
    image = Image.fromarray(m).convert(mode)
    return [Piece(["--mask", "{d}/mask.png"], OK if kind == "good" else NOTHING, write("mask.png", encode(image, "PNG")))]
