"""The zero-shot ShapeWorld captioner (captioning.py) and automatic prompts (prompts_auto.py) on tiny components."""

import numpy as np
import pytest
import torch

from diffedit import DiffEditor
from diffedit.captioning import CaptionSearch, caption_shapeworld
from diffedit.prompts_auto import derive_prompts
from diffedit.shapeworld.world import all_captions, parse_caption
from tiny import tiny_components

CAPTIONS = all_captions()
IMAGE = np.full((32, 32, 3), 128, np.uint8)


def _mismatch(caption: str, truth: str) -> float:
    """How badly a caption explains a scene: a wrong background, each object missing or extra, the wrong order."""
    (bg, objs), (true_bg, true_objs) = parse_caption(caption), parse_caption(truth)
    wrong = 3.0 * (bg != true_bg) + sum(o not in objs for o in true_objs) + sum(o not in true_objs for o in objs)
    return wrong + 0.5 * (sorted(objs) == sorted(true_objs) and objs != true_objs)


class OracleDenoiser(torch.nn.Module):
    """Predicts the true noise plus an offset that grows with how badly the prompt's caption explains `truth`.

    Prompts are encoded as their index in all_captions() (see _oracle_parts), so the denoiser can read them back."""

    def __init__(self, latent, alphas, truth, jitter=0.0):
        super().__init__()
        self.latent, self.alphas, self.truth, self.jitter, self.calls = latent, alphas, truth, jitter, 0

    def forward(self, x, t, encoder_hidden_states):
        self.calls += x.shape[0]
        a = self.alphas[t].reshape(-1, 1, 1, 1).to(x)
        eps = (x - a.sqrt() * self.latent) / (1 - a).sqrt()
        wrong = torch.tensor([_mismatch(CAPTIONS[int(i)], self.truth) for i in encoder_hidden_states[:, 0, 0]])
        out = eps + 0.1 * wrong.reshape(-1, 1, 1, 1).to(x) + self.jitter * x  # jitter: errors that depend on the draw
        return type("Out", (), {"sample": out})()


def _oracle_parts(truth: str, parts=None, jitter=0.0):
    """Components (tiny ones, or `parts` changed in place) whose denoiser is an OracleDenoiser for `truth`."""
    parts = parts or tiny_components()
    latent = parts.encode_images(torch.zeros(1, 3, 32, 32) + torch.from_numpy(IMAGE).permute(2, 0, 1)[None] / 127.5 - 1)
    parts.denoiser = OracleDenoiser(latent, parts.scheduler.alphas_cumprod, truth, jitter)
    parts.encode_prompts = lambda prompts: torch.tensor([CAPTIONS.index(p) for p in prompts], dtype=torch.float32
                                                        ).reshape(-1, 1, 1).expand(-1, 2, 4).contiguous()
    return parts


@pytest.mark.parametrize("truth", [
    "a red circle on a dark background",
    "a white triangle and a green square on a striped background",
    "a blue square and a yellow square on a checkered background",
])
def test_the_staged_search_finds_the_caption_the_model_explains_best(truth):
    parts = _oracle_parts(truth)
    found = caption_shapeworld(parts, IMAGE, seed=0)
    assert found.caption == truth
    assert found.rows == parts.denoiser.calls  # every UNet row is counted
    assert found.rows < len(CAPTIONS)  # fewer than one noise over every caption of the grammar
    assert [e for _, e in found.candidates] == sorted(e for _, e in found.candidates)


def test_the_captioner_is_deterministic_for_a_seed():
    parts = _oracle_parts("a green circle on a gray background", jitter=0.5)
    search = CaptionSearch(levels=(0.5,), noises=1, order_noises=1)
    first = caption_shapeworld(parts, IMAGE, seed=3, search=search)
    again = caption_shapeworld(parts, IMAGE, seed=3, search=search)
    assert first.candidates == again.candidates
    other = caption_shapeworld(parts, IMAGE, seed=4, search=search)
    assert [e for _, e in other.candidates] != [e for _, e in first.candidates]  # the seed draws the noises
    with pytest.raises(ValueError, match="noise levels"):
        CaptionSearch(levels=(1.5,))


def test_derive_prompts_captions_then_rewrites_by_the_instruction():
    editor = DiffEditor.from_components(tiny_components(), progress=False)
    _oracle_parts("a red circle and a blue square on a gray background", editor.components)
    derived = derive_prompts(editor, IMAGE, instruction="make the red circle yellow", captioner="shapeworld", seed=1)
    assert derived.source == "a red circle and a blue square on a gray background"
    assert derived.targets == ["a yellow circle and a blue square on a gray background"]
    assert derived.record["source_from"] == "captioner" and derived.record["target_from"] == "instruction"
    assert derived.record["instruction"] == "make the red circle yellow" and derived.record["caption_shows"] == "red circle"
    given = derive_prompts(editor, IMAGE, source="a red circle on a gray background", target=["a blue circle"])
    assert (given.source, given.targets, given.record["source_from"]) == ("a red circle on a gray background",
                                                                          ["a blue circle"], "given")


def test_derive_prompts_refuses_what_it_cannot_derive():
    editor = DiffEditor.from_components(tiny_components(), progress=False)
    with pytest.raises(ValueError, match="needs a captioner"):  # not the embedded model: no default captioner
        derive_prompts(editor, IMAGE, source="auto", target="a cat")
    with pytest.raises(ValueError, match="one of the two"):
        derive_prompts(editor, IMAGE, source="a cat", target="a dog", instruction="make the cat a dog")
    with pytest.raises(ValueError, match="not one"):  # a caption from another captioner is not in the grammar
        derive_prompts(editor, IMAGE, instruction="make the red circle blue", captioner=lambda image: "a photo of a cat")
    derived = derive_prompts(editor, IMAGE, target="a dog", captioner=lambda image: "a photo of a cat")
    assert derived.source == "a photo of a cat" and derived.record["captioner"] == "function"


def test_an_object_known_to_be_shown_stays_in_every_caption_scored():
    parts = _oracle_parts("a red circle and a blue square on a gray background")
    found = caption_shapeworld(parts, IMAGE, seed=0, shows=("blue", "square"))
    assert found.caption == "a red circle and a blue square on a gray background"
    wrong = caption_shapeworld(_oracle_parts("a red circle on a gray background"), IMAGE, seed=0, shows=("green", "triangle"))
    assert all(("green", "triangle") in parse_caption(c)[1] for c, _ in wrong.candidates)
    assert found.rows < caption_shapeworld(parts, IMAGE, seed=0).rows  # stages 2 and 4 skipped
    with pytest.raises(ValueError, match="colour, shape"):
        caption_shapeworld(parts, IMAGE, shows=("blue", "cube"))
