"""Candidates chosen by the model: the scoring maths on a stand-in UNet, and the editor's choice on the tiny model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffedit import EditOptions
from diffedit.stages import NoiseStreams, noised_start
from diffedit.rerank import denoising_errors, rerank_scores

ONE = dict(extra_strengths=(), noise_candidates=(), caption_candidate=False)  # the paper's single decoding
KW = dict(num_inference_steps=10, mask_noises=2)


class OracleUNet(torch.nn.Module):
    """Knows each candidate's clean latent: predicts the true noise scaled by the prompt's first value.

    Prompt value 1 gives a perfect prediction (error 0); value 0 predicts zeros (error = mean noise^2).
    """

    def __init__(self, clean: torch.Tensor, alphas: torch.Tensor):
        super().__init__()
        self.clean, self.alphas = clean, alphas

    def forward(self, x, t, encoder_hidden_states):
        a = self.alphas[t].reshape(-1, 1, 1, 1)
        k = self.clean.shape[0]
        clean = self.clean.repeat(x.shape[0] // k, 1, 1, 1)  # rows are (noise, prompt, candidate), candidate fastest
        eps = (x - a.sqrt() * clean) / (1 - a).sqrt()
        return SimpleNamespace(sample=eps * encoder_hidden_states[:, 0, 0].reshape(-1, 1, 1, 1))


def test_denoising_errors_average_inside_the_region():
    torch.manual_seed(0)
    alphas = torch.linspace(0.99, 0.05, 1000)
    clean = torch.randn(2, 4, 6, 6)
    noises = torch.randn(3, 5, 4, 6, 6)  # 3 timesteps x 5 noises
    prompts = torch.zeros(2, 1, 8)
    prompts[1] = 1.0  # prompt 0 predicts zeros, prompt 1 the true noise
    region = torch.zeros(2, 6, 6, dtype=torch.bool)
    region[0, :3] = True  # candidate 0: top half; candidate 1: empty region = every cell
    # chunks of 6 rows: 3 candidate pairs
    errors = denoising_errors(OracleUNet(clean, alphas), clean, prompts, region, alphas, [100, 500, 900], noises, max_batch=6)
    assert errors.shape == (2, 2)
    assert torch.allclose(errors[:, 1], torch.zeros(2), atol=1e-5)
    expected_top = noises[..., :3, :].pow(2).mean()
    expected_all = noises.pow(2).mean()
    assert torch.allclose(errors[0, 0], expected_top, rtol=1e-5)
    assert torch.allclose(errors[1, 0], expected_all, rtol=1e-5)
    assert torch.equal(rerank_scores(errors), errors[:, 0] - errors[:, 1])
    three = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.5, 4.0]])  # (K, P): source, target, empty prompt
    assert torch.allclose(rerank_scores(three, unconditional=2, weight=2.0), torch.tensor([2.0 + 2.0, 1.5 + 5.0]))
    assert torch.equal(rerank_scores(three, unconditional=2, weight=0.0), three[:, 0] - three[:, 1])
    with pytest.raises(ValueError, match="timesteps"):
        denoising_errors(OracleUNet(clean, alphas), clean, prompts, region, alphas, [100, 500], noises)


def test_the_chosen_candidate_is_that_decoding_alone(editor, image):
    """The kept image is what a single decoding with the chosen candidate's settings gives, up to the rounding of a
    batched UNet call (the candidates decode as one batch)."""
    res = editor.edit(image, "a red square", "a blue circle", seed=3, **KW)  # one job: same batch shapes alone
    assert res.candidates == ["r=1", "r=0.8 caption"]
    alone = {"r=1": dict(strength=1.0), "r=0.8 caption": dict(strength=0.8, inversion_prompt="a red square")}
    (chosen,), (scores,) = res.chosen, res.candidate_scores
    assert len(scores) == 2 and chosen == int(np.argmax(scores))
    images = {}
    for label, extra in alone.items():
        single = editor.edit(image, "a red square", "a blue circle", seed=3, **ONE, **extra, **KW)
        assert single.candidates == [label.replace(" caption", "")] and single.candidate_scores == []
        images[label] = (np.asarray(single.image), np.asarray(single.mask_image))
    kept = images[res.candidates[chosen]]
    diff = np.abs(kept[0].astype(int) - np.asarray(res.image, dtype=int))
    assert diff.max() <= 2 and (diff == 0).mean() >= 0.98, (diff.max(), (diff == 0).mean())
    assert (kept[1] == np.asarray(res.mask_image)).mean() >= 0.99
    assert not np.array_equal(images["r=0.8 caption"][0], images["r=1"][0])  # the candidates do differ


def test_scores_do_not_depend_on_the_batch(editor):
    from conftest import scene

    a, b = scene(seed=1), scene(seed=2)
    both = editor.edit([a, b], "a red square", "a blue circle", seed=5, **KW)
    alone = editor.edit([a], "a red square", "a blue circle", seed=5, **KW)
    assert np.allclose(both.candidate_scores[0], alone.candidate_scores[0], atol=1e-5)
    assert both.chosen[0] == alone.chosen[0]


def test_one_candidate_skips_the_scoring(editor, image):
    res = editor.edit(image, "a red square", "a blue circle", seed=0, **ONE, **KW)
    assert res.candidates == ["r=1"] and res.chosen == [0] and res.candidate_scores == []
    assert "rerank" not in res.timings
    no_caption = editor.edit(image, "", "a blue circle", seed=0, extra_strengths=(0.8,), **KW)  # nothing to invert with
    assert no_caption.candidates == ["r=1", "r=0.8"]
    duplicate = editor.edit(image, "a red square", "a blue circle", seed=0, extra_strengths=(1.0,), noise_candidates=(0.5,),
                            caption_strength=None, **KW)
    assert duplicate.candidates == ["r=1", "r=1 noise 0.5", "r=1 caption"]
    low = editor.edit(image, "a red square", "a blue circle", seed=0, strength=0.8, noise_candidates=(1.0,), **KW)
    assert low.candidates == ["r=0.8", "r=0.8 noise 1", "r=0.8 caption"]  # from the top of the inversion there is


def test_noise_candidate_starts_from_fresh_noise_inside_the_mask_only():
    """The noise candidate's top level: share s of the variance is fresh noise inside the latent mask, the
    inverted latent elsewhere; job j's noise comes from seed + its image index + 2**33, whatever the batch."""
    levels = torch.randn(3, 2, 4, 8, 8)  # (N + 1, J, C, h, w)
    binary = torch.zeros(2, 8, 8, dtype=torch.bool)
    binary[0, 2:5, 3:6] = True
    binary[1, 0, 0] = True
    out = noised_start(levels, binary, 0.5, [0, 1], NoiseStreams((7, 8)))
    assert torch.equal(out[:-1], levels[:-1])  # the lower levels are the inversion's
    m = binary[:, None].expand(-1, 4, -1, -1)
    assert torch.equal(out[-1][~m], levels[-1][~m])
    for j in range(2):
        noise = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(7 + j + 2**33))
        expected = 0.5**0.5 * levels[-1, j] + 0.5**0.5 * noise
        assert torch.allclose(out[-1, j][m[j]], expected[m[j]])
    pure = noised_start(levels, binary, 1.0, [0, 1], NoiseStreams((7, 8)))
    noise0 = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(7 + 2**33))
    assert torch.allclose(pure[-1, 0][m[0]], noise0[m[0]])


def test_candidate_options_are_checked_and_normalised():
    o = EditOptions(extra_strengths=[0.9, 1], rerank_levels=[0.5])
    assert o.extra_strengths == (0.9, 1.0) and o.rerank_levels == (0.5,)
    assert EditOptions(extra_strengths=1.0).extra_strengths == (1.0,)
    assert hash(o) is not None  # frozen and hashable again: lists became tuples
    with pytest.raises(ValueError, match="extra_strengths"):
        EditOptions(extra_strengths=(1.5,))
    with pytest.raises(ValueError, match="rerank_levels"):
        EditOptions(rerank_levels=(1.0,))
    assert EditOptions(noise_candidates=[1, 0.25]).noise_candidates == (1.0, 0.25)
    with pytest.raises(ValueError, match="noise_candidates"):
        EditOptions(noise_candidates=(0.0,))
    with pytest.raises(ValueError, match="rerank_unconditional"):
        EditOptions(rerank_unconditional=-1.0)
