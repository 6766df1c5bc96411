"""DiffEditPipeline: diffusers' StableDiffusionDiffEditPipeline API on our corrected DiffEdit (docs/migration.md).

Most tests run diffusers' deprecated pipeline on the same tiny components beside ours: where the two must
agree (API, shapes, callbacks, inversion levels) and where ours corrects it (same-level blending, per-image
mask normalisation).
"""

import importlib.util
import inspect

import numpy as np
import pytest
import torch
from conftest import scene
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DiffusionPipeline,
    PNDMScheduler,
    StableDiffusionDiffEditPipeline,
    StableDiffusionPipeline,
)
from PIL import Image
from tiny import tiny_components

import diffedit.pipeline as pipeline_module
from diffedit.loading import embedded_model_path
from diffedit.masks import finish_mask
from diffedit import DiffEditPipeline  # the import a user changes
from diffedit.shapeworld.world import sample_edit

SOURCE, TARGET = "a red square", "a blue circle"
STEPS = 10  # with inpaint_strength 0.8: N = 8 DDIM steps


def diffusers_guide(pipeline_class, model, raw_image, source_prompt, target_prompt, num_inference_steps=None):
    """diffusers' DiffEdit guide as written, the pipeline class and model path (no hub here) as parameters.

    num_inference_steps=None keeps the guide's calls unchanged (50 steps); a number is passed to all three.
    """
    steps = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
    pipeline = pipeline_class.from_pretrained(model, torch_dtype=torch.float16, safety_checker=None, use_safetensors=True)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.inverse_scheduler = DDIMInverseScheduler.from_config(pipeline.scheduler.config)
    pipeline.enable_model_cpu_offload()
    pipeline.enable_vae_slicing()
    pipeline.set_progress_bar_config(disable=True)  # not in the guide: keeps the test log short

    mask_image = pipeline.generate_mask(image=raw_image, source_prompt=source_prompt, target_prompt=target_prompt, **steps)
    inv_latents = pipeline.invert(prompt=source_prompt, image=raw_image, **steps).latents
    output_image = pipeline(
        prompt=target_prompt, mask_image=mask_image, image_latents=inv_latents, negative_prompt=source_prompt, **steps
    ).images[0]
    mask_view = Image.fromarray((mask_image.squeeze() * 255).astype("uint8"), "L")
    return pipeline, mask_image, inv_latents, output_image, mask_view


@pytest.fixture
def guide_machine(monkeypatch):
    """Let the guide's offloading and VAE-slicing lines run here.

    enable_model_cpu_offload needs an accelerator and `accelerate`: without them it is recorded, not run.
    diffusers 0.42 dropped enable_vae_slicing from its deprecated pipeline (older releases had it): we give
    it back to diffusers' class as it was, a call to the VAE's enable_slicing.
    """
    offloaded = []
    if not (torch.cuda.is_available() and importlib.util.find_spec("accelerate")):
        monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload", lambda self, *a, **k: offloaded.append(self))
    def slicing(self):
        self.vae.enable_slicing()

    monkeypatch.setattr(StableDiffusionDiffEditPipeline, "enable_vae_slicing", slicing, raising=False)
    return offloaded


