"""Property-based fuzzing (hypothesis) of the Python API and the command line.

Properties: every input either works or fails with a specific error (ValueError & co. in Python; one line and
exit code 2, or 3 for "nothing to edit", from the CLI): never a traceback; a command that fails leaves no file
behind, and one that succeeds writes exactly its outputs; every bad input is refused before the model loads.
Inputs: random and corrupt image bytes, every PIL mode, sizes and aspect ratios, EXIF orientations, prompts
(empty, long, non-ASCII, control characters), every option at and beyond its bounds, NaN/inf, devices and seeds,
output paths of every kind, broken model folders and files, and real edits on the tiny model.

Runs are derandomized (the same inputs in every CI run); DIFFEDIT_FUZZ_SCALE=10 tries ten times as many, and
DIFFEDIT_FUZZ_RANDOM=1 new ones each run. The count of distinct inputs and the time are printed at the end of the
run (conftest.pytest_terminal_summary).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import typer
from fuzzing import (
    BAD, BOUNDS, NOTHING, OK, SAVE_AS, Piece, device_piece, effective, encode, image_files, in_bounds, input_piece, mask_piece,
    option_piece, out_of_bounds, output_pieces, pil_images, prompt_text, respell, verdict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from conftest import fuzz_problem, fuzz_seen
from diffedit import DiffEditor, EditOptions
from diffedit.bounds import MAX_PROMPT_CHARS
from diffedit.cli import app
from diffedit.errors import ModelError
from diffedit.images import DEFAULT_MAX_PIXELS, load_image
from diffedit.stages.batch import normalize_prompt

SCALE = float(os.environ.get("DIFFEDIT_FUZZ_SCALE", "1"))
# PIL warns on the corrupt files it is fed; ~40 s, so in the full suite (.ci/run) and not in the quick tier
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]
REACHED_MODEL = 99
runner = CliRunner()


def fuzz(n: int):
    fresh = bool(os.environ.get("DIFFEDIT_FUZZ_RANDOM"))  # new inputs each run, for hunting locally
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=not fresh, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model exits with REACHED_MODEL: a command that gets there has checked all it could before."""

    def refuse(*args, **kwargs):
        raise typer.Exit(REACHED_MODEL)

    monkeypatch.setattr(sys.modules["diffedit.cli.edit"], "load_editor", refuse)


def invoke(args: list[str]):
    """Run the CLI; count and fail on a traceback (an exception other than an exit, or exit code 1). --threads sets
    torch's threads for the whole process: they are put back, or later tests would run with 256."""
    import torch

    threads = torch.get_num_threads()
    try:
        res = runner.invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    if (res.exception is not None and not isinstance(res.exception, SystemExit)) or res.exit_code == 1 \
            or "Traceback" in res.output:
        fuzz_problem("tracebacks")
        raise AssertionError(f"traceback or internal error for {args!r}:\n{res.output}\n{res.exception!r}")
    return res


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_one_line(res, code: int) -> None:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == code, res.output
    prefix = "error:" if code == BAD else "warning:"
    assert lines and all(line.startswith(prefix) for line in lines) and (code == NOTHING or len(lines) == 1), res.output


# ---------------------------------------------------------------- the Python API on its own
@fuzz(400)
@given(case=image_files())
def test_fuzz_load_image_bytes(fuzz_dir, case):
    data, suffix = case
    fuzz_seen("image bytes", (data, suffix))
    path = fuzz_dir / f"f{suffix}"
    path.write_bytes(data)
    try:
        image = load_image(path)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert image.mode == "RGB" and min(image.size) >= 16 and image.size[0] * image.size[1] <= DEFAULT_MAX_PIXELS


@fuzz(300)
@given(case=pil_images(), as_file=st.booleans())
def test_fuzz_image_modes_sizes_and_orientations(fuzz_dir, case, as_file):
    image, orientation = case
    fuzz_seen("image modes", (image.mode, image.size, orientation, as_file))
    source = image
    if as_file or orientation:
        fmt = next((f for f, modes in SAVE_AS.items() if image.mode in modes and f in ("PNG", "TIFF", "JPEG", "WEBP")), "")
        if fmt:
            source = fuzz_dir / f"m.{fmt.lower()}"
            source.write_bytes(encode(image, fmt, orientation))
    w, h = image.size
    turned = not isinstance(source, Image.Image) and orientation in (5, 6, 7, 8)
    expected = (h, w) if turned else (w, h)
    if min(w, h) < 16:
        with pytest.raises(ValueError, match="at least 16"):
            load_image(source)
        return
    out = load_image(source)
    assert out.mode == "RGB" and out.size == expected


