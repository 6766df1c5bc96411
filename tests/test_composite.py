"""`diffedit composite` (issue 25): another editor's output, globally recoloured, pasted into its input inside a mask."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffedit import DiffEditor
from diffedit.cli import app
from diffedit.compositing import CompositeOptions, composite_edit
from diffedit.masks import dilate
from diffedit.paste import fill_holes, fit_colors, label_components, match_size, remove_specks, undo_colors
from diffedit.shapeworld.world import sample_edit

runner = CliRunner()
GAIN, OFFSET = np.array([0.8, 0.9, 0.7]), np.array([45.0, 10.0, 70.0])  # a bluer, flatter tone, as an editor may give


def instruction_edit(case, seed: int = 0) -> np.ndarray:
    """What a whole-image instruction editor returns: the object changed AND every pixel recoloured, with noise."""
    noise = np.random.default_rng(seed).normal(0.0, 2.0, case.target_image.shape)
    return np.clip(case.target_image * GAIN + OFFSET + noise, 0, 255).round().astype(np.uint8)


def cases(kinds=("color", "both"), n: int = 4, num_objects: int = 2):
    """ShapeEdit cases whose changed object changes colour (a shape-only edit differs only where the shapes do)."""
    out, seed = [], 0
    while len(out) < n:
        case = sample_edit(np.random.default_rng(seed), num_objects=num_objects)
        if case.kind in kinds:
            out.append(case)
        seed += 1
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def check_composite(result, case, edited: np.ndarray, min_iou: float, min_cover: float) -> None:
    """Outside the mask the input bit for bit; on the changed object EDITED's pixels; the mask on the object."""
    out, mask = np.asarray(result.image), result.mask.numpy()
    assert out.shape == case.source_image.shape and mask.any()
    assert np.array_equal(out[~mask], case.source_image[~mask])
    assert (mask & case.mask).sum() >= min_cover * case.mask.sum()
    inside = case.mask & mask
    assert np.array_equal(out[inside], edited[inside])
    assert iou(mask, case.mask) >= min_iou, iou(mask, case.mask)


@pytest.fixture(scope="module")
def embedded() -> DiffEditor:
    return DiffEditor.from_pretrained(progress=False)


def test_difference_mask_removes_the_global_colour_change():
    for case in cases():
        edited = instruction_edit(case)
        naive = np.abs(edited.astype(int) - case.source_image).max(-1) > 0.1 * 255
        assert naive.mean() > 0.5  # the recolouring alone would make most of the image the mask
        result = composite_edit(case.source_image, edited, from_difference=True)
        check_composite(result, case, edited, min_iou=0.85, min_cover=0.99)
        assert result.mask_source == "difference" and result.color_fit.shape == (4, 3)
        # the unchanged object keeps its input pixels
        others = [o.mask() for i, o in enumerate(case.scene.objects) if i != case.index]
        assert all((result.mask.numpy() & other).sum() <= 0.05 * other.sum() for other in others)


def test_prompt_mask_follows_the_changed_words(embedded):
    for case in cases(n=3):
        edited = instruction_edit(case)
        result = composite_edit(case.source_image, edited, case.source, case.target, editor=embedded, seed=0)
        check_composite(result, case, edited, min_iou=0.85, min_cover=0.95)  # snapped to the edges: a pixel off here and there
        other = [o.mask() for i, o in enumerate(case.scene.objects) if i != case.index][0]
        assert (result.mask.numpy() & other).sum() <= 0.05 * other.sum()  # the object the prompts keep is kept
        assert result.mask_source == "prompts" and result.seed == 0 and result.source == case.source


def test_match_colors_undoes_the_recolouring_inside_the_mask():
    case = cases(n=1)[0]
    edited = instruction_edit(case)
    plain = composite_edit(case.source_image, edited, from_difference=True)
    matched = composite_edit(case.source_image, edited, from_difference=True, match_colors=True)
    assert torch.equal(plain.mask, matched.mask)
    obj = case.footprint
    out = np.asarray(matched.image).astype(int)
    assert np.abs(out[obj] - case.target_image[obj]).mean() <= 3  # the new object in the input's tone (noise aside)
    assert np.abs(np.asarray(plain.image).astype(int)[obj] - case.target_image[obj]).mean() > 8


