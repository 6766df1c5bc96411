"""SD3, FLUX and flow-UNet diffusers folders through the CLI (`diffedit edit`, `mask`, `composite`) and
FlowEditor.from_pretrained: the folder's model_index.json picks the flow editor."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffedit.cli import app
from diffedit.flow.editor import FlowEditor
from diffedit.flow.loading import flow_family
from tiny_flow import TINY, save_tiny_flow

runner = CliRunner()
FAST = ["--steps", "4", "--mask-noises", "2", "--seed", "0", "-q"]


@pytest.fixture(scope="module", params=list(TINY))
def folder(request, tmp_path_factory):
    parts = TINY[request.param]()
    return request.param, save_tiny_flow(parts, tmp_path_factory.mktemp(request.param) / "model")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    arr = np.full((32, 32, 3), 200, np.uint8)
    arr[8:24, 8:24] = (220, 30, 30)
    path = tmp_path_factory.mktemp("img") / "in.png"
    Image.fromarray(arr).save(path)
    return path


def test_folder_loads_as_its_family(folder, image_path):
    family, path = folder
    assert flow_family(path) == family and flow_family(path.parent) is None
    loaded = FlowEditor.from_pretrained(path, progress=False)
    built = FlowEditor(TINY[family](), progress=False)
    a = loaded.mask(Image.open(image_path), "a red square", "a blue circle", seed=0, num_inference_steps=4, mask_noises=2)
    b = built.mask(Image.open(image_path), "a red square", "a blue circle", seed=0, num_inference_steps=4, mask_noises=2)
    torch.testing.assert_close(a.soft, b.soft)  # the saved weights are the ones loaded


@pytest.mark.parametrize("decoder", ["flowedit", "inverted"])
def test_cli_edit(folder, image_path, tmp_path, decoder):
    family, model = folder
    out = tmp_path / "out.png"
    res = runner.invoke(app, ["edit", str(image_path), "-s", "a red square", "-t", "a blue circle", "-m", str(model),
                              "-o", str(out), "--mask-output", str(tmp_path / "m.png"), "--flow-decoder", decoder, *FAST])
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["decoder"] == decoder and record["family"] == family and record["model"] == str(model)
    edited, inp = np.array(Image.open(out)), np.array(Image.open(image_path))
    mask = np.array(Image.open(tmp_path / "m.png")) > 0
    assert edited.shape == inp.shape and (edited[~mask] == inp[~mask]).all() and (edited[mask] != inp[mask]).any()


def test_cli_mask_and_composite(folder, image_path, tmp_path):
    _, model = folder
    res = runner.invoke(app, ["mask", str(image_path), "-s", "a red square", "-t", "a blue circle", "-m", str(model),
                              "-o", str(tmp_path / "mask.png"), "--seed", "0", "-q"])
    assert res.exit_code == 0, res.output
    assert (np.array(Image.open(tmp_path / "mask.png")) > 0).any()
    other = np.zeros((32, 32, 3), np.uint8)  # "another editor's" output: black everywhere (--no-snap: a random model's
    #   mask may lie on flat grey, which the snap's trim to the background would rightly drop)
    Image.fromarray(other).save(tmp_path / "other.png")
    res = runner.invoke(app, ["composite", str(image_path), str(tmp_path / "other.png"), "-s", "a red square",
                              "-t", "a blue circle", "-m", str(model), "-o", str(tmp_path / "c.png"),
                              "--mask-output", str(tmp_path / "cm.png"), "--seed", "0", "-q", "--no-snap"])
    assert res.exit_code == 0, res.output
    comp, inp = np.array(Image.open(tmp_path / "c.png")), np.array(Image.open(image_path))
    mask = np.array(Image.open(tmp_path / "cm.png")) > 0
    assert mask.any() and (comp[~mask] == inp[~mask]).all() and (comp[mask] == 0).all()


def test_cli_flow_decoder_needs_a_flow_model(image_path, tmp_path, folder):
    _, model = folder
    res = runner.invoke(app, ["edit", str(image_path), "-s", "a red square", "-t", "a blue circle", "-m", str(model),
                              "-o", str(tmp_path / "x.png"), "--flow-decoder", "ddim", *FAST])
    assert res.exit_code == 2 and "unknown --flow-decoder" in res.output
    other = runner.invoke(app, ["edit", str(image_path), "-s", "a red square", "-t", "a blue circle",
                                "-o", str(tmp_path / "y.png"), "--flow-decoder", "flowedit", *FAST])
    assert other.exit_code == 2 and "flow models only" in other.output and not (tmp_path / "y.png").exists()


def test_cli_flow_model_refuses_an_inpainting_model(image_path, tmp_path, folder):
    """FlowEdit decodes without an inpainter: naming one is an error, not silently dropped ('none' and 'auto' pass)."""
    _, model = folder
    args = ["edit", str(image_path), "-s", "a red square", "-t", "a blue circle", "-m", str(model), *FAST]
    refused = runner.invoke(app, [*args, "-o", str(tmp_path / "x.png"), "--inpaint-model", str(model)])
    assert refused.exit_code == 2 and "takes no --inpaint-model" in refused.output and not (tmp_path / "x.png").exists()
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "y.png"), "--inpaint-model", "none"]).exit_code == 0


def test_a_folder_of_another_pipeline_is_no_flow_model(tmp_path):
    from diffedit.errors import ModelError

    index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert flow_family(tmp_path) is None  # SD's layout with a noise scheduler: DiffEditor's, not the flow editor's
    with pytest.raises(ModelError, match="not an SD3, FLUX or flow-UNet"):
        FlowEditor.from_pretrained(tmp_path)
    index["scheduler"][1] = "FlowMatchEulerDiscreteScheduler"
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert flow_family(tmp_path) == "unet"
