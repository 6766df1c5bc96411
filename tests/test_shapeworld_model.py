"""The ShapeWorld model: grammar tokenizer, SD-shaped components, saving, and a tiny training run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from diffedit.shapeworld import world
from diffedit.shapeworld.evaluate import images_to_tensor, render_scenes
from diffedit.shapeworld.model import (
    CONFIGS,
    build_components,
    build_tokenizer,
    build_vae,
    component_sizes,
    get_config,
    load_model,
)
from diffedit.shapeworld.train import WARMUP_STEPS, _lr_factor, encode_dataset, train, vae_loss

GRAMMAR = ["a", "and", "on", "background", *world.COLORS, *world.SHAPES, *world.BACKGROUNDS]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2 + 2 step training run of the tiny config (stage all)."""
    out = tmp_path_factory.mktemp("tiny_run")
    figures = train(out, config="tiny", vae_steps=2, unet_steps=2, seed=0, quiet=True)
    return out, figures


def test_every_grammar_word_is_one_token(tokenizer):
    for word in GRAMMAR:
        assert len(tokenizer.tokenize(word)) == 1, (word, tokenizer.tokenize(word))
        assert tokenizer.tokenize(word)[0] == word + "</w>"
    caption = "a red circle and a green triangle on a checkered background"
    assert tokenizer.tokenize(caption) == [w + "</w>" for w in caption.split()]


def test_any_lowercase_text_tokenizes(tokenizer):
    ids = tokenizer("the quick brown fox jumps over 12 lazy dogs").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]


def test_longest_caption_fits(tokenizer):
    lengths = [len(tokenizer(c).input_ids) for c in world.all_captions()]
    assert max(lengths) == max(len(c.split()) for c in world.all_captions()) + 2  # words + bos + eos
    assert max(lengths) <= tokenizer.model_max_length


def test_tokenizer_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    texts = world.all_captions()[::50] + ["", "hello world"]
    kwargs = dict(padding="max_length", max_length=tokenizer.model_max_length)
    assert loaded(texts, **kwargs).input_ids == tokenizer(texts, **kwargs).input_ids
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.model_max_length == tokenizer.model_max_length


def test_component_shapes():
    c = build_components("tiny")
    x = torch.zeros(2, 3, 128, 128)
    with torch.no_grad():
        z = c["vae"].encode(x).latent_dist.mean
        assert z.shape == (2, 4, 16, 16)
        assert c["vae"].decode(z).sample.shape == (2, 3, 128, 128)
        prompts = ["a red circle on a gray background", ""]
        ids = c["tokenizer"](prompts, padding="max_length", return_tensors="pt").input_ids
        states = c["text_encoder"](ids)[0]
        assert states.shape == (2, 16, c["unet"].config.cross_attention_dim)
        eps = c["unet"](z, torch.tensor([10, 900]), encoder_hidden_states=states).sample
    assert eps.shape == z.shape
    assert c["scheduler"].config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_sizes(name):
    sizes = component_sizes(build_components(name))
    assert sizes["fp16_mb"] <= 40
    if name == "tiny":
        assert sizes["total"] < 500_000
    if name == "full":
        assert 10e6 <= sizes["unet"] <= 20e6


def test_unknown_config():
    with pytest.raises(ValueError, match="unknown config"):
        get_config("huge")


def test_vae_overfits_a_fixed_batch():
    torch.manual_seed(0)
    vae = build_vae(CONFIGS["tiny"])
    images, _ = render_scenes(4, seed=3)
    x = images_to_tensor(images)[:, :, :64, :64]  # (4, 3, 64, 64)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = vae_loss(vae, x, 1e-6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_tiny_training_writes_a_loadable_model(trained):
    out, figures = trained
    model = out / "model"
    assert set(json.loads((model / "model_index.json").read_text())) >= {"vae", "unet", "text_encoder", "tokenizer"}
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_pretrained(model, subfolder="scheduler")
    assert scheduler.config.steps_offset == 1 and not scheduler.config.clip_sample
    assert vae.config.scaling_factor != 1.0  # set from the data
    assert tok("a red circle on a gray background").input_ids == build_tokenizer()(
        "a red circle on a gray background"
    ).input_ids
    for f in model.rglob("*.safetensors"):
        with safe_open(f, "pt") as st:
            assert all(st.get_tensor(k).dtype == torch.float16 for k in st.keys())
    assert all(f.stat().st_size < 16 * 2**20 for f in model.rglob("*") if f.is_file())
    info = json.loads((model / "training.json").read_text())
    assert info["vae_steps"] == 2 and info["unet_steps"] == 2 and "figures" in info
    assert "vae_psnr" in figures and "generation_accuracy" in figures
    assert list((out / "samples").glob("*.png"))


def test_unet_stage_resumes(trained, tmp_path):
    src, _ = trained
    train(tmp_path, config="tiny", stage="unet", resume=src, unet_steps=1, quiet=True)
    info = json.loads((tmp_path / "model" / "training.json").read_text())
    assert info["unet_steps"] == 3  # 2 from the first run + 1
    components = load_model(tmp_path / "model")
    assert components["vae"].config.scaling_factor == pytest.approx(
        AutoencoderKL.from_pretrained(Path(src) / "model", subfolder="vae").config.scaling_factor, rel=1e-3
    )


def test_a_spent_time_budget_still_trains_one_unet_step(trained, tmp_path):
    """A call whose loading and encoding outlast its minutes (a busy machine) trains one step, not none."""
    src, _ = trained
    train(tmp_path, config="tiny", stage="unet", resume=src, minutes=1e-6, quiet=True)
    info = json.loads((tmp_path / "model" / "training.json").read_text())
    assert info["unet_steps"] == 3 and info["stages"][-1]["steps"] == 1  # 2 from the first run + 1


