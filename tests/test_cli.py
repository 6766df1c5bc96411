"""The command line end to end on a tiny local model folder."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import diffedit
from diffedit import EditOptions
from diffedit.cli import app

from conftest import scene

runner = CliRunner()


def _write_input(tmp_path, size=(37, 45)):
    rgba = np.concatenate([scene(*size), np.full((size[1], size[0], 1), 255, np.uint8)], axis=-1)
    path = tmp_path / "photo.png"
    Image.fromarray(rgba).save(path)  # RGBA and not a multiple of the VAE factor
    return path


def test_edit_end_to_end(tmp_path, tiny_model_dir):
    src = _write_input(tmp_path)
    res = runner.invoke(app, [
        "edit", str(src), "--source", "a red square", "--target", "a blue circle", "--model", str(tiny_model_dir),
        "--steps", "6", "--seed", "7", "--mask-output", str(tmp_path / "mask.png"), "--panel", str(tmp_path / "panel.png"),
        "--quiet",
    ])
    assert res.exit_code == 0, res.output
    out = tmp_path / "photo_edited.png"
    assert Image.open(out).size == (37, 45)
    assert Image.open(tmp_path / "mask.png").size == (37, 45)
    assert Image.open(tmp_path / "panel.png").size == (3 * 37 + 8, 45)
    sidecar = json.loads((tmp_path / "photo_edited.json").read_text())
    assert sidecar["seed"] == 7 and sidecar["model"] == str(tiny_model_dir)
    assert sidecar["options"]["num_inference_steps"] == 6 and sidecar["options"]["strength"] == 1.0
    assert sidecar["options"]["feather"] == 0 and sidecar["options"]["composite"] is True
    assert sidecar["jobs"][0]["target"] == "a blue circle" and sidecar["outputs"] == [str(out)]
    assert sidecar["candidates"] == ["r=1", "r=0.8 caption"] and len(sidecar["candidate_scores"][0]) == 2
    assert sidecar["chosen"][0] == sidecar["candidates"][int(np.argmax(sidecar["candidate_scores"][0]))]
    # the same command again gives the same pixels (the seed is all the randomness)
    first = np.asarray(Image.open(out)).copy()
    runner.invoke(app, ["edit", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir),
                        "--steps", "6", "--seed", "7", "-q"])
    assert np.array_equal(first, np.asarray(Image.open(out)))


def test_edit_candidate_options(tmp_path, tiny_model_dir):
    src = _write_input(tmp_path)
    base = ["edit", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir), "--steps", "4", "-q"]
    for flags, expected in [
        (["--one-candidate"], ["r=1"]),
        (["--set", "noise_candidates=0.5"], ["r=1", "r=1 noise 0.5", "r=0.8 caption"]),
        (["--set", "caption_candidate=false", "--set", "extra_strengths=[0.9, 0.8]"], ["r=1", "r=0.9", "r=0.8"]),
    ]:
        res = runner.invoke(app, base + flags)
        assert res.exit_code == 0, res.output
        sidecar = json.loads((tmp_path / "photo_edited.json").read_text())
        assert sidecar["candidates"] == expected
    assert sidecar["options"]["extra_strengths"] == [0.9, 0.8] and sidecar["options"]["caption_candidate"] is False
    res = runner.invoke(app, base + ["--set", "extra_strengths=[1.5]"])
    assert res.exit_code == 2 and "extra_strengths" in res.output
    res = runner.invoke(app, base + ["--set", "noise_candidates=0"])
    assert res.exit_code == 2 and "noise_candidates" in res.output
    # a preset is the base the flags change: --steps 4 stays, the rest is the preset's
    res = runner.invoke(app, base + ["--preset", "quality", "--mask-noises", "3"])
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "photo_edited.json").read_text())
    quality = EditOptions.preset("quality", num_inference_steps=4, mask_noises=3).to_dict()
    assert sidecar["options"] == json.loads(json.dumps(quality))
    res = runner.invoke(app, base + ["--preset", "warp"])
    assert res.exit_code == 2 and "unknown preset 'warp'" in res.output


def test_edit_defaults_are_the_librarys_and_set_reaches_every_field(tmp_path, tiny_model_dir):
    from diffedit import EditOptions

    src = _write_input(tmp_path)
    base = ["edit", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir), "--steps", "2",
            "--one-candidate", "-q"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    recorded = json.loads((tmp_path / "photo_edited.json").read_text())["options"]
    expected = EditOptions(num_inference_steps=2, extra_strengths=(), noise_candidates=(), caption_candidate=False,
                           inpaint_candidate=False)
    assert recorded == json.loads(json.dumps(expected.to_dict()))
    # the ablation switches that were flags of their own: --snap-edges, --no-edit-snap, --edit-trim, --whole-prompt-mask
    sets = ["mask_snap=true", "edit-snap=false", "edit_trim=0.2", "mask_per_change=false", "mask_reference=",
            "mask_clamp=mean_ratio"]
    res = runner.invoke(app, base + [arg for item in sets for arg in ("--set", item)])
    assert res.exit_code == 0, res.output
    recorded = json.loads((tmp_path / "photo_edited.json").read_text())["options"]
    assert recorded["mask_snap"] is True and recorded["edit_snap"] is False and recorded["edit_trim"] == 0.2
    assert recorded["mask_per_change"] is False and recorded["mask_reference"] == "" and recorded["mask_clamp"] == "mean_ratio"
    # --set comes after the command's own options
    res = runner.invoke(app, base + ["--strength", "0.6", "--set", "strength=0.7", "--set", "decode_threshold=null"])
    assert res.exit_code == 0, res.output
    recorded = json.loads((tmp_path / "photo_edited.json").read_text())["options"]
    assert recorded["strength"] == 0.7 and recorded["decode_threshold"] is None


def test_set_errors_are_one_line(tmp_path):
    src = _write_input(tmp_path)
    base = ["edit", str(src), "-s", "a", "-t", "b"]
    for args, message in [
        (["--set", "magic=1"], "unknown edit option(s) ['magic']; known:"),
        (["--set", "strength"], "--set takes NAME=VALUE"),
        (["--set", "edit_snap=yes"], "edit_snap takes bool"),
        (["--set", "mask_noises=2.5"], "mask_noises takes int"),
        (["--set", "extra_strengths=[\"a\"]"], "extra_strengths takes tuple[float, ...]"),
    ]:
        for command in (base, ["mask", *base[1:]]):
            res = runner.invoke(app, command + args)
            assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)


def test_help_lists_the_everyday_options_and_set():
    text = runner.invoke(app, ["edit", "--help"], terminal_width=200).output
    for flag in ("--steps", "--strength", "--guidance", "--negative-prompt", "--threshold", "--decode-threshold",
                 "--mask-noises", "--smooth", "--dilate", "--feather", "--no-composite", "--one-candidate", "--mask ",
                 "--seed", "--model", "--config", "--device", "--dtype", "--threads", "--max-pixels", "--quiet", "--set"):
        assert flag in text, flag
    for flag in ("--noise-candidate", "--snap-edges", "--no-edit-snap", "--edit-trim", "--whole-prompt-mask",
                 "--extra-strength", "--no-caption-candidate"):
        assert flag not in text, flag
    assert "docs/options.md" in text


def test_edit_several_targets_and_user_mask(tmp_path, tiny_model_dir):
    src = _write_input(tmp_path)
    m = np.zeros((45, 37), np.uint8)
    m[10:20, 10:20] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    res = runner.invoke(app, [
        "edit", str(src), "-s", "a red square", "-t", "a blue circle", "-t", "a dog", "-m", str(tiny_model_dir),
        "--steps", "4", "--mask", str(tmp_path / "m.png"), "-o", str(tmp_path / "out.png"), "-q",
    ])
    assert res.exit_code == 0, res.output
    outs = [np.asarray(Image.open(tmp_path / f"out_{i}.png")) for i in (1, 2)]
    original = np.asarray(Image.open(src).convert("RGB"))
    for o in outs:
        assert np.array_equal(o[m == 0], original[m == 0])
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert [j["target"] for j in sidecar["jobs"]] == ["a blue circle", "a dog"] and sidecar["user_mask"]


def test_mask_command(tmp_path, tiny_model_dir):
    src = _write_input(tmp_path)
    res = runner.invoke(app, ["mask", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir),
                              "-o", str(tmp_path / "m.png"), "--soft-output", str(tmp_path / "soft.png"), "--seed", "1"])
    assert res.exit_code == 0, res.output
    m = np.asarray(Image.open(tmp_path / "m.png"))
    assert m.shape == (45, 37) and set(np.unique(m)) <= {0, 255}
    assert json.loads((tmp_path / "m.json").read_text())["seed"] == 1
    res = runner.invoke(app, ["mask", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir),
                              "-o", str(tmp_path / "m.png"), "--seed", "1", "--set", "mask_snap=true", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["options"]["mask_snap"] is True


def test_cli_errors_are_one_line_without_traceback(tmp_path, tiny_model_dir):
    src = _write_input(tmp_path)
    cases = [
        (["edit", str(tmp_path / "nope.png"), "-s", "a", "-t", "b"], "not found"),
        (["edit", str(src), "-s", "a", "-t", "b", "--strength", "2"], "strength"),
        (["edit", str(src), "-s", "a", "-t", "b", "--dtype", "fp8"], "--dtype"),
        (["edit", str(src), "-s", "a", "-t", "b", "-m", str(tmp_path / "nomodel")], "not found"),
        (["edit", str(src), "-s", "a", "-t", "", "-m", str(tiny_model_dir)], "target prompt is empty"),
        (["edit", str(src), "-s", "a", "-t", "b", "--max-pixels", "100"], "above the limit"),
        (["edit", str(src), "-s", "a", "-t", "b", "--feather", "-1"], "feather must be >= 0"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output, (args, res.output)


def test_imports_stay_light_and_one_way():
    """The CLI imports no optional extra (scipy, matplotlib) nor diffusers' pipelines; the benchmark library never
    imports the CLI."""
    code = (
        "import sys; import diffedit.bench.quality, diffedit.bench.speed, diffedit.bench.masks, diffedit.bench.models; "
        "assert not [m for m in sys.modules if m.startswith('diffedit.cli')]; import diffedit.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('scipy', 'matplotlib'))} "
        "| {m for m in sys.modules if m.startswith('diffusers.pipelines.stable_diffusion_diffedit')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


CORE_INSTALL = """
import sys
sys.modules.update(scipy=None, matplotlib=None)  # as after `pip install diffedit` without the extras
import numpy as np
from typer.testing import CliRunner
from diffedit import EditOptions
from diffedit.cli import app
from diffedit.shapeworld.scoring import score_edit
from diffedit.shapeworld.world import sample_edit
image, model, out = sys.argv[1:]
case = sample_edit(np.random.default_rng(0), kind="color", num_objects=1)
assert score_edit(case.target_image, case, case.mask)["success"]  # what `diffedit demo` reports
runner = CliRunner()
res = runner.invoke(app, ["edit", image, "-s", "a red square", "-t", "a blue circle", "-m", model, "--steps", "2",
                          "--one-candidate", "-o", out, "-q"])
