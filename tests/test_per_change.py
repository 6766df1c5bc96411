"""Per-change masks: a target that changes several words is also mapped one change at a time."""

import numpy as np
import pytest
import torch

from diffedit.masks import merge_change_maps
from diffedit.prompts import single_changes
from diffedit.results import EditOptions
from diffedit.stages import NoiseDifferenceMask, NoiseStreams, mask_changes, prepare_batch


@pytest.mark.parametrize(
    "source, target, expected",
    [
        ("a red circle on a gray background", "a blue square on a gray background",
         ["a blue circle on a gray background", "a red square on a gray background"]),
        ("a cat sitting on a sofa", "a dog sitting on a wooden chair",  # a run of another length is one change
         ["a dog sitting on a sofa", "a cat sitting on a wooden chair"]),
        ("a red circle and a blue square", "a red circle and a green square", []),  # one change: the target itself
        ("a red square", "a red square", []),
        ("", "a dog", []),
        ("a b c d e", "v w x y z", []),  # five changes: more than max_changes
    ],
)
def test_single_changes(source, target, expected):
    assert single_changes(source, target) == expected


def test_single_changes_respects_max_changes():
    assert len(single_changes("a b c", "x y z", max_changes=3)) == 3
    assert single_changes("a b c", "x y z", max_changes=2) == []


def test_merge_change_maps_finds_a_weak_change_at_its_own_scale():
    full = torch.zeros(8, 8)
    full[1, 1], full[5, 5] = 10.0, 1.0  # the colour change dominates, the new shape's area is weak
    part = torch.zeros(1, 8, 8)
    part[0, 5, 5], part[0, 1, 1] = 3.0, 0.3
    merged = merge_change_maps(full, part, quantile=1.0)
    # each map rescaled to [0, 1] on its own (full: 1 and 0.1; part: 0.1 and 1), the max, times full's top (10)
    expected = torch.zeros(8, 8)
    expected[1, 1], expected[5, 5] = 10.0, 10.0
    assert torch.allclose(merged, expected)
    assert torch.allclose(merge_change_maps(full, torch.zeros(0, 8, 8), quantile=1.0), full)


class _CountingUNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet, self.rows = unet, 0

    def forward(self, x, t, **kw):
        self.rows += x.shape[0]
        return self.unet(x, t, **kw)


def _maps(editor, image, source, target, **opts):
    options = EditOptions(num_inference_steps=10, **opts)
    parts = editor.components
    batch = prepare_batch(image, source, target, vae_scale_factor=parts.vae_scale_factor, max_pixels=None)
    counter = parts.denoiser = _CountingUNet(editor.unet)
    maps = NoiseDifferenceMask.noise_maps(
        parts, batch, parts.encode_images(batch.pixels), options, NoiseStreams((3, 4)), mask_changes(batch, options)
    )
    parts.denoiser = editor.unet
    return maps, counter.rows


def test_noise_maps_merge_each_single_change(editor, image):
    merged, rows = _maps(editor, image, "a red square", "a blue circle")
    whole, whole_rows = _maps(editor, image, "a red square", "a blue circle", mask_per_change=False)
    parts = [_maps(editor, image, "a red square", p, mask_per_change=False)[0][0] for p in ("a blue square", "a red circle")]
    n = EditOptions().mask_noises
    assert whole_rows == 2 * n and rows == 4 * n  # reference + target, plus the two single changes
    assert torch.allclose(merged[0], merge_change_maps(whole[0], torch.stack(parts)), atol=1e-6)
    assert not torch.allclose(merged, whole)


def test_noise_maps_of_a_single_change_are_unchanged(editor, image):
    one, rows = _maps(editor, image, "a red square", ["a blue square", "a blue circle"])
    whole, whole_rows = _maps(editor, image, "a red square", ["a blue square", "a blue circle"], mask_per_change=False)
    assert torch.equal(one[0], whole[0]) and not torch.equal(one[1], whole[1])
    assert rows == whole_rows + 2 * EditOptions().mask_noises  # only the second job's two changes are added


def test_cli_sets_the_whole_prompt_mask(tmp_path, tiny_model_dir):
    import json

    from typer.testing import CliRunner

    from diffedit.cli import app
    from test_cli import _write_input

    src = _write_input(tmp_path)
    base = ["edit", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir), "--steps", "4", "-q",
            "--seed", "1", "--one-candidate"]
    for flags in ([], ["--set", "mask_per_change=false"]):
        res = CliRunner().invoke(app, base + flags)
        assert res.exit_code == 0, res.output
        sidecar = json.loads((tmp_path / "photo_edited.json").read_text())
        assert sidecar["options"]["mask_per_change"] is (not flags)
        assert sidecar["jobs"][0]["mask_changes"] == ([] if flags else ["a blue square", "a red circle"])
    res = CliRunner().invoke(app, ["mask", str(src), "-s", "a red square", "-t", "a blue circle", "-m", str(tiny_model_dir),
                                   "--set", "mask_per_change=false", "-q", "-o", str(tmp_path / "m2.png")])
    assert res.exit_code == 0, res.output


def test_per_change_needs_the_source_as_reference(editor, image):
    empty, rows = _maps(editor, image, "a red square", "a blue circle", mask_reference="")
    whole, whole_rows = _maps(editor, image, "a red square", "a blue circle", mask_reference="", mask_per_change=False)
    assert torch.equal(empty, whole) and rows == whole_rows  # against the empty prompt a "single change" means nothing


def test_per_change_masks_do_not_depend_on_the_batch(editor, image):
    other = np.full((32, 32, 3), 30, np.uint8)
    alone = editor.mask(image, "a red square", "a blue circle", seed=5, num_inference_steps=10)
    paired = editor.mask([image, other], "a red square", ["a blue circle", "a green triangle"], seed=5, num_inference_steps=10)
    assert torch.allclose(paired.soft[0], alone.soft[0], atol=1e-5) and torch.equal(paired.mask[0], alone.mask[0])


def test_edit_result_names_the_mapped_changes(editor, image):
    res = editor.edit(image, "a red square", ["a blue circle", "a blue square"], seed=0, num_inference_steps=4,
                      extra_strengths=(), caption_candidate=False)
    assert res.mask_changes == [["a blue square", "a red circle"], []]
    user = editor.edit(image, "a red square", "a blue circle", mask=np.full((32, 32), 255, np.uint8), seed=0,
                       num_inference_steps=4, extra_strengths=(), caption_candidate=False)
    assert user.mask_changes == [[]]