def _components_kwargs(c):
    for module in (c.vae, c.unet, c.text_encoder):
        module.eval()  # as from_pretrained gives them
    return {"vae": c.vae, "text_encoder": c.text_encoder, "tokenizer": c.tokenizer, "unet": c.unet, "scheduler": c.scheduler,
                "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


@pytest.fixture(scope="module")
def pipe():
    p = DiffEditPipeline(**_components_kwargs(tiny_components()))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def theirs(pipe):
    p = StableDiffusionDiffEditPipeline(**{**pipe.components, "requires_safety_checker": False,
                                           "inverse_scheduler": DDIMInverseScheduler.from_config(pipe.scheduler.config)})
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def raw_image():
    return Image.fromarray(scene())


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- 1. diffusers' guide, unchanged
@pytest.mark.parametrize("pipeline_class", [DiffEditPipeline, StableDiffusionDiffEditPipeline])
def test_diffusers_guide_runs_unchanged(pipeline_class, tiny_model_dir, raw_image, guide_machine):
    pipeline, mask, latents, output, view = diffusers_guide(pipeline_class, tiny_model_dir, raw_image, SOURCE, TARGET)
    assert isinstance(pipeline, pipeline_class)
    assert mask.shape == (1, 16, 16) and mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    assert 0 < mask.sum() < mask.size
    assert view.size == (16, 16) and view.mode == "L"
    levels = 40 + (pipeline_class is DiffEditPipeline)  # 50 steps x 0.8; ours keeps the clean level too
    assert latents.shape == (1, levels, 4, 16, 16) and torch.isfinite(latents).all()
    assert isinstance(output, Image.Image) and output.size == raw_image.size and output.mode == "RGB"
    assert np.asarray(output).std() > 0


@pytest.mark.parametrize("method", ["generate_mask", "invert", "__call__"])
def test_signatures_are_diffusers(method):
    """Same parameter names, order and defaults as diffusers' pipeline: positional and keyword calls carry over."""
    classes = (DiffEditPipeline, StableDiffusionDiffEditPipeline)
    ours, theirs = (inspect.signature(getattr(cls, method)).parameters for cls in classes)
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


def test_diffusers_inversion_levels_are_ours_without_the_clean_one(pipe, theirs, raw_image):
    """From the same clean latent both inversions walk the same DDIM levels; diffusers' lacks level 0."""
    clean = pipe.encode_images(raw_image, 1)
    for guidance in (1.0, 7.5):
        ours = pipe.invert(prompt=SOURCE, image=clean, num_inference_steps=STEPS, guidance_scale=guidance).latents
        their = theirs.invert(prompt=SOURCE, image=clean, num_inference_steps=STEPS, guidance_scale=guidance).latents
        assert ours.shape == (1, 9, 4, 16, 16) and their.shape == (1, 8, 4, 16, 16)
        # float32 rounding of two orders of the same guided step: 2e-5 at guidance 7.5 on an AMD EPYC, on levels up to 1.7
        assert torch.allclose(ours[:, :-1], their, atol=1e-4)
        assert torch.equal(ours[:, -1], clean)


# ---------------------------------------------------------------------- 2. the corrected blending
def test_all_background_mask_returns_the_vae_reconstruction(pipe, theirs, raw_image):
    clean = pipe.encode_images(raw_image, 1)
    zero = np.zeros((1, 16, 16), np.float32)
    ours = pipe.invert(prompt=SOURCE, image=clean, num_inference_steps=STEPS).latents
    out = pipe(prompt=TARGET, mask_image=zero, image_latents=ours, negative_prompt=SOURCE, num_inference_steps=STEPS,
               output_type="latent").images
    assert torch.equal(out, clean)  # ours ends on the image's own latent
    pixels = pipe(prompt=TARGET, mask_image=zero, image_latents=ours, negative_prompt=SOURCE, num_inference_steps=STEPS,
                  output_type="np").images
    with torch.no_grad():
        reconstruction = pipe.image_processor.postprocess(pipe.vae.decode(clean / pipe.vae.config.scaling_factor).sample, "np")
    assert np.allclose(pixels, reconstruction, atol=1e-6)

    their_levels = theirs.invert(prompt=SOURCE, image=clean, num_inference_steps=STEPS).latents
    their_out = theirs(prompt=TARGET, mask_image=zero, image_latents=their_levels, negative_prompt=SOURCE,
                       num_inference_steps=STEPS, output_type="latent").images
    assert torch.equal(their_out, their_levels[:, -1])  # diffusers ends on level 1, still noisy
    assert not torch.allclose(their_out, clean, atol=1e-3)


def test_background_comes_from_the_same_level_in_ours_and_one_level_noisier_in_diffusers(pipe, theirs, raw_image):
    clean = pipe.encode_images(raw_image, 1)
    mask = np.zeros((1, 16, 16), np.float32)
    mask[:, 4:10, 4:10] = 1
    inside = torch.from_numpy(mask).bool()[:, None].expand(-1, 4, -1, -1)
    ours = pipe.invert(prompt=SOURCE, image=clean, num_inference_steps=STEPS).latents  # levels 8..0
    their = theirs.invert(prompt=SOURCE, image=clean, num_inference_steps=STEPS).latents  # levels 8..1
    seen = {"ours": [], "theirs": []}
    for name, p, levels in (("ours", pipe, ours), ("theirs", theirs, their)):
        p(prompt=TARGET, mask_image=mask, image_latents=levels, negative_prompt=SOURCE, num_inference_steps=STEPS,
          callback=lambda i, t, x, name=name: seen[name].append(x.clone()))
    for i, (x, y) in enumerate(zip(seen["ours"], seen["theirs"])):  # step i lands on level 7 - i
        assert torch.equal(x[~inside], ours[:, i + 1][~inside])  # ours: the inversion's level 7 - i
        assert torch.allclose(y[~inside], their[:, i][~inside], atol=1e-5)  # diffusers: level 8 - i, where step i started
        assert not torch.allclose(x[inside], ours[:, i + 1][inside], atol=1e-3)  # inside: edited


def test_diffusers_shaped_latents_are_accepted_and_end_near_the_clean_latent(pipe, theirs, raw_image):
    clean = pipe.encode_images(raw_image, 1)
    their = theirs.invert(prompt=SOURCE, image=clean, num_inference_steps=STEPS, guidance_scale=1.0).latents
    out = pipe(prompt=TARGET, mask_image=np.zeros((16, 16)), image_latents=their, negative_prompt=SOURCE,
               num_inference_steps=STEPS, output_type="latent").images
    # the clean level is estimated by one DDIM step from level 1: closer than diffusers' own end, level 1
    assert (out - clean).abs().max() < 0.5 * (their[:, -1] - clean).abs().max()
    with pytest.raises(ValueError, match="holds 8 levels.*5 steps"):
        pipe(prompt=TARGET, mask_image=np.zeros((16, 16)), image_latents=their, num_inference_steps=STEPS, inpaint_strength=0.5)


# ---------------------------------------------------------------------- 3. the mask, per image
def test_batch_mask_equals_each_image_alone_and_pooling_would_not(pipe, raw_image, monkeypatch):
    other = Image.fromarray(np.clip(scene(seed=1).astype(int) * 3 - 200, 0, 255).astype(np.uint8))  # high contrast
    call = {"target_prompt": [TARGET, TARGET], "source_prompt": [SOURCE, SOURCE], "num_inference_steps": STEPS}
    batch = pipe.generate_mask(image=[raw_image, other], generator=[_gen(0), _gen(1)], **call)
    alone = [pipe.generate_mask(image=im, target_prompt=TARGET, source_prompt=SOURCE, num_inference_steps=STEPS,
                                generator=_gen(s)) for im, s in ((raw_image, 0), (other, 1))]
    assert batch.shape == (2, 16, 16)
    assert np.array_equal(batch[0], alone[0][0]) and np.array_equal(batch[1], alone[1][0])
    # the same call with diffusers' pooled statistics changes the first image's mask: the test can fail
    monkeypatch.setattr(pipeline_module, "finish_mask", lambda maps, **kw: finish_mask(maps, **{**kw, "per_image": False}))
    pooled = pipe.generate_mask(image=[raw_image, other], generator=[_gen(0), _gen(1)], **call)
    assert not np.array_equal(pooled[0], alone[0][0])


def test_mask_pass_encodes_once_with_the_posterior_mean_and_without_guidance(pipe, raw_image, monkeypatch):
    rows, encodes = [], []
    unet_forward, vae_encode = pipe.unet.forward, pipe.vae.encode
    monkeypatch.setattr(pipe.unet, "forward", lambda x, *a, **k: rows.append(x.shape[0]) or unet_forward(x, *a, **k))
    monkeypatch.setattr(pipe.vae, "encode", lambda x, *a, **k: encodes.append(x.shape[0]) or vae_encode(x, *a, **k))
    masks = [pipe.generate_mask(image=raw_image, target_prompt=TARGET, source_prompt=SOURCE, num_inference_steps=STEPS,
                                guidance_scale=g, generator=_gen(0)) for g in (7.5, 1.0, 3.0)]
    assert encodes == [1, 1, 1] and rows == [20, 20, 20]  # one image encoding; 2 x n rows, not 4 x n
    assert all(np.array_equal(m, masks[0]) for m in masks)  # guidance would only scale the difference


def test_mask_thresholding_ratio_keeps_diffusers_meaning(pipe, raw_image):
    masks = [pipe.generate_mask(image=raw_image, target_prompt=TARGET, source_prompt=SOURCE, num_inference_steps=STEPS,
                                mask_thresholding_ratio=r, generator=_gen(0)) for r in (1.5, 3.0, 6.0)]
    sums = [int(m.sum()) for m in masks]  # clamp at ratio x mean, divide, > 0.5: a larger ratio keeps fewer cells
    assert sums[0] > sums[1] > sums[2] >= 0
    assert sums[0] == int((masks[0] | masks[1]).sum())  # nested


# ---------------------------------------------------------------------- 4. API behaviour
def test_prompt_embeds_equal_strings(pipe, raw_image):
    (src, tgt), _ = pipe.encode_prompt([SOURCE, TARGET])
    kw = {"image": raw_image, "num_inference_steps": STEPS}
    m1 = pipe.generate_mask(target_prompt=TARGET, source_prompt=SOURCE, generator=_gen(0), **kw)
    m2 = pipe.generate_mask(target_prompt_embeds=tgt[None], source_prompt_embeds=src[None], generator=_gen(0), **kw)
    assert np.array_equal(m1, m2)
    inv1 = pipe.invert(prompt=SOURCE, **kw).latents
    inv2 = pipe.invert(prompt_embeds=src[None], negative_prompt_embeds=pipe.encode_prompt("")[0], **kw).latents
    assert torch.allclose(inv1, inv2, atol=1e-6)
    call = {"mask_image": m1, "image_latents": inv1, "num_inference_steps": STEPS, "output_type": "latent"}
    out1 = pipe(prompt=TARGET, negative_prompt=SOURCE, **call).images
    out2 = pipe(prompt_embeds=tgt[None], negative_prompt_embeds=src[None], **call).images
    assert torch.allclose(out1, out2, atol=1e-6)


def test_generator_determinism(pipe, raw_image):
    kw = {"image": raw_image, "target_prompt": TARGET, "source_prompt": SOURCE, "num_inference_steps": STEPS}
    a, b = (pipe.generate_mask(generator=_gen(3), **kw) for _ in range(2))
    assert np.array_equal(a, b)
    assert np.array_equal(pipe.generate_mask(generator=[_gen(3)], **kw), a)  # a list of one is the same generator
    with pytest.raises(ValueError, match="2 generators for a batch of 1"):
        pipe.generate_mask(generator=[_gen(3), _gen(4)], **kw)


def test_output_types(pipe, raw_image):
    mask = pipe.generate_mask(image=raw_image, target_prompt=TARGET, source_prompt=SOURCE, num_inference_steps=STEPS,
                              generator=_gen(0))
    pil_mask = pipe.generate_mask(image=raw_image, target_prompt=TARGET, source_prompt=SOURCE, num_inference_steps=STEPS,
                                  generator=_gen(0), output_type="pil")
    assert len(pil_mask) == 1 and pil_mask[0].size == (16, 16) and np.array_equal(np.asarray(pil_mask[0]) // 255, mask[0])
    inv = pipe.invert(prompt=SOURCE, image=raw_image, num_inference_steps=STEPS, decode_latents=True, output_type="np")
    assert inv.images.shape == (9, 32, 32, 3)
    latents, images = pipe.invert(prompt=SOURCE, image=raw_image, num_inference_steps=STEPS, return_dict=False)
    assert torch.equal(latents, inv.latents) and images is None
    call = {"prompt": TARGET, "mask_image": mask, "image_latents": inv.latents, "num_inference_steps": STEPS}
    assert [im.size for im in pipe(**call).images] == [(32, 32)]
    assert pipe(**call, output_type="np").images.shape == (1, 32, 32, 3)
    assert pipe(**call, output_type="pt").images.shape == (1, 3, 32, 32)
    assert pipe(**call, output_type="latent").images.shape == (1, 4, 16, 16)
    two = pipe(**call, output_type="np", num_images_per_prompt=2).images
    assert two.shape == (2, 32, 32, 3) and np.array_equal(two[0], two[1])  # deterministic DDIM: identical copies
    images, nsfw = pipe(**call, return_dict=False)
    assert len(images) == 1 and nsfw is None


def test_batch_of_two_edits(pipe):
    images = [Image.fromarray(scene(seed=s)) for s in (0, 1)]
    targets = [TARGET, "a dog"]
    masks = pipe.generate_mask(image=images, target_prompt=targets, source_prompt=SOURCE, num_inference_steps=STEPS,
                               generator=[_gen(0), _gen(1)])
    inv = pipe.invert(prompt=[SOURCE, SOURCE], image=images, num_inference_steps=STEPS).latents
    out = pipe(prompt=targets, mask_image=masks, image_latents=inv, num_inference_steps=STEPS, output_type="np").images
    assert masks.shape == (2, 16, 16) and inv.shape == (2, 9, 4, 16, 16) and out.shape == (2, 32, 32, 3)
    # diffusers' other input forms: a list of masks, latents flattened to (B * levels, C, h, w)
    same = pipe(prompt=targets, mask_image=list(masks), image_latents=inv.flatten(0, 1), num_inference_steps=STEPS,
                output_type="np").images
    assert np.array_equal(out, same)
    alone = pipe(prompt="a dog", mask_image=masks[1], image_latents=inv[1:], num_inference_steps=STEPS, output_type="np").images
    assert np.allclose(alone[0], out[1], atol=1e-4)


def test_callbacks_match_diffusers(pipe, theirs, raw_image):
    calls = {}
    for name, p in (("ours", pipe), ("theirs", theirs)):
        record = calls.setdefault(name, {"invert": [], "call": []})
        inv = p.invert(prompt=SOURCE, image=raw_image, num_inference_steps=STEPS, generator=_gen(0), callback_steps=3,
                       callback=lambda i, t, x, r=record: r["invert"].append((i, int(t), tuple(x.shape))))
        p(prompt=TARGET, mask_image=np.ones((16, 16)), image_latents=inv.latents, num_inference_steps=STEPS,
          callback_steps=3, callback=lambda i, t, x, r=record: r["call"].append((i, int(t), tuple(x.shape))))
    assert [i for i, _, _ in calls["ours"]["invert"]] == [0, 3, 6]
    assert calls["ours"] == calls["theirs"]


def test_progress_bar_config(pipe, raw_image, capfd):
    def run():
        return pipe.invert(prompt=SOURCE, image=raw_image, num_inference_steps=STEPS)
    run()
    assert "it/s" not in capfd.readouterr().err
    pipe.set_progress_bar_config(disable=False)
    try:
        run()
        assert "8/8" in capfd.readouterr().err
    finally:
        pipe.set_progress_bar_config(disable=True)


def test_clip_skip_and_cross_attention_kwargs(pipe, theirs, raw_image):
    """clip_skip as diffusers' encode_prompt computes it (whose own code still reads transformers 4's `text_model`)."""
    ours, negative = pipe.encode_prompt(TARGET, clip_skip=1, do_classifier_free_guidance=True)
    ids = pipe.tokenizer([TARGET, ""], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = pipe.text_encoder.final_layer_norm(hidden)
    assert torch.allclose(ours[0], expected[0], atol=1e-6) and torch.allclose(negative[0], expected[1], atol=1e-6)
    assert not torch.allclose(ours, pipe.encode_prompt(TARGET)[0])
    inv = pipe.invert(prompt=SOURCE, image=raw_image, num_inference_steps=STEPS).latents
    call = {"prompt": TARGET, "mask_image": np.ones((16, 16)), "image_latents": inv, "num_inference_steps": STEPS}
    call["output_type"] = "latent"
    plain = pipe(**call).images
    assert not torch.allclose(pipe(**call, clip_skip=1).images, plain)
    assert torch.allclose(pipe(**call, cross_attention_kwargs={"scale": 1.0}).images, plain)


# ---------------------------------------------------------------------- 5. clear errors
@pytest.mark.parametrize("method, kwargs, match", [
    ("call", {"eta": 0.5}, "eta must be 0"),
    ("call", {"latents": torch.zeros(1, 4, 16, 16)}, "`latents` is not used"),
    ("call", {"num_inference_steps": 20}, "holds 9 levels"),
    ("call", {"mask_image": np.ones((16, 16)) * 2}, r"in \[0, 1\]"),
    ("call", {"mask_image": np.ones((8, 8))}, r"latents need \(16, 16\)"),
    ("call", {"output_type": "jpg"}, "output_type"),
    ("call", {"clip_skip": 5}, "clip_skip"),
    ("call", {"prompt_embeds": torch.zeros(1, 16, 32)}, "either `prompt` or `prompt_embeds`"),
    ("invert", {"num_reg_steps": 1}, "num_reg_steps"),
    ("invert", {"callback_steps": 0}, "callback_steps"),
    ("mask", {"target_negative_prompt": "a dog"}, "negative prompts"),
    ("mask", {"num_maps_per_mask": 0}, "num_maps_per_mask"),
    ("mask", {"output_type": "latent"}, "output_type"),
])
def test_unsupported_parameters_raise(pipe, raw_image, method, kwargs, match):
    inv = torch.zeros(1, 9, 4, 16, 16)
    with pytest.raises(ValueError, match=match):
        if method == "call":
            mask = np.ones((16, 16))
            pipe(**{"prompt": TARGET, "mask_image": mask, "image_latents": inv, "num_inference_steps": STEPS, **kwargs})
        elif method == "invert":
            pipe.invert(**{"prompt": SOURCE, "image": raw_image, "num_inference_steps": STEPS, **kwargs})
        else:
            pipe.generate_mask(**{"image": raw_image, "target_prompt": TARGET, "source_prompt": SOURCE,
                                  "num_inference_steps": STEPS, **kwargs})


def test_mask_negatives_that_cancel_are_accepted(pipe, raw_image):
    kw = {"image": raw_image, "target_prompt": TARGET, "source_prompt": SOURCE, "num_inference_steps": STEPS}
    plain = pipe.generate_mask(generator=_gen(0), **kw)
    same = pipe.generate_mask(generator=_gen(0), target_negative_prompt="a dog", source_negative_prompt="a dog", **kw)
    assert np.array_equal(plain, same)
    assert np.array_equal(plain, pipe.generate_mask(generator=_gen(0), target_negative_prompt="a dog", guidance_scale=1.0, **kw))


def test_inverse_scheduler_with_another_schedule_raises(pipe, raw_image):
    other = DDIMInverseScheduler.from_config({**pipe.scheduler.config, "beta_schedule": "linear"})
    p = DiffEditPipeline(**{**pipe.components, "inverse_scheduler": other})
    with pytest.raises(ValueError, match="another noise schedule"):
        p.invert(prompt=SOURCE, image=raw_image, num_inference_steps=STEPS)


# ---------------------------------------------------------------------- 6. loading
def test_save_pretrained_round_trip_and_from_pipe(pipe, raw_image, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    loaded = DiffEditPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    sd = StableDiffusionPipeline(**{k: v for k, v in pipe.components.items() if k != "inverse_scheduler"},
                                 requires_safety_checker=False)
    piped = DiffEditPipeline.from_pipe(sd)
    assert piped.unet is sd.unet and piped.inverse_scheduler is None
    piped.set_progress_bar_config(disable=True)
    outputs = []
    for p in (pipe, loaded, piped):
        mask = p.generate_mask(image=raw_image, target_prompt=TARGET, source_prompt=SOURCE, num_inference_steps=STEPS,
                               generator=_gen(0))
        inv = p.invert(prompt=SOURCE, image=raw_image, num_inference_steps=STEPS).latents
        outputs.append(p(prompt=TARGET, mask_image=mask, image_latents=inv, num_inference_steps=STEPS, output_type="np").images)
    assert np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[0], outputs[2])


def test_any_scheduler_gives_its_noise_schedule(pipe, raw_image):
    """Steps are always deterministic DDIM on the scheduler's noise schedule: a PNDM scheduler gives the same edit."""
    p = DiffEditPipeline(**{**pipe.components, "scheduler": PNDMScheduler.from_config(pipe.scheduler.config)})
    p.set_progress_bar_config(disable=True)
    a, b = (q.invert(prompt=SOURCE, image=raw_image, num_inference_steps=STEPS).latents for q in (pipe, p))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------- 7. the embedded ShapeWorld model
def test_guide_on_the_embedded_shapeworld_model(guide_machine):
    case = sample_edit(np.random.default_rng(0), kind="color", num_objects=1)
    raw_image = Image.fromarray(case.source_image)
    _pipeline, mask, latents, output, _ = diffusers_guide(
        DiffEditPipeline, embedded_model_path(), raw_image, case.source, case.target, num_inference_steps=20
    )
    assert mask.shape == (1, 16, 16) and latents.shape == (1, 17, 4, 16, 16) and output.size == (128, 128)
    inside = np.kron(mask[0], np.ones((8, 8))).astype(bool)
    assert 0 < inside.sum() < inside.size
    src, out = (np.asarray(im, np.float32) for im in (case.source_image, output))
    change = np.abs(out - src).mean(-1)
    assert change[inside].mean() > 5 * change[~inside].mean()  # the edit happens inside the mask
    assert change[~inside].mean() < 4.0  # outside: the VAE's reconstruction (fp16)
    obj = case.footprint & inside  # the object's new colour is closer to the target's than to the source's
    new = out[obj].mean(0)
    assert np.abs(new - case.after.rgb).sum() < np.abs(new - case.before.rgb).sum()