def test_user_mask_and_a_resized_edit():
    case = cases(n=1)[0]
    edited = Image.fromarray(instruction_edit(case)).resize((200, 200))
    mask = np.zeros((128, 128), bool)
    mask[30:60, 40:90] = True
    result = composite_edit(case.source_image, edited, mask=mask, feather=3)
    out = np.asarray(result.image)
    assert "resized it to the input's size" in result.warnings[0] and result.resized_from == (200, 200)
    ramp = result.mask.numpy()
    assert ramp[27:63, 37:93].all() and not ramp[:26].any()  # the mask grown by the 3 px feather, no more
    assert np.array_equal(out[~ramp], case.source_image[~ramp])
    assert np.array_equal(out[mask], np.asarray(match_size(edited, (128, 128))[0])[mask])


def test_fit_colors_recovers_a_gain_and_offset_despite_an_edited_third():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (3, 60, 60), dtype=np.uint8)
    edited = np.clip(image * GAIN[:, None, None] + OFFSET[:, None, None], 0, 255).round()
    edited[:, :20] = 255 - edited[:, :20]  # an edit over a third of the image
    fit = fit_colors(torch.from_numpy(image), torch.from_numpy(edited.astype(np.uint8)), tolerance=0.1)
    assert np.allclose(np.diag(fit[:3].numpy()), GAIN, atol=0.01) and np.allclose(fit[3].numpy(), OFFSET / 255, atol=0.01)
    back = undo_colors(torch.from_numpy(edited.astype(np.uint8)), fit).numpy().astype(int)
    assert np.abs(back[:, 20:] - image[:, 20:]).max() <= 2


def test_specks_holes_and_components():
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[2:9, 2:9] = True
    mask[5, 5] = False  # a hole
    mask[0, 11] = True  # a speck
    labels = label_components(mask)
    assert labels[0, 11] == 11 and labels[2, 2] == 2 * 12 + 2 and set(labels[mask].unique().tolist()) == {11, 26}
    assert not remove_specks(mask, 2)[0, 11] and remove_specks(mask, 2)[2:9, 2:9].sum() == 48
    assert fill_holes(mask)[5, 5] and not fill_holes(mask)[10, 10]
    ring = torch.zeros(12, 12, dtype=torch.bool)
    ring[:, 3] = True  # a wall from border to border: what lies beside it is no hole
    assert torch.equal(fill_holes(ring), ring)


def test_api_errors(embedded):
    case = cases(n=1)[0]
    image, edited = case.source_image, instruction_edit(case)
    for kwargs, match in [
        ({}, "exactly one mask source"),
        ({"source": "a", "target": "b", "editor": embedded, "from_difference": True}, "exactly one mask source"),
        ({"source": "a"}, "both a source and a target"),
        ({"source": "a", "target": "b"}, "needs editor="),
        ({"from_difference": True, "diff_threshold": float("nan")}, "diff_threshold must be a finite number"),
        ({"from_difference": True, "nonsense": 1}, "unknown edit option"),
        ({"mask": np.ones((10, 10), bool)}, "mask is 10x10 but the image is 128x128"),
    ]:
        with pytest.raises(ValueError, match=match):
            composite_edit(image, edited, **kwargs)
    with pytest.raises(ValueError, match="diff_grow must be an integer"):
        CompositeOptions(diff_grow=1.5)


def _files(tmp_path, case=None):
    case = case or cases(n=1)[0]
    Image.fromarray(case.source_image).save(tmp_path / "input.png")
    Image.fromarray(instruction_edit(case)).save(tmp_path / "edited.png")
    return case, tmp_path / "input.png", tmp_path / "edited.png"


