"""The ShapeWorld flow model's training (issue 25): the flow-matching objective, a resumable run that leaves a folder
the flow editor loads, and the ShapeEdit flow rows on a tiny flow model."""

import json
import math

import torch

from diffedit.flow.loading import flow_family
from diffedit.shapeworld.train_flow import flow_loss, train_flow


class _Zero(torch.nn.Module):
    """A 'UNet' that predicts zero velocity and records its inputs."""

    def forward(self, x, t, encoder_hidden_states):
        self.seen = (x, t)
        return type("Out", (), {"sample": torch.zeros_like(x)})()


def test_flow_loss_targets_the_velocity_from_data_to_noise():
    z0 = torch.randn(4, 4, 8, 8)
    zero = _Zero()
    loss = flow_loss(zero, torch.zeros(4, 3, 5), z0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    s = torch.sigmoid(torch.randn(4, generator=g))
    noise = torch.randn(z0.shape, generator=g)
    torch.testing.assert_close(loss, (noise - z0).pow(2).mean())  # a zero prediction misses v = noise - z0 by all of it
    x, t = zero.seen
    torch.testing.assert_close(t, s * 1000)  # the timestep is 1000 sigma, as FlowMatchEulerDiscreteScheduler's
    torch.testing.assert_close(x, (1 - s.view(4, 1, 1, 1)) * z0 + s.view(4, 1, 1, 1) * noise)


def test_train_flow_resumes_and_saves_a_flow_unet_folder(tmp_path):
    from diffusers import UNet2DConditionModel

    from diffedit.loading import embedded_model_path

    first = train_flow(tmp_path / "run", steps=2, latents=16, batch_size=4, threads=1, quiet=True, evaluate=False)
    again = train_flow(tmp_path / "run", steps=1, latents=16, batch_size=4, threads=1, quiet=True, evaluate=False)
    assert (first["total_steps"], again["total_steps"]) == (2, 3) and math.isfinite(again["final_loss"])
    model = tmp_path / "run" / "model"
    assert flow_family(model) == "unet"
    assert json.loads((model / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == \
        "FlowMatchEulerDiscreteScheduler"
    stages = json.loads((model / "training.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["init", "flow", "flow"]
    trained = UNet2DConditionModel.from_pretrained(model, subfolder="unet").state_dict()
    base = UNet2DConditionModel.from_pretrained(embedded_model_path(), subfolder="unet").state_dict()
    assert trained.keys() == base.keys()  # the embedded UNet's architecture, started from its weights ...
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # ... and moved by the flow objective


def test_cli_train_flow_checks_then_trains(tmp_path):
    from typer.testing import CliRunner

    from diffedit.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["shapeworld", "train-flow", "-o", str(tmp_path / "run"), "--minutes", "1", "--steps", "1"])
    assert res.exit_code == 2 and "exactly one of --minutes and --steps" in res.output
    res = runner.invoke(app, ["shapeworld", "train-flow", "-o", str(tmp_path / "run"), "--steps", "1", "--init", "x"])
    assert res.exit_code == 2 and "init must be 'embedded' or 'scratch'" in res.output
    res = runner.invoke(app, ["shapeworld", "train-flow", "-o", str(tmp_path / "run"), "--steps", "1", "--latents", "8",
                              "--batch-size", "2", "--threads", "1", "-q", "--no-evaluate"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["total_steps"] == 1
    assert flow_family(tmp_path / "run" / "model") == "unet"
