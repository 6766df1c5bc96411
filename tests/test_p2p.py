"""Prompt-to-Prompt attention control (attention_control.py) and its decoders and methods (stages/p2p.py; issue 20),
on tiny random components."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffedit import EditOptions
from diffedit.attention import word_token_spans
from diffedit.attention_control import (
    AttentionController, AttentionStore, control_attention, local_blend_mask, parse_reweight, token_alignment, token_edits,
)
from diffedit.cli import app
from diffedit.schedule import ddim_grid
from diffedit.stages import MaskedDDIMDecoder, MaskedPromptToPromptDecoder, PromptToPromptDecoder, plan_candidates

from conftest import scene

KW = dict(num_inference_steps=10, mask_noises=2)
RED, BLUE = "a red square", "a blue square"


def _noise(seed: int) -> torch.Tensor:
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def _controlled_call(editor, source, target, *, done=0, total=10, cross=0.8, self_=0.4, reweight=None):
    """One UNet call on (source row, target row) under control at step `done` of `total`: (outputs (2, C, h, w), the
    maps as used, layer -> (2, cells, keys))."""
    parts = editor.components
    edit = token_edits(parts.tokenizer, [source], [target], parts.tokenizer.model_max_length, reweight or {})
    store = AttentionStore()
    controller = AttentionController(edit, cross_replace=cross, self_replace=self_, store=store)
    with control_attention(editor.unet, controller):
        controller.at_step(torch.arange(1), [done], [total])
        x = torch.cat([_noise(0), _noise(1)])
        out = editor.unet(x, torch.full((2,), 500), encoder_hidden_states=parts.encode_prompts([source, target])).sample
    return out, store.steps[-1]


def _layers(maps: dict, kind: str) -> list[str]:
    return [name for name in maps if f".{kind}." in name]


def test_control_installs_its_processors_and_puts_the_unets_back_even_after_an_error(editor):
    before = dict(editor.unet.attn_processors)
    edit = token_edits(editor.tokenizer, [RED], [BLUE], editor.tokenizer.model_max_length, {})
    with pytest.raises(RuntimeError, match="inside"):
        with control_attention(editor.unet, AttentionController(edit, cross_replace=1.0, self_replace=1.0)):
            inside = dict(editor.unet.attn_processors)
            raise RuntimeError("inside the block")
    assert set(inside) == set(before) and all(p is not before[n] and p.inner is before[n] for n, p in inside.items())
    assert all(editor.unet.attn_processors[n] is p for n, p in before.items())


def test_word_swap_gives_the_target_the_sources_cross_attention_and_leaves_the_source_alone(editor):
    on, maps_on = _controlled_call(editor, RED, BLUE, done=7, self_=0.0)  # step 7 < int(0.8 * 10): replaced
    off, maps_off = _controlled_call(editor, RED, BLUE, done=8, self_=0.0)  # step 8: past the fraction
    cross, self_layers = _layers(maps_on, "attn2"), _layers(maps_on, "attn1")
    assert cross and self_layers
    assert all(torch.equal(maps_on[n][1], maps_on[n][0]) for n in cross)  # the target's maps are the source's
    assert not any(torch.equal(maps_off[n][1], maps_off[n][0]) for n in cross)
    assert not any(torch.equal(maps_on[n][1], maps_on[n][0]) for n in self_layers)  # self-attention left alone
    assert torch.equal(on[0], off[0]) and not torch.allclose(on[1], off[1], atol=1e-4)  # only the target changes


def test_self_replacement_covers_the_first_fraction_of_the_steps(editor):
    _, early = _controlled_call(editor, RED, BLUE, done=3, cross=0.0, self_=0.4)
    _, late = _controlled_call(editor, RED, BLUE, done=4, cross=0.0, self_=0.4)
    self_layers = _layers(early, "attn1")
    assert all(torch.equal(early[n][1], early[n][0]) for n in self_layers)
    assert not any(torch.equal(late[n][1], late[n][0]) for n in self_layers)
    assert not any(torch.equal(early[n][1], early[n][0]) for n in _layers(early, "attn2"))  # cross-attention its own


def test_refinement_aligns_the_tokens_of_a_prompt_with_an_inserted_word(editor):
    tok, length = editor.tokenizer, editor.tokenizer.model_max_length
    assert len(tok("a square").input_ids) == 4 and len(tok("a red square").input_ids) == 5  # start, words, end
    mapping, aligned = token_alignment(tok, "a square", "a red square", length)
    assert aligned.tolist() == [True, True, False] + [True] * (length - 3)  # "red" has no source token
    assert mapping[[0, 1, 3, 4]].tolist() == [0, 1, 2, 3] and mapping[5:].tolist() == list(range(4, length - 1))
    swap, all_aligned = token_alignment(tok, RED, BLUE, length)
    assert torch.equal(swap, torch.arange(length)) and all_aligned.all()  # a word swap maps one to one
    spread, _ = token_alignment(tok, "a dog", "a zebra", length)  # one token replaced by several (letters)
    n = len(tok("a zebra").input_ids)
    assert n > 4 and spread[2 : n - 1].tolist() == [2] * (n - 3) and int(spread[n - 1]) == 3
    # under control, each aligned target token reads its source token's map; the inserted word keeps its own
    _, maps = _controlled_call(editor, "a square", "a red square", done=0, self_=0.0)
    for name in _layers(maps, "attn2"):
        source, target = maps[name]
        assert torch.equal(target[:, aligned], source[:, mapping[aligned]])
        assert not torch.allclose(target[:, 2], source[:, 2]) and not torch.allclose(target[:, 2], source[:, 1])


def test_reweighting_scales_exactly_the_chosen_words_attention(editor):
    plain, maps_plain = _controlled_call(editor, RED, BLUE, cross=0.0, self_=0.0)
    heavy, maps_heavy = _controlled_call(editor, RED, BLUE, cross=0.0, self_=0.0, reweight={"blue": 3.0})
    first = _layers(maps_plain, "attn2")[0]  # the first cross-attention layer called: nothing changed before it
    (blue,) = word_token_spans(editor.tokenizer, BLUE)[1]
    others = [j for j in range(editor.tokenizer.model_max_length) if j != blue]
    assert torch.allclose(maps_heavy[first][1][:, blue], 3.0 * maps_plain[first][1][:, blue], rtol=1e-5, atol=0)
    assert float(maps_plain[first][1][:, blue].abs().min()) > 0
    assert torch.equal(maps_heavy[first][1][:, others], maps_plain[first][1][:, others])
    assert torch.equal(maps_heavy[first][0], maps_plain[first][0]) and torch.equal(heavy[0], plain[0])
    assert not torch.allclose(heavy[1], plain[1], atol=1e-4)


def test_reweight_is_parsed_and_checked():
    assert parse_reweight("Blue=2, circle=0.5  a=0") == {"blue": 2.0, "circle": 0.5, "a": 0.0}
    assert parse_reweight("") == {}
    for bad in ("blue", "blue=", "=2", "blue=x", "blue=nan", "blue=11", "blue=-1"):
        with pytest.raises(ValueError, match="word=factor"):
            parse_reweight(bad)


def test_local_blend_mask_is_the_chosen_words_regions_of_both_prompts():
    tokens = 6
    source, target = torch.zeros(1, tokens, 8, 8), torch.zeros(1, tokens, 8, 8)
    source[0, 0] = 5.0  # the start token draws attention everywhere: not a chosen word
    source[0, 2, 1, 1] = 1.0  # the source's changed word looks at cell (1, 1)
    target[0, 3, 6, 6] = 2.0  # the target's at (6, 6)
    target[0, 3, 6, 2] = 0.5  # ... and weakly at (6, 2): a quarter of its maximum, under the threshold
    words_source, words_target = torch.zeros(1, tokens, dtype=torch.bool), torch.zeros(1, tokens, dtype=torch.bool)
    words_source[0, 2], words_target[0, 3] = True, True
    region = local_blend_mask(source, target, words_source, words_target, 0.3)
    expected = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    expected[0, 0, 0:3, 0:3] = expected[0, 0, 5:8, 5:8] = True  # 3 x 3 max-pooled around each word's cell
    assert torch.equal(region, expected)
    assert local_blend_mask(source, target, words_source, words_target, 0.2)[0, 0, 6, 2]


@pytest.fixture
def walk(editor, image):
    """(levels (11, 1, C, h, w) of a DDIM inversion over 10 steps, its grid, cond, uncond)."""
    parts = editor.components
    levels = editor.invert(image, options=EditOptions(caption_candidate=False, **KW)).latents
    grid = ddim_grid(parts.scheduler, 10, 1.0)
    return levels, grid, parts.encode_prompts(["a blue circle"]), parts.encode_prompts([RED])


def test_local_blend_keeps_the_source_branch_outside_its_region(editor, walk):
    levels, grid, cond, uncond = walk
    decoder = PromptToPromptDecoder([RED], ["a blue circle"], EditOptions(method="p2p", blend_threshold=0.95, **KW))
    source, target = decoder.branches(editor.components, levels, None, cond, uncond, grid, guidance_scale=7.5)
    region = decoder.blend_mask.expand_as(target)  # the last step's region
    assert 0.0 < float(region.float().mean()) < 1.0
    assert torch.equal(target[~region], source[~region])  # outside: the source branch's latents, exactly
    assert not torch.allclose(target[region], source[region], atol=1e-3)
    unblended = PromptToPromptDecoder([RED], ["a blue circle"], EditOptions(method="p2p", local_blend=False, **KW))
    source2, target2 = unblended.branches(editor.components, levels, None, cond, uncond, grid, guidance_scale=7.5)
    assert unblended.blend_mask is None and not torch.allclose(target2[~region], source2[~region], atol=1e-3)


def test_p2p_with_every_control_off_is_the_plain_decoding_and_differs_with_control(editor, walk):
    levels, grid, cond, uncond = walk
    parts, everywhere = editor.components, torch.ones(1, *levels.shape[-2:], dtype=torch.bool)
    plain = MaskedDDIMDecoder()(parts, levels, everywhere, cond, uncond, grid, guidance_scale=7.5, job_image=None)
    off = EditOptions(method="p2p", cross_replace=0.0, self_replace=0.0, local_blend=False, **KW)
    got = PromptToPromptDecoder([RED], ["a blue circle"], off)(parts, levels, everywhere, cond, uncond, grid,
                                                                 guidance_scale=7.5, job_image=None)
    assert float((got - plain).abs().max()) < 1e-3  # the same arithmetic, in a batch twice as large
    for change in (dict(cross_replace=0.8), dict(self_replace=0.4), dict(reweight="circle=2")):
        controlled = PromptToPromptDecoder([RED], ["a blue circle"], off.replace(**change))
        out = controlled(parts, levels, everywhere, cond, uncond, grid, guidance_scale=7.5, job_image=None)
        assert float((out - plain).abs().max()) > 0.1, change


def test_masked_p2p_keeps_the_inverted_background_and_differs_from_diffedits_decoding(editor, walk):
    levels, grid, cond, uncond = walk
    parts = editor.components
    mask = torch.zeros(1, *levels.shape[-2:], dtype=torch.bool)
    mask[:, 4:12, 3:10] = True
    args = (parts, levels, mask, cond, uncond, grid)
    ours = MaskedPromptToPromptDecoder([RED], ["a blue circle"], EditOptions(method="diffedit_p2p", **KW))(
        *args, guidance_scale=7.5, job_image=None, starts=[8])
    diffedit = MaskedDDIMDecoder()(*args, guidance_scale=7.5, job_image=None, starts=[8])
    outside = ~mask.unsqueeze(1).expand_as(ours)
    assert torch.equal(ours[outside], levels[0][outside]) and torch.equal(diffedit[outside], levels[0][outside])
    assert not torch.allclose(ours[~outside], diffedit[~outside], atol=1e-3)


def test_the_methods_edit_and_differ_from_diffedit(editor, image):
    before = dict(editor.unet.attn_processors)
    ref = editor.edit(image, RED, BLUE, seed=2, **KW)
    p2p = editor.edit(image, RED, BLUE, seed=2, method="p2p", **KW)
    both = editor.edit(image, RED, BLUE, seed=2, method="diffedit_p2p", **KW)
    assert all(editor.unet.attn_processors[n] is p for n, p in before.items())
    assert p2p.mask.all() and p2p.edited == [True]  # p2p edits everywhere; its local blend decides what changes
    assert not np.array_equal(np.asarray(p2p.image), np.asarray(ref.image))
    assert torch.equal(both.mask, ref.mask) and not np.array_equal(np.asarray(both.image), np.asarray(ref.image))
    outside = ~(np.asarray(both.mask_image) > 0)
    assert outside.any() and np.array_equal(np.asarray(both.image)[outside], np.asarray(image)[outside])
    # the inpainting candidate paints a hole: none for p2p, which has no mask
    assert not plan_candidates(EditOptions(method="p2p"), [RED], inpainter=True)[0].inpaint
    assert plan_candidates(EditOptions(method="diffedit_p2p"), [RED], inpainter=True)[0].inpaint


def test_combinations_that_make_no_sense_are_clear_errors(editor, image):
    with pytest.raises(ValueError, match=r"reweight applies to method\(s\) diffedit_p2p, p2p, not 'diffedit'"):
        EditOptions(reweight="blue=2")
    with pytest.raises(ValueError, match=r"local_blend applies to method\(s\) p2p, not 'diffedit_p2p'"):
        EditOptions(method="diffedit_p2p", local_blend=False)
    with pytest.raises(ValueError, match="cross_replace must be <= 1"):
        EditOptions(method="p2p", cross_replace=1.5)
    with pytest.raises(ValueError, match="word=factor"):
        EditOptions(method="p2p", reweight="blue:2")
    with pytest.raises(ValueError, match="'green' is no word of the target prompt 'a blue square'"):
        editor.edit(image, RED, BLUE, seed=2, method="p2p", reweight="green=2", **KW)
    red, blue = editor.components.encode_prompts([RED, BLUE])
    with pytest.raises(ValueError, match="the local blend needs words to blend"):
        editor.edit(image, red, blue, seed=2, method="p2p", **KW)
    res = editor.edit(image, red, blue, seed=2, method="p2p", local_blend=False, **KW)  # embeddings: position to position
    assert res.edited == [True]


def test_cli_edits_with_a_method_and_reweighting(tmp_path, tiny_model_dir):
    from PIL import Image

    src = tmp_path / "photo.png"
    Image.fromarray(scene()).save(src)
    base = ["edit", str(src), "-s", RED, "-t", BLUE, "-m", str(tiny_model_dir), "--steps", "3", "--one-candidate", "-q"]
    runner = CliRunner()
    res = runner.invoke(app, base + ["--method", "p2p", "--reweight", "blue=2"])
    assert res.exit_code == 0, res.output
    options = json.loads((tmp_path / "photo_edited.json").read_text())["options"]
    assert options["method"] == "p2p" and options["reweight"] == "blue=2"
    for args, message in ((["--method", "warp"], "unknown method 'warp'"),
                          (["--reweight", "blue=2"], "reweight applies to method(s) diffedit_p2p, p2p, not 'diffedit'")):
        res = runner.invoke(app, base + args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert "--method" in runner.invoke(app, ["edit", "--help"], terminal_width=200).output