def test_cli_writes_the_composite_the_mask_and_the_sidecar(tmp_path):
    case, src, edited = _files(tmp_path)
    res = runner.invoke(app, ["composite", str(src), str(edited), "--mask-from-diff", "--mask-output",
                              str(tmp_path / "m.png"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    out, mask = np.asarray(Image.open(tmp_path / "input_composite.png")), np.asarray(Image.open(tmp_path / "m.png")) > 127
    assert np.array_equal(out[~mask], case.source_image[~mask]) and iou(mask, case.mask) >= 0.8
    sidecar = json.loads((tmp_path / "input_composite.json").read_text())
    assert sidecar["mask_source"] == "difference" and sidecar["edited"] == str(edited)
    assert sidecar["coverage"] == pytest.approx(mask.mean()) and sidecar["options"]["diff_threshold"] == 0.1
    assert "difference mask covers" in res.output


def test_cli_prompt_mask_on_the_embedded_model(tmp_path):
    case, src, edited = _files(tmp_path)
    res = runner.invoke(app, ["composite", str(src), str(edited), "-s", case.source, "-t", case.target, "--seed", "3",
                              "-o", str(tmp_path / "out.png"), "--threads", "1", "-q"])
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["mask_source"] == "prompts" and sidecar["seed"] == 3 and sidecar["target"] == case.target
    assert sidecar["model"] == "shapeworld (embedded)" and sidecar["edit_options"]["mask_threshold"] == 0.5
    out = np.asarray(Image.open(tmp_path / "out.png"))
    outside = ~case.mask
    assert (out[outside] == case.source_image[outside]).all(-1).mean() > 0.97  # the recolouring did not get through


def test_cli_errors_exit_non_zero_with_one_line(tmp_path):
    case, src, edited = _files(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small_mask.png")
    for args, message in [
        ([], "exactly one mask source"),
        (["-s", "a", "-t", "b", "--mask-from-diff"], "(got --source/--target and --mask-from-diff)"),
        (["-s", "a"], "give both --source and --target"),
        (["--mask-from-diff", "--diff-threshold", "2"], "--diff-threshold must be in"),
        (["--mask", str(tmp_path / "small_mask.png")], "mask is 20x20 but the image is 128x128"),
    ]:
        res = runner.invoke(app, ["composite", str(src), str(edited), *args])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    for bad, message in [("broken.png", "cannot read"), ("missing.png", "not found")]:
        res = runner.invoke(app, ["composite", str(src), str(tmp_path / bad), "--mask-from-diff"])
        assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "input_composite.png").exists()
    res = runner.invoke(app, ["composite", str(src), str(src), "--mask-from-diff", "-q"])
    assert res.exit_code == 3 and "mask is empty" in res.output
    res = runner.invoke(app, ["composite", str(src), str(edited), "-s", case.source, "-t", case.source.upper()])
    assert res.exit_code == 3 and "equals the source prompt" in res.output


def test_readme_composite_example_runs_as_written(tmp_path, monkeypatch):
    """README's `diffedit composite` block, line by line, in a fresh folder: both masks keep the background exact."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"### Composite another editor's output.*?```bash\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    for line in block.replace("\\\n", " ").splitlines():
        args = shlex.split(line, comments=True)
        if args[0] == "diffedit":
            res = runner.invoke(app, args[1:])
            assert res.exit_code == 0, (line, res.output)
        else:
            assert args[0] == "python"
            subprocess.run([sys.executable, *args[1:]], check=True)
    source = np.asarray(Image.open("diffedit-demo/input.png"))
    truth = np.asarray(Image.open("diffedit-demo/ground_truth.png"))
    changed = (source != truth).any(-1)
    mask = np.asarray(Image.open("mask.png")) > 127
    assert iou(mask, changed) >= 0.85
    for out in ("composite.png", "composite_prompts.png"):
        composite = np.asarray(Image.open(out))
        kept = ~dilate(torch.from_numpy(changed)[None], 3)[0].numpy()  # the prompt mask may reach past the object
        assert (composite[kept] == source[kept]).all(-1).mean() > 0.98, out
    assert json.loads(Path("composite_prompts.json").read_text())["mask_source"] == "prompts"

