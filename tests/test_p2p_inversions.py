"""The guided inversions (null-text, direct, ddpm) with Prompt-to-Prompt's decoders (issue 20): their per-step state
applied as masked decoding applies it, on tiny random components; the exact checks run in float64."""

import numpy as np
import pytest
import torch

from diffedit import DiffEditor, EditOptions
from diffedit.schedule import ddim_grid
from diffedit.stages import MaskedPromptToPromptDecoder, NoiseStreams, PromptToPromptDecoder
from diffedit.stages.inverting import source_guide
from diffedit.stages.registry import inverter_of, stage

from tiny import tiny_components

SOURCE, TARGET = "a red square", "a blue circle"
STEPS = 10


@pytest.fixture(scope="module")
def editor64():
    return DiffEditor.from_components(tiny_components(), progress=False).to(dtype=torch.float64)


def _latents(editor, image) -> torch.Tensor:
    pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    return editor.components.encode_images(pixels.to(editor.components.dtype))


def _branches(editor, latents, inversion: str, target: str = SOURCE, *, guidance: float = 7.5, masked: bool = False):
    """(source branch, target branch) at level 0: invert with `inversion` (fitted to the source prompt, the empty negative
    prompt and `guidance`), then decode both branches under attention control with `target`, everywhere."""
    parts = editor.components
    options = EditOptions(method="diffedit_p2p" if masked else "p2p", inversion=inversion, guidance_scale=guidance,
                          negative_prompt="", num_inference_steps=STEPS, **({} if masked else {"local_blend": False}))
    grid = ddim_grid(parts.scheduler, STEPS, 1.0)
    guide = source_guide(parts, [SOURCE], options, NoiseStreams((3,)))
    inv = stage("inverter", inverter_of(options))()(parts, latents, [SOURCE], grid, guide=guide)
    decoder = (MaskedPromptToPromptDecoder if masked else PromptToPromptDecoder)([SOURCE], [target], options)
    ones = torch.ones(1, *latents.shape[-2:])
    return decoder.branches(parts, inv.levels, ones, parts.encode_prompts([target]), guide.uncond, grid,
                            guidance_scale=guidance, steps=inv.steps)


def _err(x, latents) -> float:
    return float((x - latents).abs().max())


def test_null_text_with_p2p_reconstructs_better_than_ddim_at_guidance_7_5(editor, image):
    latents = _latents(editor, image)
    ddim = [_err(b, latents) for b in _branches(editor, latents, "ddim")]
    null = [_err(b, latents) for b in _branches(editor, latents, "null-text")]
    assert null[0] < 0.95 * ddim[0] and null[1] < 0.95 * ddim[1]  # both branches read the per-step embeddings
    assert null[1] == pytest.approx(null[0], rel=1e-3)  # target == source: the branches agree


def test_direct_inversion_keeps_the_source_branch_exactly_on_its_walk(editor64, image):
    latents = _latents(editor64, image)
    for masked in (False, True):
        source, target = _branches(editor64, latents, "direct", TARGET, masked=masked)
        ddim_source, _ = _branches(editor64, latents, "ddim", TARGET, masked=masked)
        assert _err(source, latents) < 1e-6 < 0.5 < _err(ddim_source, latents)
        assert _err(target, latents) > 1e-2  # the offsets are the source's: the target branch edits
    same_source, same_target = _branches(editor64, latents, "direct")
    assert _err(same_source, latents) < 1e-6 and _err(same_target, latents) > 1e-3  # the target takes no offset


def test_ddpm_with_p2p_retraces_the_drawn_levels(editor64, image):
    latents = _latents(editor64, image)
    source, target = _branches(editor64, latents, "ddpm")
    assert _err(source, latents) < 1e-6 and _err(target, latents) < 1e-6  # both branches take the noise maps
    edited_source, edited = _branches(editor64, latents, "ddpm", TARGET)
    assert _err(edited_source, latents) < 1e-6 and _err(edited, latents) > 1e-2


def test_the_p2p_methods_edit_with_every_guided_inversion(editor, image):
    kw = dict(num_inference_steps=STEPS, mask_noises=2, seed=2)
    for method in ("p2p", "diffedit_p2p"):
        plain = editor.edit(image, SOURCE, TARGET, method=method, **kw)
        for inversion in ("null-text", "direct", "ddpm"):
            res = editor.edit(image, SOURCE, TARGET, method=method, inversion=inversion, **kw)
            assert res.options.inversion == inversion and res.edited == [True]
            assert not np.array_equal(np.asarray(res.image), np.asarray(plain.image)), (method, inversion)


def test_a_p2p_decoder_refuses_state_it_does_not_know(editor, image):
    parts, latents = editor.components, _latents(editor, image)
    levels = latents.expand(STEPS + 1, -1, -1, -1, -1)
    decoder = PromptToPromptDecoder([SOURCE], [TARGET], EditOptions(method="p2p", local_blend=False))
    with pytest.raises(ValueError, match="knows no per-step state"):
        decoder(parts, levels, None, parts.encode_prompts([TARGET]), None, ddim_grid(parts.scheduler, STEPS, 1.0),
                guidance_scale=1.0, job_image=None, steps={"drift": levels[1:]})