def _valid(name: str, value) -> bool:
    """What the bounds table says of one value, written out independently of diffedit.bounds.check_field."""
    b = BOUNDS[name]
    if value is None:
        return b.optional
    if b.kind == "bool":
        return isinstance(value, bool)
    if b.kind == "str":
        if name == "method":
            from diffedit.stages.registry import METHODS

            return isinstance(value, str) and value in METHODS
        if name == "reweight":  # a format as well as a text: word=factor items (attention_control.parse_reweight)
            from diffedit.attention_control import parse_reweight

            try:
                return isinstance(value, str) and len(value) <= MAX_PROMPT_CHARS and parse_reweight(value) is not None
            except ValueError:
                return False
        return isinstance(value, str) and len(value) <= MAX_PROMPT_CHARS and (not b.choices or value in b.choices)
    items = [value] if b.kind != "floats" or isinstance(value, (int, float)) else value
    if b.kind == "floats" and (not isinstance(value, (list, tuple, int, float)) or not b.min_items <= len(items) <= b.max_items):
        return False
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (b.kind == "int" and not isinstance(v, int)):
            return False
        if not math.isfinite(v) or (b.low is not None and (v < b.low or (b.low_open and v == b.low))):
            return False
        if b.off_or_above and 0 < v < b.off_or_above:
            return False
        if b.high is not None and (v > b.high or (b.high_open and v == b.high)):
            return False
    return True


@st.composite
def option_sets(draw):
    names = draw(st.lists(st.sampled_from(sorted(BOUNDS)), max_size=6, unique=True))
    return {n: in_bounds(n, draw) if draw(st.booleans()) else out_of_bounds(n, draw) for n in names}


@fuzz(600)
@given(values=option_sets())
def test_fuzz_edit_options_at_and_beyond_their_bounds(values):
    fuzz_seen("options", sorted(values.items(), key=lambda kv: kv[0]))
    bad = [n for n, v in values.items() if not _valid(n, v)]
    try:
        options = EditOptions(**values)
    except ValueError as e:
        message = str(e)
        # fields that tie others: strength and steps, the inversion, attention options and mask sources and the method
        together = any(text in message for text in ("steps leaves", "inversion", "to method(s)", "edits without a mask"))
        assert bad and any(n in message for n in bad) or (not bad and together), (values, message)
        return
    assert not bad, (values, options)
    json.dumps(options.to_dict(), allow_nan=False)  # finite and JSON-ready
    for name, value in values.items():
        assert _same(getattr(options, name), value), (name, value, getattr(options, name))