def test_unet_stages_chain(trained, tmp_path):
    """Each UNet stage's folder holds the VAE too, so a third call can continue from the second."""
    src, _ = trained
    second, third = tmp_path / "second", tmp_path / "third"
    train(second, config="tiny", stage="unet", resume=src, unet_steps=1, quiet=True)
    assert (second / "ckpt" / "vae").is_dir()
    train(third, config="tiny", stage="unet", resume=second, unet_steps=1, quiet=True)
    info = json.loads((third / "model" / "training.json").read_text())
    assert info["unet_steps"] == 4 and [h["stage"] for h in info["stages"]] == ["vae", "unet", "unet", "unet"]
    for name in ("vae", "unet", "text_encoder"):  # no local path of a resumed component in a shipped config
        assert "_name_or_path" not in json.loads((third / "model" / name / "config.json").read_text()), name


def test_unet_stage_resumes_from_model_folder(trained, tmp_path):
    """Only the fp16 model folder comes back from a GPU call: training continues from its weights."""
    import shutil

    src, _ = trained
    carried = tmp_path / "carried"
    shutil.copytree(Path(src) / "model", carried / "model")  # no ckpt/: no optimizer, no fp32 weights
    out = tmp_path / "out"
    train(out, config="tiny", stage="unet", resume=carried, unet_steps=0, quiet=True)
    before, after = load_model(carried / "model"), load_model(out / "model")
    for name in ("unet", "text_encoder", "vae"):
        a, b = before[name].state_dict(), after[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name  # fp16 -> fp32 -> fp16 is exact
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["unet_steps"] == 2 and info["stages"][0]["stage"] == "vae"
    train(tmp_path / "more", config="tiny", stage="unet", resume=carried / "model", unet_steps=1, quiet=True)
    assert json.loads((tmp_path / "more" / "model" / "training.json").read_text())["unet_steps"] == 3
    changed = load_model(tmp_path / "more" / "model")["unet"].state_dict()
    assert any(not torch.equal(before["unet"].state_dict()[k], changed[k]) for k in changed)


def test_model_folder_of_another_config_is_refused(trained, tmp_path):
    src, _ = trained
    with pytest.raises(ValueError, match="--config"):
        train(tmp_path, config="small", stage="unet", resume=Path(src) / "model", unet_steps=1, quiet=True)


def test_bad_stage():
    with pytest.raises(ValueError, match="unknown stage"):
        train("/nonexistent", config="tiny", stage="text")


def test_generate_is_deterministic(trained):
    from diffedit.shapeworld.generate import generate

    components = load_model(trained[0] / "model")
    captions = ["a red circle on a gray background", "a blue square and a white triangle on a dark background"]
    a = generate(components, captions, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    b = generate(components, captions, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_cosine_learning_rate_decays_to_a_tenth_after_warmup():
    assert _lr_factor(0, 0.0, cosine=False) == pytest.approx(1 / WARMUP_STEPS)
    assert _lr_factor(WARMUP_STEPS, 0.7, cosine=False) == 1.0  # constant: progress is ignored
    factors = [_lr_factor(WARMUP_STEPS, p, cosine=True) for p in np.linspace(0, 1, 11)]
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(factors, factors[1:]))


def test_annealed_unet_stage_ends_on_a_lower_learning_rate(trained, tmp_path):
    src, _ = trained
    lrs = {}
    for anneal in (False, True):
        out = tmp_path / str(anneal)
        train(out, config="tiny", stage="unet", resume=src, unet_steps=4, anneal=anneal, quiet=True)
        info = json.loads((out / "model" / "training.json").read_text())
        stage = info["stages"][-1]
        assert stage["anneal"] is anneal and info["call"]["anneal"] is anneal
        lrs[anneal] = stage["final_lr"]
    lr = get_config("tiny").unet_lr
    # the last of 4 steps continuing a 2-step run with its optimizer: global step 5, progress 3 / 4
    assert lrs[False] == pytest.approx(lr * _lr_factor(5, 0.0, cosine=False))
    assert lrs[True] == pytest.approx(lr * _lr_factor(5, 3 / 4, cosine=True))
    assert lrs[True] < lrs[False]


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_two_object_share_of_training_scenes(share):
    vae = build_vae(get_config("tiny"))
    latents, captions = encode_dataset(vae, 12, seed=3, quiet=True, two_object_share=share)
    assert latents.shape == (12, 4, 16, 16) and len(captions) == 12
    assert [" and a " in c for c in captions] == [share == 1.0] * 12


def test_two_object_share_default_keeps_the_worlds_mix_and_is_checked():
    vae = build_vae(get_config("tiny"))
    _, default = encode_dataset(vae, 8, seed=3, quiet=True)
    rng = np.random.default_rng(3)
    assert default == [world.sample_scene(rng).caption() for _ in range(8)]  # the dataset of earlier runs
    with pytest.raises(ValueError, match="two_object_share"):
        encode_dataset(vae, 8, seed=3, quiet=True, two_object_share=1.5)


def test_recorded_command_names_the_executable_without_its_local_path(trained, tmp_path, monkeypatch):
    src, _ = trained
    monkeypatch.setattr("sys.argv", ["/home/someone/.venv/bin/diffedit", "shapeworld", "train", "--config", "tiny"])
    train(tmp_path, config="tiny", stage="unet", resume=src, unet_steps=0, quiet=True)
    command = json.loads((tmp_path / "model" / "training.json").read_text())["command"]
    assert command == "diffedit shapeworld train --config tiny"
