"""The inpainting candidate (issue 21): a 9-channel UNet under DiffEdit's mask, its loading, and its training."""

import json

import numpy as np
import pytest
import torch

from diffedit import DiffEditor, EditOptions
from diffedit.errors import ModelError
from diffedit.loading import load_inpaint_unet
from diffedit.shapeworld.train_inpaint import _grow, cell_mask, draw_example, masked_pixels, train_inpaint, widen_unet
from diffedit.stages.inpainting import InpaintingUNet, masked_image_latents

from tiny import tiny_components

KW = dict(num_inference_steps=6, mask_noises=2, rerank_noises=1)


def inpainter(seed: int = 0):
    """The tiny UNet widened to 9 channels, its new input channels random (a zero-initialised one is the plain UNet)."""
    unet = widen_unet(tiny_components().unet)
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] = torch.randn(unet.conv_in.weight[:, 4:].shape, generator=torch.Generator().manual_seed(seed))
    return unet.eval()


@pytest.fixture
def inpaint_editor():
    return DiffEditor.from_components(tiny_components(), progress=False, inpaint_unet=inpainter())


def test_widened_unet_starts_as_the_plain_one():
    plain = tiny_components().unet.eval()
    wide = widen_unet(plain).eval()
    assert wide.config.in_channels == 9 and bool((wide.conv_in.weight[:, 4:] == 0).all())
    x, extra = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 16, 16)
    states = torch.randn(2, 8, 32)
    with torch.no_grad():
        a = plain(x, torch.tensor([10, 500]), encoder_hidden_states=states).sample
        b = wide(torch.cat([x, extra], 1), torch.tensor([10, 500]), encoder_hidden_states=states).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_inpainting_unet_appends_each_jobs_mask_and_masked_latent_to_guided_rows():
    unet = inpainter()
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    masked = torch.randn(2, 4, 16, 16)
    wrapped = InpaintingUNet(unet, mask, masked)
    x, t, states = torch.randn(4, 4, 16, 16), torch.full((4,), 300), torch.randn(4, 8, 32)  # (uncond, cond) x 2 jobs
    with torch.no_grad():
        got = wrapped(x, t, encoder_hidden_states=states).sample
        extra = torch.cat([mask, masked], 1)
        want = unet(torch.cat([x, torch.cat([extra, extra])], 1), t, encoder_hidden_states=states).sample
        swapped = unet(torch.cat([x, torch.cat([extra.flip(0), extra.flip(0)])], 1), t, encoder_hidden_states=states).sample
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, swapped, atol=1e-3)  # row j gets job j's mask, not another's
    with pytest.raises(ValueError, match="rows for 2 jobs"):
        wrapped(x[:3], t[:3], encoder_hidden_states=states[:3])


def test_masked_image_latents_blank_the_masked_cells(image):
    parts = tiny_components()
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 2:6, 3:9] = True
    holed = pixels.clone()
    holed[..., 4:12, 6:18] = 0  # tiny VAE: a latent cell is 2 x 2 pixels
    assert torch.allclose(masked_image_latents(parts, pixels, mask), parts.encode_images(holed), atol=1e-6)


def test_the_exact_hole_is_the_pixel_mask_grown_over_the_old_object_inside_the_cells():
    from types import SimpleNamespace

    from diffedit.stages.inpainting import pixel_hole

    parts = tiny_components()
    pixels = -torch.ones(1, 3, 32, 32)  # a black scene with a white 8 x 8 object
    pixels[..., 8:16, 8:16] = 1.0
    cells = torch.zeros(1, 16, 16, dtype=torch.bool)
    cells[0, 3:9, 3:9] = True  # pixels 6..17, the object and a ring of background
    pixel = torch.zeros(1, 32, 32, dtype=torch.bool)
    pixel[0, 9:12, 9:12] = True  # the computed mask caught only part of the object
    computed = SimpleNamespace(pixel=pixel, computed=True)
    hole = pixel_hole(computed, cells, pixels, cover=0.12)
    assert hole[0, 8:16, 8:16].all() and hole.sum() == 64, "grown over the whole object, not the background"
    assert torch.equal(pixel_hole(SimpleNamespace(pixel=pixel, computed=False), cells, pixels, cover=0.12), pixel)
    assert torch.equal(pixel_hole(computed, cells, pixels, cover=0.0), pixel)
    outside = torch.ones(1, 32, 32, dtype=torch.bool)  # a pixel mask past the cells is cut to them
    assert torch.equal(pixel_hole(SimpleNamespace(pixel=outside, computed=False), cells, pixels, cover=0.0)[0, 6:18, 6:18],
                       torch.ones(12, 12, dtype=torch.bool))
    assert pixel_hole(SimpleNamespace(pixel=outside, computed=False), cells, pixels, cover=0.0).sum() == 144
    holed = pixels.clone()
    holed[..., 8:16, 8:16] = 0
    assert torch.allclose(masked_image_latents(parts, pixels, cells, hole), parts.encode_images(holed), atol=1e-6)


