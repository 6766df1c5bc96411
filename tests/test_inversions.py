"""Inversions (issue 20): null-text, negative-prompt, direct and edit-friendly DDPM inversion beside DDIM, each
decoded by DiffEdit's masked decoding, on tiny random components.

Reconstruction tests decode with the source prompt as the target and a mask of ones, so every latent cell is
decoded; the exact ones run in float64, where a random UNet's chaotic steps do not blow float32 rounding up."""

import numpy as np
import pytest
import torch

from diffedit import DiffEditor, EditOptions
from diffedit.inversion import ddpm_invert
from diffedit.schedule import ddim_grid
from diffedit.stages import MaskedDDIMDecoder, NoiseStreams
from diffedit.stages.inverting import NullTextInverter, source_guide
from diffedit.stages.registry import INVERSIONS, inverter_of, stage

from conftest import scene
from tiny import tiny_components

SOURCE, TARGET = "a red square", "a blue circle"
STEPS = 10
ONE = dict(extra_strengths=(), noise_candidates=(), caption_candidate=False, num_inference_steps=STEPS)


def _latents(editor, image) -> torch.Tensor:
    pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    return editor.components.encode_images(pixels)


def _reconstruct(editor, latents, inversion: str, guidance: float, *, negative: str | None = "", inverter=None,
                 target: str = SOURCE, seed: int = 0):
    """(max |decoded - input| over the latent, the inversion): invert with `inversion` (ddim: DDIM with the source
    prompt, the pivot of the others), decode everywhere with `target` against `negative` at `guidance`."""
    parts = editor.components
    options = EditOptions(inversion=inversion, guidance_scale=guidance, negative_prompt=negative, num_inference_steps=STEPS)
    grid = ddim_grid(parts.scheduler, STEPS, 1.0)
    guide = source_guide(parts, [SOURCE], options, NoiseStreams((seed,)))
    inverter = inverter or stage("inverter", inverter_of(options))()
    inv = inverter(parts, latents, [SOURCE], grid, guide=guide)
    ones = torch.ones(1, *latents.shape[-2:])
    out = MaskedDDIMDecoder()(parts, inv.levels, ones, parts.encode_prompts([target]), guide.uncond, grid,
                              guidance_scale=guidance, job_image=None, **({"steps": inv.steps} if inv.steps else {}))
    return float((out - latents).abs().max()), inv


@pytest.fixture(scope="module")
def editor64():
    return DiffEditor.from_components(tiny_components(), progress=False).to(dtype=torch.float64)


# ---------------------------------------------------------------- each inversion on its own
def test_null_text_reconstructs_better_than_ddim_at_guidance_7_5(editor, image):
    latents = _latents(editor, image)
    ddim, pivot = _reconstruct(editor, latents, "ddim", 7.5)
    paper, _ = _reconstruct(editor, latents, "null-text", 7.5)  # Adam 10 steps at 1e-2 (the paper's)
    strong, inv = _reconstruct(editor, latents, "null-text", 7.5, inverter=NullTextInverter(inner_steps=30, lr=0.1))
    assert paper < 0.95 * ddim and strong < 0.5 * ddim
    assert torch.equal(inv.levels, pivot.levels) and set(inv.steps) == {"uncond"}  # the pivot is the DDIM walk
    empty = editor.components.encode_prompts([""])
    moved = (inv.steps["uncond"] - empty).abs().flatten(1).amax(1)  # every step's embedding left the negative's
    assert inv.steps["uncond"].shape == (STEPS, 1, *empty.shape[1:]) and bool((moved > 0.1).all())


def test_null_text_stops_early_once_the_step_lands(editor, image):
    latents = _latents(editor, image)
    _, inv = _reconstruct(editor, latents, "null-text", 7.5, inverter=NullTextInverter(tolerance=1e9))
    empty = editor.components.encode_prompts([""])
    assert torch.equal(inv.steps["uncond"], empty.expand(STEPS, -1, -1, -1))  # within tolerance at once: untouched
    ddim, _ = _reconstruct(editor, latents, "ddim", 7.5)
    stopped, _ = _reconstruct(editor, latents, "null-text", 7.5, inverter=NullTextInverter(tolerance=1e9))
    assert stopped == pytest.approx(ddim, rel=1e-5)  # and then it decodes as DDIM does


