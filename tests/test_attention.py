"""Cross-attention capture (attention.py) and the cross-attention mask source (issue 20), on tiny random components."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from diffedit.attention import capture_cross_attention, changed_token_positions
from diffedit.stages.attention_mask import CrossAttentionMask

KW = dict(num_inference_steps=10, mask_noises=2)


def _call(editor, x, prompts):
    cond = editor.components.encode_prompts(prompts)
    return editor.unet(x, torch.full((len(x),), 500), encoder_hidden_states=cond).sample


def test_capture_records_every_cross_attention_layer_without_changing_the_outputs(editor):
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    before = dict(editor.unet.attn_processors)
    plain = _call(editor, x, ["a red square", "a blue circle"])
    with capture_cross_attention(editor.unet) as store:
        recorded = _call(editor, x, ["a red square", "a blue circle"])
    assert torch.equal(plain, recorded)  # the layer's own processor still computes the output
    cross = [n for n in before if "attn2" in n]
    assert sorted(store.layers) == sorted(cross) and all(len(calls) == 1 for calls in store.layers.values())
    maps = store.maps((16, 16))
    assert maps.shape == (2, editor.tokenizer.model_max_length, 16, 16)
    assert torch.allclose(maps.sum(1), torch.ones(2, 16, 16), atol=1e-4)  # each cell's attention sums to 1 over tokens
    assert all(editor.unet.attn_processors[n] is p for n, p in before.items())  # put back


def test_capture_puts_the_processors_back_after_an_error(editor):
    editor.unet.set_attn_processor(AttnProcessor())
    before = dict(editor.unet.attn_processors)
    with pytest.raises(RuntimeError, match="inside"):
        with capture_cross_attention(editor.unet):
            raise RuntimeError("inside the block")
    assert all(editor.unet.attn_processors[n] is p for n, p in before.items())
    with pytest.raises(ValueError, match="no cross-attention was recorded"):
        with capture_cross_attention(editor.unet) as store:
            pass
        store.maps((4, 4))


def test_changed_token_positions_are_the_changed_words_tokens(editor):
    tok = editor.tokenizer
    ids = tok("a blue square").input_ids
    pos = changed_token_positions(tok, "a red square", "a blue square")
    assert pos and tok.decode([ids[p] for p in pos]).replace(" ", "") == "blue"
    two = changed_token_positions(tok, "a red square", "a blue circle")
    assert tok.decode([tok("a blue circle").input_ids[p] for p in two]).replace(" ", "") == "bluecircle"
    assert changed_token_positions(tok, "a red square", "a red square") == []


def test_word_map_is_the_changed_words_share_of_the_prompts_attention(editor):
    tokens = editor.tokenizer("a blue square").input_ids
    pos = changed_token_positions(editor.tokenizer, "a red square", "a blue square")
    maps = torch.full((editor.tokenizer.model_max_length, 4, 4), 0.01)
    maps[0] = 0.9  # the start token draws most of the attention everywhere: left out
    maps[pos[0], 1, 2] = 0.5  # one cell looks at "blue"
    share = CrossAttentionMask._word_map(editor.components, maps, "a red square", "a blue square")
    assert share.shape == (4, 4) and share.argmax() == 1 * 4 + 2
    content = len(tokens) - 2
    assert float(share[0, 0]) == pytest.approx(len(pos) / content, rel=1e-5)  # flat attention: the words' share


def test_the_attention_mask_method_edits_inside_its_own_mask(editor, image):
    res = editor.edit(image, "a red square", "a blue circle", seed=2, method="diffedit_attention_mask", **KW)
    noise = editor.edit(image, "a red square", "a blue circle", seed=2, **KW)
    assert res.options.method == "diffedit_attention_mask" and res.mask.any()
    assert not torch.equal(res.soft, noise.soft)
    outside = ~(np.asarray(res.mask_image) > 0)
    assert np.array_equal(np.asarray(res.image)[outside], np.asarray(image)[outside])
    previewed = editor.mask(image, "a red square", "a blue circle", seed=2, method="diffedit_attention_mask", **KW)
    assert torch.equal(previewed.soft, res.soft)