def _same(got, value) -> bool:
    """An option as stored equals the value given (numbers normalised to float or int, a number to a 1-tuple)."""
    if isinstance(got, tuple) and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(value, (list, tuple)):
        return isinstance(got, tuple) and len(got) == len(value) and all(_same(g, v) for g, v in zip(got, value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return type(got) in (int, float) and math.isclose(got, value)
    return got == value


# ---------------------------------------------------------------- the command line, checked before the model
@st.composite
def command_lines(draw):
    """(command, pieces): `edit` or `mask` with an input, prompts, options, devices, a mask and outputs."""
    command = draw(st.sampled_from(["edit", "edit", "edit", "mask"]))
    kind = draw(st.sampled_from(["clean", "nothing", "any", "any"]))  # clean: no bad piece, so it must reach the model;
    clean = kind != "any"  # nothing: no bad piece but one that leaves nothing to edit (exit 3)
    image = draw(input_piece(clean))
    source = draw(prompt_text())
    source = source if not clean or len(source) <= MAX_PROMPT_CHARS else source[:100]
    n = 1 if command == "mask" else draw(st.integers(1, 3))
    targets = [respell(source, draw) if not clean and draw(st.integers(0, 5)) == 0 else draw(prompt_text()) for _ in range(n)]
    if clean:
        targets = [t[:100] if normalize_prompt(t[:100]) not in ("", normalize_prompt(source)) else "a blue bowl"
                   for t in targets]
        targets = [t if normalize_prompt(t) != normalize_prompt(source) else "a dog" for t in targets]
    if kind == "nothing" and (command == "mask" or not image.size or draw(st.booleans())) and normalize_prompt(source):
        targets[draw(st.integers(0, n - 1))] = respell(source, draw)
    pieces = [image, Piece(["-s", source], BAD if len(source) > MAX_PROMPT_CHARS else OK)]
    for t in targets:
        empty, same = not normalize_prompt(t), normalize_prompt(t) == normalize_prompt(source)
        pieces.append(Piece(["-t", t], BAD if len(t) > MAX_PROMPT_CHARS or empty else NOTHING if same else OK))
    pieces += draw(st.lists(option_piece(clean), max_size=4))
    pieces += draw(st.lists(device_piece(clean), max_size=2))
    if command == "edit":
        pieces += draw(mask_piece(image.size, clean, black=kind == "nothing" and not any(p.verdict for p in pieces)))
        if draw(st.booleans()):
            pieces.append(Piece(["--one-candidate"], extras={"fields": {"extra_strengths": ()}}))
    outputs = draw(output_pieces(image.extras.get("name"), n, clean))
    if command == "mask":  # mask has -o and --soft-output only
        outputs = [p for p in outputs if "--panel" not in p.args and not (p.args[0] == "-o" and "--mask-output" in p.args)]
        outputs = [Piece(["--soft-output" if a == "--mask-output" else a for a in p.args], p.verdict, p.setup)
                   for p in outputs]
        mask_flags = {"--threshold", "--mask-noises", "--smooth", "--dilate", "--max-pixels", "--set"}
        pieces = [p for p in pieces if not p.args[0].startswith("--") or p.args[0] in mask_flags | {"--device", "--dtype",
                                                                                                     "--threads", "--seed"}]
    return command, pieces + outputs


def expected_code(pieces: list[Piece]) -> int:
    """The worst piece's verdict, and the cross-field checks: enough steps for the strengths, the size limit."""
    code = verdict(pieces)
    if code == BAD:
        return BAD
    defaults = EditOptions()
    fields = {name: getattr(defaults, name) for name in ("num_inference_steps", "strength", "mask_strength",
                                                          "extra_strengths", "caption_strength", "max_pixels")}
    for p in sorted(effective(pieces), key=lambda p: p.args[0] == "--set"):  # --set after the flags, wherever it stands
        for name, value in p.extras.get("fields", {}).items():
            if name in fields:
                fields[name] = tuple(value) if isinstance(value, list) else value
    steps, size = fields["num_inference_steps"], pieces[0].size
    strengths = [fields["strength"], fields["mask_strength"], *fields["extra_strengths"], fields["caption_strength"] or 1.0]
    if any(int(steps * r) < 1 for r in strengths):
        return BAD
    if size and fields["max_pixels"] is not None and size[0] * size[1] > fields["max_pixels"]:
        return BAD
    return code


@fuzz(800)
@given(line=command_lines())
def test_fuzz_cli_refuses_every_bad_input_before_the_model(fuzz_dir, no_model, line):
    command, pieces = line
    with tempfile.TemporaryDirectory(dir=fuzz_dir) as d:
        folder = Path(d)
        for p in pieces:
            if p.setup:
                p.setup(folder)
        args = [command] + [a.replace("{d}", d) for p in pieces for a in p.args]
        expected = expected_code(pieces)
        kind = {OK: "cli reaching the model", BAD: "cli exit 2", NOTHING: "cli exit 3"}[expected]
        fuzz_seen(kind, ([a.replace(d, "{d}") for a in args], [p.extras.get("name") for p in pieces]))
        before = snapshot(folder)
        res = invoke(args)
        if snapshot(folder) != before:
            fuzz_problem("partial files")
            raise AssertionError(f"files written before the model for {args!r}: {snapshot(folder) - before}")
        if expected == OK:
            assert res.exit_code == REACHED_MODEL, (args, res.output)
        else:
            assert_one_line(res, expected)


# ---------------------------------------------------------------- real edits on the tiny model
@st.composite
def real_edits(draw):
    """A cheap edit (2-4 steps, 1-2 noises) of any image with in-bounds options, odd prompts and output formats."""
    image, orientation = draw(pil_images(min_side=16, max_side=48))
    fmt = draw(st.sampled_from([f for f, modes in SAVE_AS.items() if image.mode in modes] or ["PNG"]))
    steps = draw(st.integers(2, 4))
    flags = ["--steps", str(steps), "--strength", repr(draw(st.floats(0.5, 1.0))),
             "--set", f"mask_noises={draw(st.integers(1, 2))}"]
    if draw(st.integers(0, 3)):
        flags.append("--one-candidate")
    else:  # candidates and their scoring, kept small
        flags += ["--set", "rerank_noises=1", "--set", "rerank_levels=[0.5]"]
    for name in draw(st.lists(st.sampled_from(["guidance_scale", "mask_threshold", "decode_threshold", "mask_smooth",
                                               "mask_dilate", "composite", "edit_snap", "edit_trim", "feather",
                                               "mask_per_change", "mask_clamp", "mask_refine", "mask_snap",
                                               "negative_prompt", "mask_per_image"]), max_size=4, unique=True)):
        flags += ["--set", f"{name}={json.dumps(in_bounds(name, draw))}"]
    source = " ".join(draw(st.lists(st.sampled_from(["a", "red", "square", "cat", "café", "\x07"]), min_size=1, max_size=4)))
    targets = [draw(prompt_text(allow_empty=False))[:300] for _ in range(draw(st.integers(1, 2)))]
    targets = [t if normalize_prompt(t) not in ("", normalize_prompt(source)) else t + " dog" for t in targets]
    targets = [t if normalize_prompt(t) not in ("", normalize_prompt(source)) else "a blue circle" for t in targets]
    suffix = draw(st.sampled_from([".png", ".jpg", ".webp", ".tif", ".bmp", ".gif"]))
    outs = {"-o": "out" + suffix}
    if draw(st.booleans()):
        outs["--mask-output"] = "m.png"
    if draw(st.booleans()):
        outs["--panel"] = "p.jpg"
    return image, orientation, fmt, source, targets, flags, outs


@fuzz(50)
@given(case=real_edits())
def test_fuzz_real_edits_write_all_their_outputs_or_none(fuzz_dir, tiny_model_dir, case):
    image, orientation, fmt, source, targets, flags, outs = case
    with tempfile.TemporaryDirectory(dir=fuzz_dir) as d:
        folder = Path(d)
        (folder / "in.img").write_bytes(encode(image, fmt, orientation))
        args = ["edit", str(folder / "in.img"), "-s", source, "-m", str(tiny_model_dir), "-q", "--seed", "3", *flags]
        args += [a for t in targets for a in ("-t", t)] + [x for k, v in outs.items() for x in (k, str(folder / v))]
        old = os.umask(0o022)
        try:
            res = invoke(args)
        finally:
            os.umask(old)
        assert res.exit_code in (0, NOTHING), res.output
        fuzz_seen(f"real edits (exit {res.exit_code})", (image.mode, image.size, orientation, fmt, source, targets, flags, outs))
        n = len(targets)
        stem = lambda name, i: name if n == 1 else f"{Path(name).stem}_{i + 1}{Path(name).suffix}"  # noqa: E731
        expected = {stem(outs["-o"], i) for i in range(n)} | {"in.img", "out.json"}
        expected |= {stem(outs["--mask-output"], i) for i in range(n)} if "--mask-output" in outs else set()
        expected |= {"p.jpg"} if "--panel" in outs else set()
        if snapshot(folder) != expected:
            fuzz_problem("partial files")
            raise AssertionError(f"{snapshot(folder)} != {expected}")
        assert {(folder / f).stat().st_mode & 0o777 for f in expected - {"in.img"}} == {0o644}
        sidecar = json.loads((folder / "out.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in sidecar"))
        assert len(sidecar["edited"]) == n and (res.exit_code == 0) == all(sidecar["edited"])
        assert (res.exit_code == 0) == (not sidecar["warnings"]) and (res.exit_code == 0 or "warning:" in res.output)


@pytest.fixture(scope="module")
def api_editor(tiny_model_dir):
    return DiffEditor.from_pretrained(str(tiny_model_dir), progress=False)


@fuzz(50)
@given(case=pil_images(min_side=8, max_side=40), target=prompt_text(), data=st.data())
def test_fuzz_api_edits(api_editor, case, target, data):
    image, _ = case
    options = {"num_inference_steps": 2, "mask_noises": 1, "extra_strengths": (), "caption_candidate": False}
    for name in data.draw(st.lists(st.sampled_from(["mask_threshold", "decode_threshold", "guidance_scale", "feather",
                                                    "mask_smooth", "edit_trim", "composite", "mask_snap"]), max_size=3)):
        options[name] = in_bounds(name, data.draw)
    source = data.draw(prompt_text())
    fuzz_seen("api edits", (image.mode, image.size, source, target, sorted(options.items())))
    try:
        result = api_editor.edit(image, source, target, seed=1, **options)
    except ValueError as e:
        assert str(e)
        return
    out = np.asarray(result.image)
    assert out.shape == (image.size[1], image.size[0], 3) and len(result.edited) == 1
    assert result.edited[0] == (not result.warnings)
    json.dumps(result.to_dict(), allow_nan=False)


# ---------------------------------------------------------------- wrong model folders and files
@st.composite
def broken_models(draw):
    """A copy of the tiny model with one thing wrong, or a single file that is not a checkpoint."""
    if draw(st.integers(0, 3)) == 0:
        suffix = draw(st.sampled_from([".safetensors", ".ckpt", ".bin", ".txt", ".pt"]))
        data = draw(st.sampled_from([b"", b"hello", b"PK\x03\x04junk", b"\x80\x04junk", b"\x08" + b"\0" * 7 + b"{}"]))
        return ("file", suffix, data + draw(st.binary(max_size=20)))
    part = draw(st.sampled_from(["vae", "unet", "text_encoder", "tokenizer", "scheduler", "model_index.json"]))
    files = {"vae": ["config.json", "diffusion_pytorch_model.safetensors"],
             "unet": ["config.json", "diffusion_pytorch_model.safetensors"],
             "text_encoder": ["config.json", "model.safetensors"], "tokenizer": ["tokenizer.json", "tokenizer_config.json"],
             "scheduler": ["scheduler_config.json"], "model_index.json": [""]}[part]
    name = draw(st.sampled_from(files))
    how = draw(st.sampled_from(["delete", "empty", "text", "truncate", "junk_json", "wrong_json", "folder"]))
    return ("folder", f"{part}/{name}".rstrip("/"), how)


@fuzz(60)
@given(case=broken_models())
def test_fuzz_wrong_model_folders_and_files(fuzz_dir, tiny_model_dir, case):
    fuzz_seen("models", case)
    with tempfile.TemporaryDirectory(dir=fuzz_dir) as d:
        folder = Path(d)
        image = folder / "in.png"
        image.write_bytes(encode(Image.fromarray(np.full((24, 24, 3), 90, np.uint8)), "PNG"))
        if case[0] == "file":
            model = folder / f"model{case[1]}"
            model.write_bytes(case[2])
        else:
            model = folder / "model"
            shutil.copytree(tiny_model_dir, model, copy_function=os.link)  # hard links: the originals stay intact
            target, how = model / case[1], case[2]
            if how == "delete" or target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            if how == "folder":
                target.mkdir()
            elif how != "delete":
                original = (tiny_model_dir / case[1]).read_bytes()
                target.write_bytes({"empty": b"", "text": b"just text\n", "truncate": original[: len(original) // 2],
                                    "junk_json": b"{not json", "wrong_json": b"[1, 2, 3]"}[how])
        before = snapshot(folder)
        res = invoke(["edit", str(image), "-s", "a red square", "-t", "a blue circle", "-m", str(model), "--steps", "2",
                      "--one-candidate", "--set", "mask_noises=1", "-q"])
        assert res.exit_code in (0, BAD, NOTHING), res.output
        if res.exit_code == BAD:
            assert_one_line(res, BAD)
            if snapshot(folder) != before:
                fuzz_problem("partial files")
                raise AssertionError(f"files left by a failed load: {snapshot(folder) - before}")
        if case[0] == "file":
            assert res.exit_code == BAD
            with pytest.raises((ModelError, ValueError, OSError)):
                from diffedit.loading import load_components

                load_components(str(model))