def test_direct_inversion_reconstructs_exactly_where_ddim_and_null_text_drift(editor64, image):
    latents = _latents(editor64, image)
    for guidance in (1.0, 7.5):
        ddim, walk = _reconstruct(editor64, latents, "ddim", guidance)
        direct, inv = _reconstruct(editor64, latents, "direct", guidance)
        assert direct < 1e-6 < 0.5 < ddim
        assert torch.equal(inv.levels, walk.levels) and set(inv.steps) == {"offset"}  # DDIM's walk, plus offsets
    null_text, _ = _reconstruct(editor64, latents, "null-text", 7.5)
    assert null_text > 1e3 * direct
    # the offsets are the decoding's drift: another target decodes elsewhere, another guidance has other offsets
    edited, _ = _reconstruct(editor64, latents, "direct", 7.5, target=TARGET)
    _, other = _reconstruct(editor64, latents, "direct", 3.0)
    assert edited > 1e-2 and not torch.allclose(other.steps["offset"], inv.steps["offset"])


def test_ddpm_inversion_reconstructs_exactly_and_draws_its_levels(editor64, image):
    latents = _latents(editor64, image)
    exact, inv = _reconstruct(editor64, latents, "ddpm", 1.0, seed=3)
    ddim, walk = _reconstruct(editor64, latents, "ddim", 1.0)
    assert exact < 1e-6 < 0.5 < ddim
    guided, _ = _reconstruct(editor64, latents, "ddpm", 7.5, seed=3)  # the noise maps were fitted to this guidance
    assert guided < 1e-6
    # level k is the clean latent noised on its own with the image's "ddpm" stream, not DDIM's walk
    grid = ddim_grid(editor64.scheduler, STEPS, 1.0)
    eps = NoiseStreams((3,)).randn("ddpm", 0, (STEPS, *latents.shape[1:])).to(latents)
    a = grid.alphas[STEPS].item()
    assert torch.allclose(inv.levels[STEPS, 0], a**0.5 * latents[0] + (1 - a) ** 0.5 * eps[-1])
    assert not torch.allclose(inv.levels[1:], walk.levels[1:], atol=1e-2)
    _, reseeded = _reconstruct(editor64, latents, "ddpm", 1.0, seed=4)
    assert not torch.allclose(reseeded.levels[1:], inv.levels[1:])
    z = inv.steps["noise"]  # the noise maps of a good model look like N(0, 1); a random UNet's are only finite
    assert z.shape == (STEPS, 1, *latents.shape[1:]) and bool(torch.isfinite(z).all()) and float(z.std()) > 0.1


def test_ddpm_stops_keep_each_rows_levels(editor64, image):
    """Rows of a lower ratio leave the batched walk at their level, with the same levels and noise maps below."""
    latents = _latents(editor64, image)
    parts, grid = editor64.components, ddim_grid(editor64.scheduler, STEPS, 1.0)
    cond = parts.encode_prompts([SOURCE, SOURCE])
    noises = torch.randn(STEPS, 1, *latents.shape[1:], generator=torch.Generator().manual_seed(0)).to(latents)
    both, z = ddpm_invert(parts.unet, latents.expand(2, -1, -1, -1), cond, grid, noises.expand(-1, 2, -1, -1, -1),
                          stops=[STEPS, 6])
    assert torch.equal(both[:7, 1], both[:7, 0]) and torch.equal(both[7:, 1], both[6:7, 1].expand(4, -1, -1, -1))
    assert torch.allclose(z[:6, 1], z[:6, 0]) and bool((z[6:, 1] == 0).all())


# ---------------------------------------------------------------- through the editor
def test_every_inversion_edits_and_is_recorded(editor, image):
    results = {}
    for name in INVERSIONS:
        res = editor.edit(image, SOURCE, TARGET, seed=1, inversion=name, **ONE)
        assert res.options.inversion == name and res.to_dict()["options"]["inversion"] == name
        results[name] = np.asarray(res.image)
    assert np.array_equal(results["caption"], results["negative-prompt"])  # one inversion, named twice
    distinct = ("ddim", "caption", "null-text", "direct", "ddpm")
    assert all(not np.array_equal(results[a], results[b]) for i, a in enumerate(distinct) for b in distinct[i + 1:])


def test_the_default_is_ddim_and_the_caption_candidate_reads_the_source_walk(editor, image):
    default = editor.edit(image, SOURCE, TARGET, seed=2, num_inference_steps=STEPS)
    ddim = editor.edit(image, SOURCE, TARGET, seed=2, inversion="ddim", num_inference_steps=STEPS)
    assert EditOptions().inversion == "ddim" and np.array_equal(np.asarray(default.image), np.asarray(ddim.image))
    assert default.candidates == ["r=1", "r=0.8 caption"]
    direct = editor.edit(image, SOURCE, TARGET, seed=2, inversion="direct", num_inference_steps=STEPS)
    assert direct.candidates == ["r=1", "r=0.8"]  # the walk is the source prompt's already: a lower ratio of it
    inv = editor.invert(image, SOURCE, inversion="direct", num_inference_steps=STEPS)
    assert set(inv.walks) == {"source"} and set(inv.state) == {"offset"} and inv.state["offset"].shape[0] == STEPS