def test_edit_decodes_an_inpainting_candidate_that_reads_the_masked_image(inpaint_editor, image):
    res = inpaint_editor.edit(image, "a red square", "a blue circle", seed=0, **KW)
    assert res.candidates == ["r=1 inpaint", "r=0.8 caption"] and len(res.candidate_scores[0]) == 2
    out = np.asarray(res.images[0])
    outside = ~(np.asarray(res.mask_image) > 0)
    assert np.array_equal(out[outside], image[outside])  # the background stays exact, as for every candidate
    off = inpaint_editor.edit(image, "a red square", "a blue circle", seed=0, inpaint_candidate=False, **KW)
    assert off.candidates == ["r=1", "r=0.8 caption"]
    extra = inpaint_editor.edit(image, "a red square", "a blue circle", seed=0, extra_strengths=(1.0, 0.9), **KW)
    assert extra.candidates == ["r=1 inpaint", "r=0.9", "r=0.8 caption"]  # r = 1 is decoded once, by the inpainter
    # only the inpainting candidate: its decoding depends on the 9-channel UNet's extra inputs
    only = dict(strength=1.0, caption_candidate=False, **KW)
    assert inpaint_editor.edit(image, "a red square", "a blue circle", seed=0, **only).candidates == ["r=1 inpaint"]
    # the inpainting decodings themselves (the chosen candidate may be r=1 for both), through the step callback
    seen = {}
    for seed_w in (0, 1):
        inpaint_editor.set_inpainter(inpainter(seed_w))

        def grab(editor, step, t, kw, seed_w=seed_w):
            if kw["candidate"] == "r=1 inpaint":
                seen[seed_w] = kw["latents"].clone()

        inpaint_editor.edit(image, "a red square", "a blue circle", seed=0, callback_on_step_end=grab, **only)
    assert not torch.allclose(seen[0], seen[1], atol=1e-4)


def test_fast_preset_and_no_inpainter_decode_no_inpainting_candidate(editor, inpaint_editor, image):
    assert not editor.inpainter and inpaint_editor.inpainter
    assert editor.edit(image, "a red square", "a blue circle", seed=0, **KW).candidates == ["r=1", "r=0.8 caption"]
    fast = inpaint_editor.edit(image, "a red square", "a blue circle", seed=0, preset="fast", mask_noises=2)
    assert fast.candidates == ["r=0.9"]


def test_set_inpainter_refuses_unets_that_do_not_fit(editor):
    with pytest.raises(ValueError, match="9 input channels"):
        editor.set_inpainter(tiny_components().unet)
    wide = widen_unet(tiny_components().unet)
    wide.register_to_config(cross_attention_dim=64)
    with pytest.raises(ValueError, match="does not fit"):
        editor.set_inpainter(wide)
    assert not editor.inpainter


def test_load_inpaint_unet_from_a_folder_and_refuse_a_plain_one(tmp_path, tiny_model_dir):
    folder = tmp_path / "inpaint"
    inpainter().save_pretrained(folder / "unet")
    unet = load_inpaint_unet(str(folder))
    assert unet.config.in_channels == 9
    editor = DiffEditor.from_pretrained(str(tiny_model_dir), inpaint_model=str(folder), progress=False)
    edited = editor.edit(np.full((32, 32, 3), 90, np.uint8), "a", "b", seed=0, **KW)
    assert editor.inpainter and "r=1 inpaint" in edited.candidates
    assert not DiffEditor.from_pretrained(str(tiny_model_dir), progress=False).inpainter  # "auto": none for other models
    with pytest.raises(ModelError, match="not an inpainting model"):
        load_inpaint_unet(str(tiny_model_dir))
    with pytest.raises(FileNotFoundError):
        load_inpaint_unet(str(tmp_path / "missing"))


