"""`diffedit shapeworld train/evaluate` on the tiny config, and the inversion round-trip figure."""

import json

import pytest
import torch
from typer.testing import CliRunner

from diffedit.cli import app
from diffedit.shapeworld.evaluate import inversion_psnr, vae_psnr
from diffedit.shapeworld.model import load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sw")
    res = runner.invoke(app, ["shapeworld", "train", "-o", str(out), "--config", "tiny", "--vae-steps", "3",
                              "--unet-steps", "3", "--threads", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert (out / "model" / "model_index.json").is_file()
    return out / "model"


def test_one_step_inversion_round_trip_is_nearly_the_vae_alone(tiny_trained):
    components = load_model(tiny_trained, dtype=torch.float32)
    one_step = inversion_psnr(components, 4, 7, steps=50, strength=0.02)
    same_scenes_vae = vae_psnr(components["vae"], 4, 7)
    assert abs(one_step - same_scenes_vae) < 1.0  # one DDIM step at t = 1 barely moves the latent
    assert one_step <= same_scenes_vae + 0.2  # the round trip adds error, it cannot remove the VAE's


def test_evaluate_command_prints_and_writes_figures(tiny_trained, tmp_path):
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["shapeworld", "evaluate", "-m", str(tiny_trained), "--captions", "4", "--steps", "4",
                              "--scenes", "4", "--device", "cpu", "--json", str(out)])
    assert res.exit_code == 0, res.output
    figures = json.loads(out.read_text())
    acc = figures["generation_accuracy"]
    assert acc["n_captions"] == 4 and 0.0 <= acc["overall"] <= 1.0
    assert figures["vae_psnr_db"] > 0 and figures["inversion_psnr_db"] > 0
    assert "generation accuracy" in res.output and "inversion" in res.output
    bad = runner.invoke(app, ["shapeworld", "evaluate", "-m", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "no model folder" in bad.output
