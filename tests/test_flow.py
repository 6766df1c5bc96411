"""Flow-matching backbones (issue 25): tiny random SD3, FLUX and flow-UNet models (the sizes diffusers' tests use) run the
velocity-difference mask, FlowEdit and the inverted flow, and the composite, from the Python API (here) and the CLI
(test_flow_cli.py). Random models know no words: the tests check the mechanism, not the quality of an edit."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit.flow.components import pack, unpack
from diffedit.flow.editor import FlowEditor
from diffedit.flow.ode import flowedit, invert_flow, masked_flow_decode, start_index, velocity_difference_maps
from tiny_flow import TINY

FAST = dict(num_inference_steps=4, mask_noises=2)  # tiny and quick
SRC, TGT = "a red square", "a blue circle"


@pytest.fixture(scope="module")
def image():
    yy, xx = np.mgrid[:32, :32]
    arr = np.stack([xx * 8, yy * 8, np.full_like(xx, 90)], -1).astype(np.uint8)
    arr[8:24, 8:24] = (220, 30, 30)  # a red square on a gradient
    return Image.fromarray(arr)


@pytest.fixture(scope="module", params=list(TINY))
def editor(request):
    return FlowEditor(TINY[request.param](), progress=False)


def test_pack_unpack_round_trip():
    x = torch.randn(2, 4, 6, 8)
    assert pack(x).shape == (2, 12, 16)
    assert torch.equal(unpack(pack(x), 6, 8), x)


def test_velocity_shape_and_guidance(editor):
    parts = editor.components
    cond, empty = parts.encode_prompts([SRC, TGT]), parts.encode_prompts([""])
    x = torch.randn(2, 4, 16, 16)
    v = parts.velocity(x, 0.5, cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert not torch.allclose(v[0], v[1])  # the prompt reaches the transformer
    if parts.family != "flux":  # classifier-free guidance: scale 1 is the conditional velocity
        torch.testing.assert_close(parts.velocity(x, 0.5, cond, empty, 1.0), v)
        assert not torch.allclose(parts.velocity(x, 0.5, cond, empty, 5.0), v)
    else:  # FLUX.1-dev's guidance embedding takes the scale
        assert not torch.allclose(parts.velocity(x, 0.5, cond, None, 5.0), parts.velocity(x, 0.5, cond, None, 1.0))


def test_sigmas_descend_from_one_to_zero(editor):
    s = editor.components.sigmas(4, (16, 16))
    assert s.shape == (5,) and float(s[0]) == pytest.approx(1.0) and float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())
    assert start_index(s, 0.5) == 2


def test_ode_keeps_the_source_when_fields_agree_and_outside_the_mask():
    torch.manual_seed(0)
    field_a = lambda x, s: torch.tanh(x) * (1 + s)  # noqa: E731
    field_b = lambda x, s: -x + s  # noqa: E731
    x_src, sigmas = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0])
    noise = lambda i: torch.randn(2, 4, 8, 8)  # noqa: E731
    assert torch.equal(flowedit(field_a, field_a, x_src, sigmas, 1, noise), x_src)  # equal prompts: no edit at all
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:5, 2:5] = 1
    z = flowedit(field_a, field_b, x_src, sigmas, 0, noise, mask)
    assert torch.equal(z[:, :, ~mask[0].bool()], x_src[:, :, ~mask[0].bool()]) and not torch.equal(z, x_src)
    levels = invert_flow(field_a, x_src, sigmas, 1)
    assert levels.shape == (4, 2, 4, 8, 8) and torch.equal(levels[0], x_src)
    out = masked_flow_decode(field_b, levels, sigmas, mask[:1].expand(2, 8, 8), job_image=[1, 0])
    outside = ~mask[0].bool()
    assert torch.equal(out[0][:, outside], x_src[1][:, outside]) and not torch.equal(out[0], x_src[1])


def test_the_map_lies_where_the_velocities_differ():
    """Fields that disagree only in a box (as a target prompt that changes one object would) give a mask of that box."""
    from diffedit.masks import finish_mask

    box = torch.zeros(16, 16, dtype=torch.bool)
    box[4:9, 6:12] = True
    v_src = lambda x, s: x * s  # noqa: E731
    v_tar = lambda x, s: x * s + box * torch.tanh(x)  # noqa: E731
    maps = velocity_difference_maps(v_src, v_tar, torch.randn(2, 4, 16, 16), torch.randn(2, 3, 4, 16, 16), 0.5)
    assert torch.equal(maps > 0, box.expand(2, 16, 16))
    _, mask = finish_mask(maps, smooth=0.0, threshold=0.5)
    assert mask.any() and not (mask & ~box).any()


def test_mask_is_empty_when_source_equals_target(editor, image):
    parts = editor.components
    v = parts.field(parts.encode_prompts([SRC]))
    maps = velocity_difference_maps(v, v, torch.randn(1, 4, 16, 16), torch.randn(1, 2, 4, 16, 16), 0.5)
    assert maps.shape == (1, 16, 16) and float(maps.abs().max()) == 0.0
    result = editor.mask(image, SRC, TGT, seed=0, mask_reference=TGT, **FAST)  # the target against itself
    assert not result.mask.any() and not result.pixel.any() and result.warnings


def test_mask_follows_the_changed_words(editor, image):
    blue = editor.mask(image, SRC, TGT, seed=0, **FAST)
    green = editor.mask(image, SRC, "a green square", seed=0, **FAST)
    assert blue.mask.shape == (1, 16, 16) and blue.pixel.shape == (1, 32, 32) and blue.mask.any()
    assert not torch.equal(blue.soft, green.soft)  # another changed word, another map
    again = editor.mask(image, SRC, TGT, seed=0, **FAST)
    assert torch.equal(again.soft, blue.soft)  # a seed reproduces it


@pytest.mark.parametrize("decoder", ["flowedit", "inverted"])
def test_edit_keeps_the_background_exactly(editor, image, decoder):
    result = editor.edit(image, SRC, TGT, seed=0, decoder=decoder, **FAST)
    out, inp = np.array(result.image), np.array(image)
    mask = np.array(result.mask_image) > 0
    assert result.image.size == image.size and mask.any() and not mask.all()
    assert (out[~mask] == inp[~mask]).all()  # every pixel outside the mask is the input's
    assert (out[mask] != inp[mask]).any()  # and the edit changed something inside
    record = result.to_dict()
    assert record["decoder"] == decoder and record["family"] == editor.components.family and record["seed"] == 0


def test_edit_is_deterministic_with_a_seed(editor, image):
    decoder = "inverted" if editor.components.family == "flux" else "flowedit"
    a = editor.edit(image, SRC, TGT, seed=3, decoder=decoder, **FAST)
    b = editor.edit(image, SRC, TGT, seed=3, decoder=decoder, **FAST)
    assert np.array_equal(np.array(a.image), np.array(b.image)) and torch.equal(a.mask, b.mask)


def test_the_backbone_decides_the_edit(editor, image):
    """A user mask fixes where; another transformer (other random weights) must give other pixels there."""
    family = editor.components.family
    other = TINY[family](seed=7)
    parts = editor.components
    swapped = FlowEditor(type(parts)(family, parts.vae, other.transformer, parts.scheduler, parts.encoders), progress=False)
    user = np.zeros((32, 32), bool)
    user[8:24, 8:24] = True
    given = Image.fromarray(user.astype(np.uint8) * 255)
    for decoder in ("flowedit", "inverted"):
        a = editor.edit(image, SRC, TGT, seed=0, mask=given, decoder=decoder, **FAST)
        b = swapped.edit(image, SRC, TGT, seed=0, mask=given, decoder=decoder, **FAST)
        assert not np.array_equal(np.array(a.image)[user], np.array(b.image)[user])
        assert np.array_equal(np.array(a.image)[~user], np.array(b.image)[~user])
    assert not torch.equal(editor.mask(image, SRC, TGT, seed=0, **FAST).soft, swapped.mask(image, SRC, TGT, seed=0, **FAST).soft)


def test_edit_takes_a_previewed_mask(editor, image):
    preview = editor.mask(image, SRC, TGT, seed=1, **FAST)
    result = editor.edit(image, SRC, TGT, seed=1, mask=preview, decoder="inverted", **FAST)
    assert torch.equal(result.mask, preview.mask)
    with pytest.raises(ValueError, match="unknown flow decoder"):
        editor.edit(image, SRC, TGT, seed=1, decoder="ddim", **FAST)


def test_several_targets_share_one_image(editor, image):
    result = editor.edit(image, SRC, [TGT, "a green square"], seed=0, decoder="inverted", **FAST)
    assert len(result.images) == 2 and result.mask.shape == (2, 16, 16) and result.job_image == [0, 0]
    inp = np.array(image)
    for out, m in zip(result.images, result.mask_images):
        mask = np.array(m) > 0
        assert (np.array(out)[~mask] == inp[~mask]).all()
    assert not np.array_equal(np.array(result.images[0]), np.array(result.images[1]))