def test_training_examples_mask_the_edited_object_in_the_input():
    rng = np.random.default_rng(3)
    kinds = set()
    for _ in range(40):
        target, holed_from, cells, hole, caption = draw_example(rng, 8, pixel_share=0.6)
        assert cells.shape == (16, 16) and cells.any() and isinstance(caption, str)
        inside = np.kron(cells, np.ones((8, 8), bool))
        assert hole.shape == (128, 128) and not (hole & ~inside).any(), "the pixel hole stays inside the latent cells"
        kinds.add("cells" if np.array_equal(hole, inside) else "pixels")
        holed = masked_pixels(holed_from, hole)
        assert (holed[hole] == 128).all() and np.array_equal(holed[~hole], holed_from[~hole])
        # the edit changes nothing beyond one cell around the mask (a mask thresholded at a share of each cell may
        # leave the old object's edge outside, as a DiffEdit mask does: the model learns to draw past it)
        grown = np.kron(_grow(cells), np.ones((8, 8), bool))
        assert np.array_equal(target[~grown], holed_from[~grown])
    assert kinds == {"cells", "pixels"}  # edits hole their changed pixels or whole cells; rectangles whole cells
    plain = [draw_example(np.random.default_rng(4), 8) for _ in range(10)]  # share 0: the shipped recipe, all cells
    assert all(np.array_equal(h, np.kron(c, np.ones((8, 8), bool))) for _, _, c, h, _ in plain)
    pixels = np.zeros((16, 16), bool)
    pixels[0:3, 0:8] = True  # 3 of the 8 rows of the first two 8 x 8 cells... of a 2 x 2 grid
    assert cell_mask(pixels, 0.0, 8).tolist() == [[True, False], [False, False]]
    assert not cell_mask(pixels, 0.4, 8).any()


def test_pixel_holes_follow_the_changed_pixels_within_two_pixels():
    from diffedit.shapeworld import world
    from diffedit.shapeworld.train_inpaint import pixel_hole

    rng = np.random.default_rng(5)
    case = world.sample_edit(rng, kind="shape", num_objects=1)
    cells = np.ones((16, 16), bool)
    holes = [pixel_hole(rng, case.mask, cells) for _ in range(30)]
    sizes = {int(h.sum()) for h in holes}
    assert len(sizes) > 1 and min(sizes) < case.mask.sum() < max(sizes)  # shrunk by one pixel or grown by up to two
    for h in holes:
        assert (h ^ case.mask).sum() < 0.5 * case.mask.sum()
    assert not pixel_hole(rng, case.mask, np.zeros((16, 16), bool)).any()


