"""SDXL (issue 25) on a tiny random SDXL at diffusers' own test sizes: two text encoders, the pooled row carried in the
prompt embeddings, the size conditioning, folder loading, and mask / edit / composite from the API and the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import scene
from tiny_sdxl import save_tiny_sdxl, tiny_sdxl_components

from diffedit import DiffEditor
from diffedit.cli import app
from diffedit.components_sdxl import SDXLComponents, SDXLUNet
from diffedit.loading import load_components
from diffedit.loading_sdxl import is_sdxl_checkpoint, is_sdxl_folder

ONE = dict(extra_strengths=(), noise_candidates=(), caption_candidate=False, num_inference_steps=5)  # one decoding
runner = CliRunner()


@pytest.fixture(scope="module")
def parts() -> SDXLComponents:
    return tiny_sdxl_components()


@pytest.fixture(scope="module")
def xl(parts) -> DiffEditor:
    return DiffEditor.from_components(parts, progress=False)


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


def test_prompts_are_both_encoders_side_by_side_and_the_pooled_row_last(parts):
    e = parts.encode_prompts(["a red square", "", "a cat", "a red square"])
    assert e.shape == (4, 16 + 1, 64)  # 16 tokens of 32 + 32 wide, and the pooled row
    ids = parts.tokenizer(["a cat"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    first = parts.text_encoder(ids, output_hidden_states=True).hidden_states[-2][0]
    out2 = parts.text_encoder_2(ids, output_hidden_states=True)  # both tiny tokenizers are the same
    assert torch.allclose(e[2, :16], torch.cat([first, out2.hidden_states[-2][0]], -1))
    assert torch.allclose(e[2, 16, :32], out2.text_embeds[0]) and not e[2, 16, 32:].any()
    assert not e[1].any() and torch.equal(e[0], e[3])  # "" is zeros (force_zeros_for_empty_prompt); rows follow prompts
    mixed = parts.encode_prompts([e[2], "a red square"])  # embeddings pass through as (L + 1, D)
    assert torch.equal(mixed[0], e[2]) and torch.allclose(mixed[1], e[0], atol=1e-5)  # batch of 1: ulp-close


def test_the_unet_reads_the_pooled_row_and_the_size(parts):
    unet = parts.unet
    assert isinstance(unet, SDXLUNet) and unet.pooled_dim == 32 and unet.config.cross_attention_dim == 64
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 500])
    e = parts.encode_prompts(["a red square", "a blue circle"])
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=e).sample
        ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]]).repeat(2, 1)  # pixels: 16 latent cells x VAE factor 2
        direct = unet.unet(x, t, encoder_hidden_states=e[:, :-1], added_cond_kwargs={"text_embeds": e[:, -1, :32],
                                                                                    "time_ids": ids}).sample
        assert torch.equal(out, direct)
        swapped = e.clone()
        swapped[:, -1] = e.flip(0)[:, -1]  # the other prompt's pooled vector, same hidden states
        assert not torch.allclose(unet(x, t, encoder_hidden_states=swapped).sample, out, atol=1e-4)
        other = unet.unet(x, t, encoder_hidden_states=e[:, :-1],
                          added_cond_kwargs={"text_embeds": e[:, -1, :32], "time_ids": ids * 2}).sample
        assert not torch.allclose(other, out, atol=1e-4)  # the size conditioning matters: it must be the input's


def test_edit_shapes_determinism_and_the_background_kept(xl):
    img = scene(37, 45, seed=4)  # not a multiple of the VAE factor: padded, then cropped back
    res = xl.edit(img, "a red square", "a blue circle", seed=3, **ONE)
    out, inside = np.asarray(res.image), np.asarray(res.mask_image) > 0
    assert out.shape == img.shape and res.mask.shape == (1, 23, 19)
    assert res.mask_changes == [["a blue square", "a red circle"]]  # one map per changed word, merged
    assert inside.any() and (~inside).any()
    assert np.array_equal(out[~inside], img[~inside]) and not np.array_equal(out[inside], img[inside])
    again = xl.edit(img, "a red square", "a blue circle", seed=3, **ONE)
    assert np.array_equal(np.asarray(again.image), out)
    assert not np.array_equal(np.asarray(xl.edit(img, "a red square", "a blue circle", seed=4, **ONE).image), out)


def test_the_mask_follows_the_words_and_rows_keep_their_pooled_vectors(xl, image):
    both = xl.mask(image, "a red square", ["a blue square", "a red circle"], seed=1, num_inference_steps=5)
    alone = [xl.mask(image, "a red square", t, seed=1, num_inference_steps=5) for t in ("a blue square", "a red circle")]
    for k in range(2):  # batched with another target (rows doubled and repeated) = alone: each row's pooled vector follows it
        assert torch.allclose(both.soft[k], alone[k].soft[0], atol=1e-5)
    assert not torch.allclose(both.soft[0], both.soft[1], atol=1e-3)  # another changed word, another map


def test_the_edit_reads_what_only_the_second_encoder_gives(xl, image):
    e = [xl.components.encode_prompts([p])[0] for p in ("a blue circle", "a dog")]  # one at a time, as an edit does
    pooled_only = e[0].clone()
    pooled_only[-1] = e[1][-1]  # the target's hidden states with another prompt's pooled vector
    kw = dict(seed=0, mask_per_change=False, **ONE)  # per-change maps need the target as text
    base = np.asarray(xl.edit(image, "a red square", e[0], composite=False, **kw).image)
    assert np.array_equal(base, np.asarray(xl.edit(image, "a red square", "a blue circle", composite=False, **kw).image))
    assert not np.array_equal(base, np.asarray(xl.edit(image, "a red square", pooled_only, composite=False, **kw).image))
    unet, real = xl.components.unet, SDXLUNet.time_ids
    try:  # a size conditioning that ignored the input would give another edit
        SDXLUNet.time_ids = lambda self, sample, dtype: real(self, sample, dtype) * 4
        sized = np.asarray(xl.edit(image, "a red square", "a blue circle", composite=False, **kw).image)
    finally:
        SDXLUNet.time_ids = real
    assert isinstance(unet, SDXLUNet) and not np.array_equal(base, sized)


@pytest.mark.parametrize("method", ["diffedit_attention_mask", "p2p", "diffedit_p2p"])
def test_the_attention_methods_attend_to_the_tokens_only(xl, image, method):
    res = xl.edit(image, "a red square", "a blue square", seed=0, method=method, **ONE)
    out = np.asarray(res.image)
    assert out.shape == image.shape and not np.array_equal(out, image)
    if method != "p2p":  # a DiffEdit mask: the background is the input's
        inside = np.asarray(res.mask_image) > 0
        assert inside.any() and np.array_equal(out[~inside], image[~inside])


def test_to_moves_the_second_encoder_and_the_pooled_row_follows():
    editor = DiffEditor.from_components(tiny_sdxl_components(), progress=False).to(dtype=torch.float64)
    parts = editor.components
    assert parts.text_encoder_2.dtype == parts.unet.unet.dtype == parts.dtype == torch.float64
    e = parts.encode_prompts(["a cat"])
    assert e.dtype == torch.float64 and e.shape == (1, 17, 64)
    res = editor.edit(scene(), "a red square", "a blue circle", seed=0, output_type="pt", **ONE)
    assert torch.isfinite(res.images).all() and res.images.shape == (1, 3, 32, 32)


def test_an_sdxl_inpainting_unet_decodes_a_candidate(image):
    from diffedit.shapeworld.train_inpaint import widen_unet

    unet = widen_unet(tiny_sdxl_components().unet.unet)  # 9 input channels, the new ones random
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] = torch.randn(unet.conv_in.weight[:, 4:].shape, generator=torch.Generator().manual_seed(0))
    editor = DiffEditor.from_components(tiny_sdxl_components(), progress=False, inpaint_unet=unet.eval())
    assert isinstance(editor.components.inpaint_unet, SDXLUNet) and editor.inpainter
    res = editor.edit(image, "a red square", "a blue circle", seed=0, **ONE)
    assert res.candidates == ["r=1 inpaint"]  # the inpainting UNet decoded the one candidate (unwrapped it would raise)
    inside = np.asarray(res.mask_image) > 0
    assert np.array_equal(np.asarray(res.image)[~inside], image[~inside])


def test_a_folder_loads_as_sdxl_and_edits_as_in_memory(xl, xl_dir, image):
    assert is_sdxl_folder(xl_dir) and not is_sdxl_folder(xl_dir / "unet")
    loaded = load_components(xl_dir)
    assert isinstance(loaded, SDXLComponents) and loaded.force_zeros_for_empty_prompt
    assert type(loaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert torch.allclose(loaded.encode_prompts(["a cat"]), xl.components.encode_prompts(["a cat"]), atol=1e-5)
    editor = DiffEditor.from_pretrained(str(xl_dir), progress=False)
    assert isinstance(editor.components, SDXLComponents)
    a = editor.edit(image, "a red square", "a blue circle", seed=2, **ONE)
    b = xl.edit(image, "a red square", "a blue circle", seed=2, **ONE)
    diff = np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int))  # loaded encoders: ulp-close
    assert diff.max() <= 2 and torch.equal(a.mask, b.mask)


def test_a_cached_hub_id_loads_as_sdxl(tmp_path, monkeypatch, xl_dir):
    import shutil

    import huggingface_hub.constants as hub

    snapshot = tmp_path / "hub" / "models--owner--tiny-sdxl" / "snapshots" / ("0" * 40)
    shutil.copytree(xl_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_components("owner/tiny-sdxl")
    assert isinstance(loaded, SDXLComponents) and loaded.name == "owner/tiny-sdxl"
    assert torch.equal(loaded.unet.unet.conv_in.weight, load_components(xl_dir).unet.unet.conv_in.weight)


def test_single_files_are_told_by_their_keys_or_their_config(tmp_path, xl_dir):
    from safetensors.torch import save_file

    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(tmp_path / "xl.safetensors"))
    save_file({"cond_stage_model.transformer.x": torch.zeros(2)}, str(tmp_path / "sd1.safetensors"))
    assert is_sdxl_checkpoint(tmp_path / "xl.safetensors") and not is_sdxl_checkpoint(tmp_path / "sd1.safetensors")
    assert is_sdxl_checkpoint(tmp_path / "sd1.safetensors", config=str(xl_dir))  # the config folder says SDXL


def test_a_single_file_loads_back_bit_exact(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    from safetensors.torch import save_file

    from ldm_keys import sdxl_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    c = tiny_sdxl_components(width_2=40)  # diffusers tells the two encoders apart by width (SDXL: 768 and 1280)
    config = save_tiny_sdxl(tmp_path / "config", components=c, weights=False)
    ckpt = tmp_path / "tiny_sdxl.safetensors"
    save_file(sdxl_checkpoint(c.unet.unet, c.vae, c.text_encoder, c.text_encoder_2), str(ckpt))
    assert is_sdxl_checkpoint(ckpt)
    loaded = load_components(ckpt, config=str(config))
    assert isinstance(loaded, SDXLComponents) and loaded.name == str(ckpt)
    for a, b in [(loaded.unet.unet, c.unet.unet), (loaded.vae, c.vae), (loaded.text_encoder, c.text_encoder),
                 (loaded.text_encoder_2, c.text_encoder_2)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sb)
    assert torch.allclose(loaded.encode_prompts(["a cat"]), c.encode_prompts(["a cat"]), atol=1e-5)


def _write(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(scene(37, 45)).save(path)
    return path


def test_cli_mask_edit_and_composite_on_an_sdxl_folder(tmp_path, xl_dir):
    src, model = _write(tmp_path), str(xl_dir)
    res = runner.invoke(app, ["mask", str(src), "-s", "a red square", "-t", "a blue circle", "-m", model,
                              "-o", str(tmp_path / "m.png"), "--seed", "1", "--set", "num_inference_steps=5", "-q"])
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "m.png")).shape == (45, 37)
    res = runner.invoke(app, ["edit", str(src), "-s", "a red square", "-t", "a blue circle", "-m", model, "--steps", "5",
                              "--seed", "7", "--mask-output", str(tmp_path / "em.png"), "-q"])  # default: 2 candidates
    assert res.exit_code == 0, res.output
    out, inside = np.asarray(Image.open(tmp_path / "photo_edited.png")), np.asarray(Image.open(tmp_path / "em.png")) > 0
    original = np.asarray(Image.open(src))
    assert np.array_equal(out[~inside], original[~inside]) and not np.array_equal(out, original)
    sidecar = json.loads((tmp_path / "photo_edited.json").read_text())
    assert sidecar["model"] == model and sidecar["candidates"] == ["r=1", "r=0.8 caption"]
    assert len(sidecar["candidate_scores"][0]) == 2 and len(set(sidecar["candidate_scores"][0])) == 2  # reranked
    res = runner.invoke(app, ["composite", str(src), str(tmp_path / "photo_edited.png"), "-s", "a red square",
                              "-t", "a blue circle", "-m", model, "--seed", "1", "-o", str(tmp_path / "c.png"), "-q"])
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "c.json").read_text())
    assert sidecar["mask_source"] == "prompts" and sidecar["model"] == model
    assert np.asarray(Image.open(tmp_path / "c.png")).shape == original.shape
