"""The embedded ShapeWorld model as a user meets it: README's example and `diffedit demo`."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffedit.cli import app
from diffedit.loading import embedded_model_path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_embedded_model_is_shipped_within_budget():
    path = embedded_model_path()
    assert (path / "model_index.json").is_file()
    files = [p for p in path.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    assert all(p.stat().st_size <= 16 * 2**20 for p in files)
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert {p.parent.name for p in weights} >= {"vae", "unet", "text_encoder"}
    info = json.loads((path / "training.json").read_text())
    assert "config" in info and "command" in info  # how they were trained
    assert info["figures"]["vae_psnr"] > 30 and info["figures"]["generation_accuracy"]["overall"] > 0.9


def test_embedded_inpainter_is_shipped_within_budget_and_inpaints():
    from diffedit import DiffEditor
    from diffedit.loading import embedded_inpaint_path
    from diffedit.shapeworld.scoring import score_edit
    from diffedit.shapeworld.world import edit_cases

    path = embedded_inpaint_path()
    files = [p for p in [*path.rglob("*"), *embedded_model_path().rglob("*")] if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20  # both models together: issue 21's budget
    info = json.loads((path / "training.json").read_text())
    assert info["stages"] and all(s["stage"] == "inpaint" for s in info["stages"])  # how it was trained
    editor = DiffEditor.from_pretrained(progress=False)  # the embedded model loads its inpainter
    assert editor.inpainter and editor.components.inpaint_unet.config.in_channels == 9
    # the inpainter alone, inside the ground-truth masks of six edits (two of each kind), draws the target
    cases = edit_cases(6, 4242)
    result = editor.edit([c.source_image for c in cases], [c.source for c in cases], [c.target for c in cases],
                         mask=[c.mask.astype(np.uint8) * 255 for c in cases], seed=0, caption_candidate=False)
    assert result.candidates == ["r=1 inpaint"]
    rows = [score_edit(np.asarray(im), c, None) for im, c in zip(result.images, cases)]
    assert sum(r["success"] for r in rows) >= 4, rows


def test_embedded_flow_model_is_shipped_within_budget_and_edits():
    from diffedit.flow.editor import FlowEditor
    from diffedit.flow.loading import flow_family
    from diffedit.loading import embedded_flow_path, embedded_inpaint_path
    from diffedit.shapeworld.scoring import score_edit
    from diffedit.shapeworld.world import edit_cases

    path = embedded_flow_path()
    assert flow_family(path) == "unet"
    files = [p for root in (path, embedded_model_path(), embedded_inpaint_path()) for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 60 * 2**20  # the three models together: issue 25's budget
    info = json.loads((path / "training.json").read_text())
    assert [s["stage"] for s in info["stages"]][0] == "init" and info["figures"]["held_out_loss"] < 0.5 * 1.2258
    editor = FlowEditor.from_pretrained(path, progress=False)
    cases = edit_cases(6, 4242)  # FlowEdit inside the ground-truth masks of six edits (two of each kind)
    result = editor.edit([c.source_image for c in cases], [c.source for c in cases], [c.target for c in cases],
                         mask=[c.mask.astype(np.uint8) * 255 for c in cases], seed=0, strength=0.8, guidance_scale=5.0,
                         num_inference_steps=25)
    rows = [score_edit(np.asarray(im), c, None) for im, c in zip(result.images, cases)]
    assert sum(r["success"] for r in rows) >= 4, rows


def test_cli_names_the_embedded_models(tmp_path):
    """`-m shapeworld` is the embedded DiffEdit model, `-m shapeworld-flow` the embedded flow model."""
    from diffedit.loading import embedded_flow_path
    from diffedit.shapeworld.world import edit_cases

    case = edit_cases(1, 4242)[0]
    Image.fromarray(case.source_image).save(tmp_path / "in.png")
    runner = CliRunner()
    res = runner.invoke(app, ["mask", str(tmp_path / "in.png"), "-s", case.source, "-t", case.target, "-m", "shapeworld",
                              "-o", str(tmp_path / "m.png"), "--seed", "0", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["edit", str(tmp_path / "in.png"), "-s", case.source, "-t", case.target, "-m",
                              "shapeworld-flow", "--flow-decoder", "inverted", "-r", "0.8", "-g", "10", "--steps", "5",
                              "-o", str(tmp_path / "e.png"), "--seed", "0", "-q"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["family"] == "unet" and record["decoder"] == "inverted" and record["model"] == str(embedded_flow_path())


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    edited = Image.open(tmp_path / "edited.png")
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert edited.size == (128, 128) and mask.shape == (128, 128) and mask.any()


@pytest.mark.slow
def test_readme_composed_steps_run_as_written(tmp_path, monkeypatch):
    """README's second Python block (mask preview, one inversion, several edits) after its first, as a reader runs them."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks[:2]:
        exec(compile(block, "README.md", "exec"), scope)
    direct = scope["editor"](scope["case"].source_image, scope["source"], scope["case"].target, seed=0)
    assert np.array_equal(np.asarray(scope["edited"].image), np.asarray(direct.image))
    assert scope["other"].targets == ["a blue triangle on a checkered background"] and "inversion" not in scope["other"].timings


def test_demo_writes_every_file(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--output-dir", str(tmp_path / "d"), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    for name in ["input.png", "mask.png", "output.png", "ground_truth.png", "panel.png", "result.json"]:
        assert (tmp_path / "d" / name).is_file(), name
    record = json.loads((tmp_path / "d" / "result.json").read_text())
    assert record["kind"] == "color" and set(record["scores"]) >= {"mask_iou", "background_psnr", "success"}
    inp, out = (np.asarray(Image.open(tmp_path / "d" / n)) for n in ("input.png", "output.png"))
    outside = np.asarray(Image.open(tmp_path / "d" / "mask.png")) == 0
    assert np.array_equal(inp[outside], out[outside])  # the composite keeps the background exact
    assert "mask IoU" in res.output
    assert f"kept candidate {record['chosen'][0]} of r=1 inpaint, r=0.8 caption" in res.output