def test_train_inpaint_continues_from_its_state(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    first = train_inpaint(out, base=tiny_model_dir, steps=2, examples=8, batch_size=2, quiet=True)
    second = train_inpaint(out, base=tiny_model_dir, steps=1, examples=8, batch_size=2, quiet=True)
    assert (first["total_steps"], second["total_steps"]) == (2, 3)
    info = json.loads((out / "model" / "training.json").read_text())
    assert [s["total_steps"] for s in info["stages"]] == [2, 3]
    assert json.loads((out / "model" / "model_index.json").read_text())["_class_name"] == "StableDiffusionInpaintPipeline"
    assert load_inpaint_unet(str(out / "model")).config.in_channels == 9
    with pytest.raises(ValueError, match="exactly one"):
        train_inpaint(out, base=tiny_model_dir, quiet=True)


def test_train_inpaint_can_start_from_an_inpainter(tmp_path, tiny_model_dir):
    start = tmp_path / "start"
    inpainter(seed=3).save_pretrained(start / "unet")
    out = train_inpaint(tmp_path / "run", base=tiny_model_dir, init=start, steps=1, examples=4, batch_size=2,
                        pixel_holes=0.5, quiet=True)
    info = json.loads((tmp_path / "run" / "model" / "training.json").read_text())
    assert info["stages"][0] == {"stage": "init", "from": str(start), "total_steps": 0}
    assert info["stages"][1]["pixel_holes"] == 0.5 and out["total_steps"] == 1
    trained = load_inpaint_unet(str(tmp_path / "run" / "model")).conv_in.weight[:, 4:].float()
    widened = load_inpaint_unet(str(start)).conv_in.weight[:, 4:].float()
    assert trained.abs().sum() > 0 and torch.allclose(trained, widened, atol=0.05), "started from the given inpainter"


def test_traced_inpainting_calls_give_the_plain_ones_outputs(inpaint_editor, image):
    only = dict(caption_candidate=False, output_type="np", **KW)
    plain = inpaint_editor.accelerate(None).edit(image, "a red square", "a blue circle", seed=0, **only)
    traced_editor = inpaint_editor.accelerate("trace")
    traced = traced_editor.edit(image, "a red square", "a blue circle", seed=0, **only)
    assert traced.candidates == ["r=1 inpaint"] and traced_editor.components.inpaint_denoiser._traces
    assert np.array_equal(plain.images, traced.images)


def test_inpaint_threshold_sets_the_hole_the_inpainter_paints_in(inpaint_editor, image):
    from diffedit.stages.inpainting import inpaint_hole

    masks = inpaint_editor.mask(image, "a red square", "a blue circle", seed=0, mask_noises=2)
    jobs = type("M", (), {"soft": masks.soft, "latent": masks.mask, "computed": True})()
    default = EditOptions()
    assert torch.equal(inpaint_hole(jobs, default), masks.mask)  # None: the decoding's latent mask
    tight, loose = (inpaint_hole(jobs, EditOptions(inpaint_threshold=t)) for t in (0.8, 0.1))
    assert bool((tight <= loose).all()) and tight.sum() < loose.sum()
    user = type("M", (), {"soft": masks.soft, "latent": masks.mask, "computed": False})()
    assert torch.equal(inpaint_hole(user, EditOptions(inpaint_threshold=0.8)), masks.mask)  # a user's mask as given


def test_source_visible_examples_show_the_whole_input_under_the_mask():
    rng = np.random.default_rng(8)
    examples = [draw_example(rng, 8, visible_share=1.0) for _ in range(30)]
    edits = [e for e in examples if not np.array_equal(e[0], e[1])]  # an edit: target and input differ
    assert edits and all(not hole.any() for _, _, _, hole, _ in edits)  # nothing holed: the old object stays visible
    assert all(np.array_equal(masked_pixels(src, hole), src) for _, src, _, hole, _ in edits)
    rects = [e for e in examples if np.array_equal(e[0], e[1])]  # rectangles and full masks still hole their cells
    assert all(np.array_equal(h, np.kron(c, np.ones((8, 8), bool))) for _, _, c, h, _ in rects)


def test_edit_share_sets_how_many_examples_are_edits():
    def edits(share):
        rng = np.random.default_rng(9)
        examples = [draw_example(rng, 8, edit_share=share) for _ in range(60)]
        return sum(not np.array_equal(target, source) for target, source, *_ in examples)  # an edit changes the input

    assert edits(0.0) == 0 and edits(1.0) >= 57  # (an edit may redraw a hidden object the same: rare)
    assert edits(0.3) < edits(0.7) < edits(1.0)


def test_hole_weight_one_is_the_plain_loss_and_more_weighs_the_hole():
    from diffedit.shapeworld.train_inpaint import inpainting_loss

    torch.manual_seed(0)
    unet = inpainter(seed=1)
    z0, zm = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 2:5] = 1
    states = torch.randn(2, 77, unet.config.cross_attention_dim)
    alphas = torch.linspace(0.99, 0.01, 1000)

    def loss(weight, m=mask):
        return inpainting_loss(unet, states, z0, m, zm, alphas, torch.Generator().manual_seed(5), hole_weight=weight).item()

    with torch.no_grad():
        plain, weighted = loss(1.0), loss(4.0)
        assert weighted != pytest.approx(plain)
        assert loss(4.0, torch.ones_like(mask)) == pytest.approx(loss(1.0, torch.ones_like(mask)), rel=1e-5)  # all hole


def test_an_inpainter_trained_on_unholed_inputs_is_shown_the_whole_input(tmp_path, image, monkeypatch):
    import diffedit.stages.inpainting as inpainting

    folder = tmp_path / "inp"
    inpainter(seed=2).save_pretrained(folder / "unet")
    assert not load_inpaint_unet(str(folder)).sees_source  # no training.json: the usual holed input
    (folder / "training.json").write_text(json.dumps({"masked_image": "source"}))
    unet = load_inpaint_unet(str(folder))
    assert unet.sees_source and load_inpaint_unet(str(folder / "unet")).sees_source  # the UNet folder reads its parent's
    editor = DiffEditor.from_components(tiny_components(), progress=False, inpaint_unet=unet)
    shown = []
    real = inpainting.masked_image_latents
    monkeypatch.setattr(inpainting, "masked_image_latents",
                        lambda parts, pixels, mask, hole=None: shown.append(hole) or real(parts, pixels, mask, hole))
    args = ([image], ["a red square"], ["a blue square"])
    default = editor.edit(*args, seed=0, **KW)
    holed = editor.edit(*args, seed=0, inpaint_source=False, **KW)  # the option overrides the folder
    assert not shown[0].any() and shown[1].any()  # nothing holed, then the pixel hole
    same = editor.edit(*args, seed=0, inpaint_source=True, **KW)
    assert np.array_equal(np.asarray(same.images[0]), np.asarray(default.images[0]))
    assert holed.options.inpaint_source is False and default.options.inpaint_source is None
