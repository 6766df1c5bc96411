"""The composable, diffusers-style API: mask / invert results handed to edit, output types, generators,
callbacks, prompt embeddings, dtype placement, and stages registered by name."""

import numpy as np
import pytest
import torch

from diffedit import DiffEditor, EditOptions
from diffedit.stages import METHODS, Method, register
from diffedit.stages.decoding import MaskedDDIMDecoder

KW = dict(num_inference_steps=10)


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_preview_the_mask_then_edit_with_it(editor, image):
    direct = editor.edit(image, "a red square", ["a blue circle", "a dog"], seed=5, **KW)
    preview = editor.mask(image, "a red square", ["a blue circle", "a dog"], seed=5, **KW)
    assert preview.pixel.shape == (2, 32, 32) and preview.changes == direct.mask_changes
    again = editor.edit(image, "a red square", ["a blue circle", "a dog"], mask=preview, seed=5, **KW)
    assert all(_same(a, b) for a, b in zip(direct.images, again.images))
    assert all(_same(a, b) for a, b in zip(direct.mask_images, again.mask_images))  # the edit snap still runs
    with pytest.raises(ValueError, match="same images and targets"):
        editor.edit(image, "a red square", "a blue circle", mask=preview, seed=5, **KW)


def test_invert_once_edit_many(editor, image):
    inv = editor.invert(image, "a red square", **KW)
    assert set(inv.walks) == {"unconditional", "caption"}
    assert inv.walks["unconditional"].shape[0] == 11 and inv.walks["caption"].shape[0] == 9  # r = 1.0 and 0.8
    for target in ("a blue circle", "a dog"):
        direct = editor.edit(image, "a red square", target, seed=2, **KW)
        reused = editor.edit(image, "a red square", target, inversion=inv, seed=2, **KW)
        assert _same(direct.image, reused.image)
        assert "inversion" not in reused.timings and "vae_encode" not in reused.timings
    with pytest.raises(ValueError, match="other images"):
        editor.edit(np.zeros_like(image), "a red square", "a dog", inversion=inv, seed=2, **KW)
    with pytest.raises(ValueError, match="steps"):
        editor.edit(image, "a red square", "a dog", inversion=inv, seed=2, num_inference_steps=12)
    bare = editor.invert(image, "", **KW)  # no source prompt: no caption walk for the caption candidate
    with pytest.raises(ValueError, match="caption walk"):
        editor.edit(image, "a red square", "a dog", inversion=bare, seed=2, **KW)


def test_output_types_and_call(editor, image):
    pil = editor(image, "a red square", "a blue circle", seed=1, **KW)  # callable like a pipeline
    arr = editor.edit(image, "a red square", "a blue circle", seed=1, output_type="np", **KW)
    pt = editor.edit(image, "a red square", "a blue circle", seed=1, output_type="pt", **KW)
    lat = editor.edit(image, "a red square", "a blue circle", seed=1, output_type="latent", **KW)
    assert arr.images.shape == (1, 32, 32, 3) and arr.images.dtype == np.float32
    assert np.allclose(arr.images[0] * 255, np.asarray(pil.image))
    assert pt.images.shape == (1, 3, 32, 32) and torch.allclose(pt.images[0].permute(1, 2, 0), torch.from_numpy(arr.images[0]))
    assert lat.images.shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="output_type"):
        editor.edit(image, "a red square", "a blue circle", output_type="jpeg", **KW)


def test_generators_per_image_are_recorded_and_reproduce(editor):
    from conftest import scene

    imgs = [scene(seed=0), scene(seed=1)]
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    res = editor.edit(imgs, "a red square", "a blue circle", generator=gens, **KW)
    assert res.seed is None and len(res.seeds) == 2 and res.seeds[0] != res.seeds[1]
    again = editor.edit(imgs, "a red square", "a blue circle", seed=res.seeds, **KW)  # what the sidecar saves
    assert all(_same(a, b) for a, b in zip(res.images, again.images))
    alone = editor.edit(imgs[1], "a red square", "a blue circle", seed=res.seeds[1], **KW)  # batch-independent
    assert torch.equal(alone.mask[0], res.mask[1])
    assert res.to_dict()["seeds"] == res.seeds
    with pytest.raises(ValueError, match="generators for 2 images"):
        editor.edit(imgs, "a red square", "a blue circle", generator=gens[:1], **KW)
    with pytest.raises(ValueError, match="not both"):
        editor.edit(imgs, "a red square", "a blue circle", seed=1, generator=gens[0], **KW)


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(editor, image):
    seen = []

    def record(ed, step, timestep, kwargs):
        seen.append((kwargs["candidate"], step, timestep))
        return None

    base = editor.edit(image, "a red square", "a blue circle", seed=3, callback_on_step_end=record, **KW)
    labels = base.candidates
    assert labels == ["r=1", "r=0.8 caption"]
    per = {label: [(step, t) for c, step, t in seen if c == label] for label in labels}
    assert [len(per[c]) for c in labels] == [10, 8] and len(seen) == 18  # the candidates decode as one batch
    assert all([step for step, _ in per[c]] == list(range(len(per[c]))) for c in labels)
    assert per[labels[0]][0] == (0, 901) and per[labels[1]][0] == (0, 701)  # r = 0.8 of 10 steps starts at 701
    assert all(per[c][-1][1] == 1 for c in labels)  # each ends at timestep 1
    assert seen[:2] == [(labels[0], 0, 901), (labels[0], 1, 801)]  # the caption rows join at their own level

    def zero(ed, step, timestep, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])}

    zeroed = editor.edit(image, "a red square", "a blue circle", seed=3, callback_on_step_end=zero,
                         extra_strengths=(), caption_candidate=False, output_type="latent", **KW)
    assert float(zeroed.images.abs().max()) == 0.0
    every = editor.edit(image, "a red square", "a blue circle", seed=3, callback_on_step_end=zero, output_type="latent", **KW)
    assert float(every.images.abs().max()) == 0.0  # whichever candidate is kept, its rows were replaced