def test_negative_prompt_inversion_is_the_caption_one_with_the_source_as_negative(editor, image):
    kw = dict(seed=3, **ONE)
    named = editor.edit(image, SOURCE, TARGET, inversion="negative-prompt", **kw)
    spelled = editor.edit(image, SOURCE, TARGET, inversion="caption", negative_prompt=SOURCE, **kw)
    other = editor.edit(image, SOURCE, TARGET, inversion="caption", negative_prompt="", **kw)
    assert np.array_equal(np.asarray(named.image), np.asarray(spelled.image))
    assert not np.array_equal(np.asarray(named.image), np.asarray(other.image))
    with pytest.raises(ValueError, match="leave negative_prompt unset"):
        EditOptions(inversion="negative-prompt", negative_prompt="")


def test_invert_once_then_edit_with_a_guided_inversion(editor, image):
    inv = editor.invert(image, SOURCE, seed=5, inversion="ddpm", **ONE)
    direct = editor.edit(image, SOURCE, TARGET, seed=5, inversion="ddpm", **ONE)
    reused = editor.edit(image, SOURCE, TARGET, inversion=inv, seed=5, options=EditOptions(inversion="ddpm", **ONE))
    assert np.array_equal(np.asarray(direct.image), np.asarray(reused.image)) and "inversion" not in reused.timings
    with pytest.raises(ValueError, match="'ddpm'.*asks for 'direct'"):
        editor.edit(image, SOURCE, TARGET, inversion=inv, options=EditOptions(inversion="direct", **ONE))
    with pytest.raises(ValueError, match="guidance_scale"):  # its noise maps were fitted to guidance 7.5
        editor.edit(image, SOURCE, TARGET, inversion=inv, options=EditOptions(inversion="ddpm", guidance_scale=3.0, **ONE))


@pytest.mark.parametrize("kwargs, match", [
    (dict(inversion="null_text"), "inversion must be .*null-text.*got 'null_text'"),
    (dict(inversion="null-text", guidance_scale=1.0), "guidance_scale 1 turns off"),
    (dict(inversion="direct", inversion_prompt="a photo"), "leave inversion_prompt empty"),
])
def test_combinations_that_make_no_sense_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EditOptions(**kwargs)
    from diffedit.bounds import BOUNDS

    assert BOUNDS["inversion"].choices == tuple(INVERSIONS)  # the bounds table names every registered inversion
    assert EditOptions(inversion="ddim", inversion_prompt="a photo").inversion_prompt == "a photo"
    assert EditOptions(inversion="ddpm", guidance_scale=1.0).guidance_scale == 1.0


def test_the_inpainting_candidate_decodes_the_levels_without_the_state(image):
    """The per-step state is the model's UNet's: the inpainting UNet's candidate decodes the walk's levels alone,
    and so does not change with the state, while the model's own candidate does."""
    from test_inpainting import inpainter

    editor = DiffEditor.from_components(tiny_components(), progress=False, inpaint_unet=inpainter())
    kw = dict(seed=4, caption_candidate=False, extra_strengths=(0.8,), num_inference_steps=6, output_type="latent")
    res = {name: editor.edit(image, SOURCE, TARGET, inversion=name, **kw) for name in ("caption", "direct")}
    assert res["direct"].candidates == ["r=1 inpaint", "r=0.8"]
    # run each candidate alone by scoring none: the chosen latents are candidate 0's (inpaint), then candidate 1's
    alone = {name: [editor.edit(image, SOURCE, TARGET, inversion=name, **{**kw, "extra_strengths": ()}).images,
                    editor.edit(image, SOURCE, TARGET, inversion=name, **{**kw, "inpaint_candidate": False,
                                                                            "strength": 0.8, "extra_strengths": ()}).images]
             for name in res}
    assert torch.equal(alone["caption"][0], alone["direct"][0])
    assert not torch.allclose(alone["caption"][1], alone["direct"][1])


def test_cli_inversion_flag(tmp_path, tiny_model_dir):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from diffedit.cli import app

    src = tmp_path / "photo.png"
    Image.fromarray(scene()).save(src)
    base = ["edit", str(src), "-s", SOURCE, "-t", TARGET, "-m", str(tiny_model_dir), "--steps", "4", "--seed", "1", "-q"]
    res = CliRunner().invoke(app, base + ["--inversion", "ddpm"])
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "photo_edited.json").read_text())
    assert sidecar["options"]["inversion"] == "ddpm" and sidecar["candidates"] == ["r=1", "r=0.8"]
    res = CliRunner().invoke(app, base + ["--inversion", "negative-prompt", "--negative-prompt", "a dog"])
    assert res.exit_code == 2 and "leave negative_prompt unset" in res.output
    res = CliRunner().invoke(app, base + ["--inversion", "pnp"])
    assert res.exit_code == 2 and "got 'pnp'" in res.output