assert res.exit_code == 0, res.output
res = runner.invoke(app, ["bench", "quality", "--cases", "1", "--plot", "q.png", "-q"])
assert res.exit_code == 2 and "pip install 'diffedit[bench]'" in res.output, res.output
res = runner.invoke(app, ["shapeworld", "evaluate"])
assert res.exit_code == 2 and "pip install 'diffedit[train]'" in res.output, res.output
"""


def test_core_install_without_extras_edits_and_names_the_extra_it_lacks(tmp_path, tiny_model_dir):
    src = _write_input(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(diffedit.__file__).resolve().parents[1])}  # this checkout, from any cwd
    out = subprocess.run([sys.executable, "-c", CORE_INSTALL, str(src), str(tiny_model_dir), str(tmp_path / "out.png")],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "out.png").is_file()


def test_console_script_is_installed():
    """The `diffedit` script that installing the package writes beside this Python (not `python -m`)."""
    script = shutil.which("diffedit", path=str(Path(sys.executable).parent))
    assert script, f"no diffedit console script in {Path(sys.executable).parent}: pip install -e '.[test]'"
    out = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(command in out.stdout for command in ("edit", "mask", "demo", "shapeworld", "bench")), out.stdout


def test_options_doc_lists_every_field_with_its_default():
    from dataclasses import asdict, fields

    from diffedit import EditOptions

    doc = (Path(__file__).resolve().parents[1] / "docs" / "options.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[2].startswith("`"):
            rows[cells[0].strip("`")] = json.loads(cells[2].strip("`"))
    defaults = json.loads(json.dumps(asdict(EditOptions())))
    assert list(rows) == [f.name for f in fields(EditOptions)]
    assert rows == defaults


def test_options_doc_lists_every_preset_with_its_fields():
    import re

    from diffedit.results import PRESETS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "options.md").read_text()
    rows = {}
    for line in doc.split("## Presets", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0].startswith("`"):
            pairs = re.findall(r"`(\w+)=([^`]+)`", cells[1])
            rows[cells[0].strip("`")] = {k: json.loads(v) for k, v in pairs}
    assert rows == json.loads(json.dumps(PRESETS))