def test_prompt_embeddings_in_place_of_text(editor, image):
    embeds = editor.components.encode_prompts(["a red square", "a blue square"])
    one = dict(extra_strengths=(), caption_candidate=False, **KW)
    text = editor.edit(image, "a red square", "a blue square", seed=4, **one)
    emb = editor.edit(image, embeds[0], embeds[1][None], seed=4, **one)
    assert _same(text.image, emb.image)
    assert emb.targets[0].startswith("<prompt embeddings") and emb.mask_changes == [[]]
    with pytest.raises(ValueError, match="equals the source"):
        editor.edit(image, embeds[0], embeds[0], seed=4, **one)
    with pytest.raises(ValueError, match="embeddings must be"):
        editor.edit(image, embeds[0], torch.zeros(2, 2, 16, 32), seed=4, **one)


def test_placement_and_dtype_like_diffusers(tiny_model_dir):
    ed = DiffEditor.from_pretrained(str(tiny_model_dir), torch_dtype=torch.bfloat16, progress=False)
    assert ed.unet.dtype == ed.text_encoder.dtype == torch.bfloat16
    ed.to(torch.float32)
    assert ed.dtype == torch.float32 and ed.vae.dtype == torch.float32
    ed.to("cpu", "bf16")
    assert ed.dtype == torch.bfloat16 and ed.device.type == "cpu"
    ed.to(device="cpu", dtype=torch.float32)
    assert ed.dtype == torch.float32
    with pytest.warns(FutureWarning, match="torch_dtype"):
        old = DiffEditor.from_pretrained(str(tiny_model_dir), dtype="fp32", progress=False)
    assert old.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        ed.to(dtype="fp12")
    ed.set_progress_bar_config(disable=False, ncols=60)
    assert ed.components.progress == {"disable": False, "ncols": 60}


def test_a_new_decoder_is_a_registered_stage_not_a_branch(editor, image):
    calls = []

    @register("decoder", "counting_ddim")
    class CountingDecoder(MaskedDDIMDecoder):
        def __call__(self, parts, levels, *args, **kwargs):
            calls.append((levels.shape[0], kwargs["starts"]))
            return super().__call__(parts, levels, *args, **kwargs)

    METHODS["counting"] = Method("noise_difference", "ddim", "counting_ddim", "model_score", "composite")
    try:
        res = editor.edit(image, "a red square", "a blue circle", seed=6, method="counting", **KW)
        ref = editor.edit(image, "a red square", "a blue circle", seed=6, **KW)
    finally:
        del METHODS["counting"]
    assert calls == [(11, [10, 8])] and _same(res.image, ref.image) and res.options.method == "counting"
    with pytest.raises(ValueError, match="unknown method 'counting'"):
        EditOptions(method="counting")


def test_presets_are_options_over_the_defaults(editor, image):
    from diffedit.results import PRESETS

    assert set(PRESETS) == {"fast", "default", "quality"} and EditOptions.preset("default") == EditOptions()
    for name, fields in PRESETS.items():
        options = EditOptions.preset(name)
        assert all(getattr(options, k) == EditOptions(**{k: v}).__getattribute__(k) for k, v in fields.items())
    assert EditOptions.preset("fast", num_inference_steps=7).num_inference_steps == 7
    res = editor.edit(image, "a red square", "a blue circle", seed=1, preset="fast", num_inference_steps=6)
    assert res.options == EditOptions.preset("fast", num_inference_steps=6)
    with pytest.raises(ValueError, match="unknown preset 'warp'"):
        editor.edit(image, "a red square", "a blue circle", preset="warp")
    with pytest.raises(ValueError, match="not both"):
        editor.mask(image, "a red square", "a blue circle", preset="fast", options=EditOptions())
