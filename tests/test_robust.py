"""The robustness issue, one test per failure a fuzzing user found: one-line errors and exit codes, checks before
the model loads, bounds, NaN/inf, edits that change nothing, outputs written as a set with the user's umask."""

import json
import math
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffedit import EditOptions
from diffedit.bounds import BOUNDS, bounds_table
from diffedit.cli import app
from diffedit.errors import ModelError, NonFiniteError
from diffedit.files import OutputFile, check_outputs, file_mode, write_files
from diffedit.images import load_image
from diffedit.loading import load_components

from conftest import scene

runner = CliRunner()
FAST = ["--steps", "2", "--one-candidate", "--set", "mask_noises=2", "-q"]


REACHED_MODEL = 99  # the exit code of a command that got as far as loading a model, under `no_model`


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model exits with REACHED_MODEL: a command that gets there has checked everything before it."""
    import typer

    def refuse(*args, **kwargs):
        raise typer.Exit(REACHED_MODEL)

    monkeypatch.setattr(sys.modules["diffedit.cli.edit"], "load_editor", refuse)


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(scene(37, 45)).save(path)
    return path


def run(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output and res.exit_code != REACHED_MODEL, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def one_line_error(res, code: int, text: str) -> None:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == code, res.output
    assert len(lines) == 1 and lines[0].startswith(("error:", "warning:")) and text in lines[0], res.output


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (one IDAT row of data, CRCs right)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- inputs checked from the header, before decoding
@pytest.mark.parametrize("side, text", [(50000, "huge image"), (5000, "above the limit")])
def test_a_header_that_claims_a_huge_image_is_refused_before_decoding(tmp_path, no_model, side, text):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(side, side))
    with pytest.raises(ValueError, match=text):
        load_image(bomb)
    one_line_error(run(["edit", bomb, "-s", "a", "-t", "b"]), 2, text)
    assert files_in(tmp_path) == ["bomb.png"]


# ---------------------------------------------------------------- options: NaN/inf everywhere, every bound
@pytest.mark.parametrize("flags, text", [
    (["--guidance", "nan"], "guidance_scale must be a finite number"),
    (["--guidance", "inf"], "guidance_scale must be a finite number"),
    (["--smooth", "inf"], "mask_smooth must be a finite number"),
    (["--set", "edit_trim=nan"], "edit_trim must be a finite number"),
    (["--set", "edit_trim=NaN"], "edit_trim must be a finite number"),
    (["--feather", "100000"], "feather must be <= 16"),
    (["--mask-noises", "100000"], "mask_noises must be <= 64"),
    (["--set", "mask_noises=100000"], "mask_noises must be <= 64"),
    (["--steps", "100000"], "num_inference_steps must be <= 1000"),
    (["--dilate", "1000"], "mask_dilate must be <= 64"),
    (["--max-pixels", "0"], "max_pixels must be >= 1"),
    (["--set", "extra_strengths=[0.5,0.6,0.7,0.8,0.9,1,1,1,1]"], "extra_strengths must hold 0 to 8"),
    (["--device", "tpu"], "--device 'tpu' is not one"),
    (["--device", "mps"], "MPS is not available"),
    (["--device", "meta"], "--device 'meta' is not one"),
    (["--device", ""], "--device '' is not one"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**62)"),
    (["--seed", str(2**70)], "--seed must be an integer in [0, 2**62)"),
    (["--threads", "100000"], "--threads must be <= 256"),
    (["--steps", "abc"], "Invalid value for '--steps'"),
    (["--bogus"], "No such option"),
])
def test_bad_options_are_one_line_before_the_model(photo, no_model, flags, text):
    one_line_error(run(["edit", photo, "-s", "a red square", "-t", "a blue circle", *flags]), 2, text)
    assert files_in(photo.parent) == ["photo.png"]


def test_nan_and_inf_are_refused_by_edit_options_itself():
    for name, bound in BOUNDS.items():
        if bound.kind not in ("float", "floats"):
            continue
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError, match=name):
                EditOptions(**{name: bad})
    with pytest.raises(ValueError, match="composite must be true or false"):
        EditOptions(composite="false")  # a string would have been truthy
    with pytest.raises(ValueError, match="feather must be an integer"):
        EditOptions(feather=2.5)
    opts = EditOptions(strength=np.float32(0.5), mask_noises=np.int64(3), extra_strengths=[1])
    assert type(opts.strength) is float and type(opts.mask_noises) is int and opts.extra_strengths == (1.0,)
    json.dumps(opts.to_dict(), allow_nan=False)


def test_the_bounds_table_in_docs_is_the_codes():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "options.md").read_text()
    assert bounds_table() in doc
    assert list(BOUNDS) == list(EditOptions.__dataclass_fields__)


def test_demo_and_evaluate_check_their_numbers_first(tmp_path, no_model):
    one_line_error(run(["demo", "--seed", "-1", "-o", tmp_path / "d"]), 2, "--seed must be")
    res = run(["shapeworld", "evaluate", "--captions", "0", "--scenes", "0"])
    one_line_error(res, 2, "--captions must be >= 1")
    one_line_error(run(["shapeworld", "evaluate", "--guidance", "nan"]), 2, "--guidance must be a finite number")
    one_line_error(run(["bench", "quality", "--cases", "0"]), 2, "--cases must be >= 1")
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- output paths: checked before the work
@pytest.mark.parametrize("make, flags, text", [
    (None, ["-o", "out.unknownext"], "unknown image format"),
    (None, ["-o", "out"], "has no file extension"),
    (None, ["-o", "out.xbm"], "cannot hold this RGB image"),
    (None, ["--panel", "p.pbm"], "cannot hold this RGB image"),
    ("dir:out.png", ["-o", "out.png"], "is a folder"),
    ("dir:out.json", ["-o", "out.png"], "sidecar"),  # the sidecar's path is a folder: the image was written alone
    ("dir:m.png", ["--mask-output", "m.png"], "is a folder"),
    ("file:f", ["-o", "f/out.png"], "is a file, not a folder"),
    (None, ["-o", "photo.png"], "is an input of this command"),
    (None, ["-o", "a.png", "--mask-output", "a.png"], "would both be written to"),
    (None, ["-o", "a.png", "--panel", "a.png"], "would both be written to"),
    (None, ["-o", "new/sub/out.png"], None),  # folders that do not exist yet are made when writing, not before
    (None, ["-o", "x" * 300 + ".png"], "file name is too long"),
])
def test_output_paths_are_checked_before_the_model(photo, no_model, monkeypatch, make, flags, text):
    monkeypatch.chdir(photo.parent)
    if make:
        kind, name = make.split(":")
        (photo.parent / name).mkdir() if kind == "dir" else (photo.parent / name).write_text("x")
    before = files_in(photo.parent)
    res = runner.invoke(app, ["edit", str(photo), "-s", "a red square", "-t", "a blue circle", *flags])
    if text is None:
        assert res.exit_code == REACHED_MODEL, res.output
    else:
        one_line_error(res, 2, text)
    assert files_in(photo.parent) == before


def test_a_read_only_folder_is_refused_before_the_work(photo, no_model, monkeypatch):
    import tempfile

    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    (photo.parent / "locked").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    res = run(["edit", photo, "-s", "a red square", "-t", "a blue circle", "-o", photo.parent / "locked" / "o.png"])
    one_line_error(res, 2, "is not writable (Permission denied)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_real_read_only_folder(photo, no_model):
    locked = photo.parent / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        res = run(["edit", photo, "-s", "a red square", "-t", "a blue circle", "-o", locked / "o.png"])
        one_line_error(res, 2, "is not writable")
    finally:
        locked.chmod(0o755)


def test_outputs_are_a_set_all_or_none_with_the_umask(tmp_path, monkeypatch):
    (tmp_path / "old.png").write_bytes(b"old")
    calls = []

    def write(text):
        def go(tmp):
            calls.append(tmp)
            if text == "boom":
                raise OSError(28, "No space left on device")
            Path(tmp).write_text(text)
        return go

    with pytest.raises(OSError, match="No space"):
        write_files([(tmp_path / "new" / "a.txt", write("a")), (tmp_path / "old.png", write("b")),
                     (tmp_path / "c.txt", write("boom"))])
    assert files_in(tmp_path) == ["old.png"] and (tmp_path / "old.png").read_bytes() == b"old"
    old = os.umask(0o027)
    try:
        assert file_mode() == 0o640
        write_files([(tmp_path / "a.txt", write("a")), (tmp_path / "old.png", write("b"))])
    finally:
        os.umask(old)
    assert files_in(tmp_path) == ["a.txt", "old.png"] and (tmp_path / "old.png").read_text() == "b"
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("a.txt", "old.png")} == {0o640}
    # a failure while moving into place puts back what was replaced
    real = os.replace
    moves = []

    def flaky(src, dst):
        moves.append(dst)
        if len(moves) == 3:
            raise OSError(5, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="I/O"):
        write_files([(tmp_path / "old.png", write("c")), (tmp_path / "z.txt", write("z")), (tmp_path / "y.txt", write("y"))])
    monkeypatch.undo()
    assert files_in(tmp_path) == ["a.txt", "old.png"] and (tmp_path / "old.png").read_text() == "b"


def test_check_outputs_sees_links_and_returns_what_exists(tmp_path):
    (tmp_path / "in.png").write_bytes(b"x")
    os.link(tmp_path / "in.png", tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(tmp_path / "in.png")
    for name in ("hard.png", "soft.png"):
        with pytest.raises(ValueError, match="is an input"):
            check_outputs([OutputFile(tmp_path / name, "output", "RGB", (16, 16))], [tmp_path / "in.png"])
    assert check_outputs([OutputFile(tmp_path / "hard.png", "output", "RGB")], [tmp_path / "in.png"], overwrite=True) == [
        tmp_path / "hard.png"]


# ---------------------------------------------------------------- real edits on the tiny model
def test_edit_writes_the_set_with_the_umask_and_overwrites_the_input_only_when_asked(photo, tiny_model_dir):
    base = ["edit", photo, "-s", "a red square", "-t", "a blue circle", "-m", tiny_model_dir, *FAST]
    old = os.umask(0o022)
    try:
        res = run(base + ["--mask-output", photo.parent / "m.png", "--panel", photo.parent / "p.png"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    written = ["m.png", "p.png", "photo_edited.json", "photo_edited.png"]
    assert [n for n in files_in(photo.parent) if n != "photo.png"] == written
    assert {(photo.parent / n).stat().st_mode & 0o777 for n in written} == {0o644}
    one_line_error(run(base + ["-o", photo]), 2, "is an input of this command")
    original = photo.read_bytes()
    res = run(base + ["-o", photo, "--overwrite"])
    assert res.exit_code == 0 and photo.read_bytes() != original, res.output


def test_an_edit_that_changes_nothing_is_reported(photo, tiny_model_dir, editor, image):
    black = photo.parent / "black.png"
    Image.fromarray(np.zeros((45, 37), np.uint8)).save(black)
    base = ["edit", photo, "-s", "a red square", "-t", "a blue circle", "-m", tiny_model_dir, *FAST]
    one_line_error(run(base + ["--mask", black]), 3, "is all black")
    one_line_error(run(base + ["-t", "  A RED   square "]), 3, "once case and spacing are ignored")
    assert files_in(photo.parent) == ["black.png", "photo.png"]
    res = run(base + ["--threshold", "1.0"])
    assert res.exit_code == 3 and res.output.startswith("warning:") and "threshold 1" in res.output, res.output
    sidecar = json.loads((photo.parent / "photo_edited.json").read_text())
    assert sidecar["edited"] == [False] and "nothing was pasted" in sidecar["warnings"][0]
    assert np.array_equal(np.asarray(Image.open(photo.parent / "photo_edited.png")), np.asarray(Image.open(photo)))
    res = run(["mask", photo, "-s", "a red square", "-t", "a blue circle", "-m", tiny_model_dir, "--threshold", "1",
               "--set", "mask_noises=2", "-q"])
    assert res.exit_code == 3 and "mask is empty" in res.output and json.loads(
        (photo.parent / "photo_mask.json").read_text())["empty"] is True
    # the Python API says the same
    kw = dict(num_inference_steps=2, mask_noises=2, extra_strengths=(), caption_candidate=False, seed=0)
    result = editor.edit(image, "a red square", "a blue circle", mask_threshold=1.0, **kw)
    assert result.edited == [False] and result.warnings and result.to_dict()["edited"] == [False]
    result = editor.edit(image, "a red square", "a blue circle", mask=np.zeros((32, 32), np.uint8), **kw)
    assert result.edited == [False] and "given mask is empty" in result.warnings[0]
    assert editor.edit(image, "a red square", "a blue circle", **kw).edited == [True]
    with pytest.raises(ValueError, match="once case and spacing"):
        editor.edit(image, "a red square", "A Red  Square", **kw)


def test_nan_in_latents_or_pixels_is_reported_never_saved(photo, tiny_model_dir, editor, image, monkeypatch):
    kw = dict(num_inference_steps=2, mask_noises=2, extra_strengths=(), caption_candidate=False, seed=0)
    poison = lambda editor, step, t, d: {"latents": d["latents"] * float("nan")}  # noqa: E731
    with pytest.raises(NonFiniteError, match="NaN/inf"):
        editor.edit(image, "a red square", "a blue circle", callback_on_step_end=poison, **kw)
    from diffedit.components import Components

    real = Components.decode_latents
    monkeypatch.setattr(Components, "decode_latents", lambda self, z: real(self, z) * float("inf"))
    with pytest.raises(NonFiniteError, match="VAE decoding"):
        editor.edit(image, "a red square", "a blue circle", **kw)
    res = run(["edit", photo, "-s", "a red square", "-t", "a blue circle", "-m", tiny_model_dir, *FAST])
    one_line_error(res, 4, "--dtype fp32")
    assert files_in(photo.parent) == ["photo.png"]


def test_out_of_memory_and_internal_errors_are_one_line(photo, tiny_model_dir, monkeypatch):
    from diffedit import DiffEditor

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(DiffEditor, "edit", oom)
    base = ["edit", photo, "-s", "a red square", "-t", "a blue circle", "-m", tiny_model_dir, *FAST]
    one_line_error(run(base), 4, "--mask-noises")
    monkeypatch.setattr(DiffEditor, "edit", lambda *a, **k: {}["missing"])
    one_line_error(run(base), 1, "internal error: KeyError")
    assert files_in(photo.parent) == ["photo.png"]


# ---------------------------------------------------------------- models: say which file or component is wrong
def test_wrong_model_files_and_folders_are_named(tmp_path, tiny_model_dir, photo):
    text = tmp_path / "model.safetensors"
    text.write_text("this is a text file, not weights")
    with pytest.raises(ModelError, match="is not a safetensors file"):
        load_components(str(text))
    only_index = tmp_path / "only_index"
    only_index.mkdir()
    (only_index / "model_index.json").write_text("{}")
    with pytest.raises(ModelError, match="has no vae"):
        load_components(str(only_index))
    base = ["edit", photo, "-s", "a red square", "-t", "a blue circle", *FAST]
    res = run(base + ["-m", text])
    one_line_error(res, 2, "is not a safetensors file")
    assert "internet" not in res.output and "--config" not in res.output
    one_line_error(run(base + ["-m", only_index]), 2, "has no vae (missing folder vae/)")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ModelError, match="unet"):
        load_components(str(broken))
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match="the unet has no weights"):
        load_components(str(broken))
    shutil.copy(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors", broken / "unet")
    (broken / "vae" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="vae/config.json is not valid JSON"):
        load_components(str(broken))


def test_mask_command_has_max_pixels(photo, no_model):
    one_line_error(run(["mask", photo, "-s", "a red square", "-t", "a blue circle", "--max-pixels", "100"]), 2,
                   "raise max_pixels (--max-pixels)")


def test_every_exif_orientation_in_every_format_and_mode_is_shown_upright(tmp_path):
    """PIL 13's TIFF loader turns some modes by their orientation, leaves others and garbles a few (L, P, RGBA, CMYK,
    I;16 at 5-8): load_image applies the orientation itself, once, for every format."""
    from fuzzing import SAVE_AS, encode

    T = Image.Transpose
    turn = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270,
            7: T.TRANSVERSE, 8: T.ROTATE_90}
    stored = np.zeros((17, 16), np.uint8)
    stored[:6, :5] = 255  # a bright corner, top left as stored
    for fmt in ("TIFF", "PNG", "JPEG", "WEBP"):
        for mode in sorted(SAVE_AS[fmt]):
            if mode.startswith("I;16"):
                image = Image.frombytes(mode, (16, 17), (stored.astype(">u2" if mode == "I;16B" else "<u2") * 257).tobytes())
            else:
                image = Image.fromarray(stored).convert(mode)
            for orientation in range(1, 9):
                path = tmp_path / f"o.{fmt.lower()}"
                path.write_bytes(encode(image, fmt, orientation))
                shown = np.asarray(load_image(path).convert("L")).astype(int)
                upright = Image.fromarray(stored)
                expected = np.asarray(upright.transpose(turn[orientation]) if orientation in turn else upright).astype(int)
                assert shown.shape == expected.shape and np.abs(shown - expected).mean() < 30, (fmt, mode, orientation)


def test_what_the_fuzzer_found(tmp_path, tiny_model_dir, photo):
    """A subnormal smoothing made the Gaussian kernel NaN; a mask strength too low for the steps failed after the model
    had loaded; guidance 1e30 overflowed; a tokenizer without its config padded prompts to 1e30 tokens."""
    for kwargs, text in [(dict(mask_smooth=2.2e-313), "0 (off) or at least 0.01"),
                         (dict(num_inference_steps=2, mask_strength=0.1), "leaves the mask pass no step"),
                         (dict(guidance_scale=1e30), "guidance_scale must be <= 100"),
                         (dict(mask_mean_ratio=1e-300), "mask_mean_ratio must be >= 0.01")]:
        with pytest.raises(ValueError, match=re.escape(text)):
            EditOptions(**kwargs)
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "tokenizer" / "tokenizer_config.json").unlink()
    res = run(["edit", photo, "-s", "a red square", "-t", "a blue circle", "-m", model, *FAST])
    assert res.exit_code == 0, res.output
