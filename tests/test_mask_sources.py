"""Mask sources (issue 20): EditOptions.mask_source picks the mask stage in place of the method's own (noise
difference, cross-attention, both combined); `diffedit edit --mask-source noise|attention|both|FILE`."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffedit import EditOptions
from diffedit.cli import app
from diffedit.stages.attention_mask import combine_maps
from diffedit.stages.registry import MASK_SOURCES, mask_of

KW = dict(num_inference_steps=10, mask_noises=2)


def test_mask_of_is_the_sources_stage_else_the_methods():
    assert mask_of(EditOptions()) == "noise_difference"
    assert mask_of(EditOptions(method="diffedit_attention_mask")) == "cross_attention"
    assert mask_of(EditOptions(method="diffedit_attention_mask", mask_source="noise")) == "noise_difference"
    assert mask_of(EditOptions(mask_source="both")) == "noise_and_attention"
    assert mask_of(EditOptions(method="diffedit_p2p", mask_source="attention")) == "cross_attention"
    assert set(MASK_SOURCES) == {"noise", "attention", "both"}
    with pytest.raises(ValueError, match="mask_source must be"):
        EditOptions(mask_source="ink")
    with pytest.raises(ValueError, match="without a mask"):
        EditOptions(method="p2p", mask_source="both")


def test_combine_maps_product_needs_both_and_mean_takes_either():
    a = torch.tensor([[1.0, 1.0, 0.0, 0.25]])
    b = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    assert torch.allclose(combine_maps(a, b, "product"), torch.tensor([[1.0, 0.0, 0.0, 0.5]]))
    assert torch.allclose(combine_maps(a, b, "mean"), torch.tensor([[1.0, 0.5, 0.0, 0.625]]))
    with pytest.raises(ValueError, match="unknown combination"):
        combine_maps(a, b, "max")


def test_each_source_gives_its_stages_mask_and_both_lies_between(editor, image):
    masks = {s: editor.mask(image, "a red square", "a blue circle", seed=2, mask_source=s, **KW) for s in MASK_SOURCES}
    own = editor.mask(image, "a red square", "a blue circle", seed=2, **KW)
    attention = editor.mask(image, "a red square", "a blue circle", seed=2, method="diffedit_attention_mask", **KW)
    assert torch.equal(masks["noise"].soft, own.soft) and torch.equal(masks["attention"].soft, attention.soft)
    both = masks["both"].soft
    assert not torch.equal(both, own.soft) and not torch.equal(both, attention.soft)
    assert both.min() >= 0 and both.max() <= 1 and masks["both"].mask.any()


def test_an_edit_with_the_both_source_keeps_the_outside_exact(editor, image):
    res = editor.edit(image, "a red square", "a blue circle", seed=2, mask_source="both", **KW)
    previewed = editor.mask(image, "a red square", "a blue circle", seed=2, mask_source="both", **KW)
    assert res.options.mask_source == "both" and torch.equal(previewed.soft, res.soft)
    outside = ~(np.asarray(res.mask_image) > 0)
    assert outside.any() and np.array_equal(np.asarray(res.image)[outside], np.asarray(image)[outside])


def _write(tmp_path):
    img = np.zeros((45, 37, 3), np.uint8)
    img[10:30, 8:28] = (220, 30, 30)
    Image.fromarray(img).save(tmp_path / "in.png")
    m = np.zeros((45, 37), np.uint8)
    m[10:20, 10:20] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    return tmp_path / "in.png", tmp_path / "m.png"


def test_cli_mask_source_names_a_source_or_a_file(tmp_path, tiny_model_dir):
    import json

    runner = CliRunner()
    src, mask = _write(tmp_path)
    base = ["edit", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir), "--steps", "4",
            "--mask-noises", "2", "-q"]
    res = runner.invoke(app, [*base, "--mask-source", "attention", "-o", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "a.json").read_text())["options"]["mask_source"] == "attention"
    res = runner.invoke(app, [*base, "--mask-source", str(mask), "-o", str(tmp_path / "f.png")])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "f.json").read_text())
    assert record["user_mask"] == str(mask) and record["options"]["mask_source"] is None
    out, original = np.asarray(Image.open(tmp_path / "f.png")), np.asarray(Image.open(src).convert("RGB"))
    assert np.array_equal(out[30:], original[30:])  # far outside the user's mask: exact
    res = runner.invoke(app, [*base, "--mask-source", str(mask), "--mask", str(mask), "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "give one" in res.output


def test_cli_mask_command_takes_a_mask_source(tmp_path, tiny_model_dir):
    import json

    runner = CliRunner()
    src, _ = _write(tmp_path)
    base = ["mask", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir), "--seed", "3",
            "--mask-noises", "2", "-q"]
    soft = {}
    for source in ("noise", "attention"):
        res = runner.invoke(app, [*base, "--mask-source", source, "-o", str(tmp_path / f"{source}.png"),
                                  "--soft-output", str(tmp_path / f"{source}_soft.png")])
        assert res.exit_code in (0, 3), res.output
        assert json.loads((tmp_path / f"{source}.json").read_text())["options"]["mask_source"] == source
        soft[source] = np.asarray(Image.open(tmp_path / f"{source}_soft.png"))
    assert not np.array_equal(soft["noise"], soft["attention"])  # the flag reached the mask stage
    res = runner.invoke(app, [*base, "--mask-source", "edges", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "mask_source" in res.output and not (tmp_path / "x.png").exists()
