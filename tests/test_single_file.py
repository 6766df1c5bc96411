"""Single-file original SD 1.x checkpoints (.safetensors / .ckpt) through `load_components`, offline.

A tiny pipeline with SD 1.5's block layout (so the LDM / CompVis key naming applies) and random weights is
written twice: as a diffusers folder holding only the configs (what `config=` points at, as diffusers itself
would fetch from the hub: json/txt, no weights) and as ONE original-format checkpoint (`model.diffusion_model.`,
`first_stage_model.`, `cond_stage_model.transformer.`, names from tests/ldm_keys.py). Loading the checkpoint
must give back every weight bit for bit, with the hub switched off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from conftest import scene
from ldm_keys import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, sd1_checkpoint
from tiny import tiny_tokenizer

from diffedit import DiffEditor
from diffedit.loading import Components, load_components
from diffedit.schedule import ddim_scheduler

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")


def sd1_components(seed: int = 0) -> Components:
    """SD 1.5's layout, tiny: UNet 4 levels (3 cross-attention + 1 plain, 2 layers each), 4-level VAE."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
        sample_size=64, scaling_factor=0.18215, force_upcast=False,
    )
    scheduler = PNDMScheduler(  # what SD 1.5's hub folder names; the editor turns it into DDIM
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
        skip_prk_steps=True, steps_offset=1,
    )
    for m in (unet, vae, text_encoder):
        m.eval()
    return Components(vae, unet, text_encoder, tokenizer, scheduler, name="sd1-tiny")


def save_config_folder(c: Components, path, keep_weights: bool = False):
    """save_pretrained of the whole pipeline; by default the weight files are then removed (configs only)."""
    pipe = StableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    if not keep_weights:
        for f in list(path.rglob("*")):
            if f.name.endswith(WEIGHT_SUFFIXES):
                f.unlink()
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No hub: a hidden download attempt raises instead of hanging, and no cached model can stand in."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # read at import time; HTTP calls check this at call time
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """(components, checkpoint .safetensors, config folder)."""
    root = tmp_path_factory.mktemp("sd1_single_file")
    c = sd1_components()
    folder = save_config_folder(c, root / "config")
    ckpt = root / "sd1-tiny.safetensors"
    save_file(sd1_checkpoint(c.unet, c.vae, c.text_encoder, c.scheduler), str(ckpt))
    return c, ckpt, folder


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module, dtype=None):
    a, b = loaded.state_dict(), original.state_dict()
    assert set(a) == set(b)
    for k in b:
        want = b[k] if dtype is None else b[k].to(dtype)
        assert a[k].dtype == want.dtype and torch.equal(a[k], want), k


def assert_same_components(loaded: Components, c: Components, dtype=None):
    for part in ("unet", "vae", "text_encoder"):
        assert type(getattr(loaded, part)) is type(getattr(c, part))
        assert_same_weights(getattr(loaded, part), getattr(c, part), dtype)
    prompts = ["a photo of a cat", "a red circle on the bowl"]
    assert loaded.tokenizer(prompts, padding="max_length").input_ids == c.tokenizer(prompts, padding="max_length").input_ids
    s, o = loaded.scheduler, c.scheduler
    assert s.config.num_train_timesteps == o.config.num_train_timesteps
    assert torch.equal(s.betas, o.betas) and torch.equal(s.alphas_cumprod, o.alphas_cumprod)
    ddim = ddim_scheduler(s)
    assert isinstance(ddim, DDIMScheduler) and torch.equal(ddim.alphas_cumprod, o.alphas_cumprod)
    assert ddim.config.steps_offset == 1 and ddim.config.set_alpha_to_one is False


def test_checkpoint_has_the_original_layout(sd1):
    c, ckpt, _ = sd1
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        keys = set(f.keys())
        q = f.get_tensor(VAE_PREFIX + "encoder.mid.attn_1.q.weight")
    n_unet, n_vae = len(c.unet.state_dict()), len(c.vae.state_dict())
    assert sum(k.startswith(UNET_PREFIX) for k in keys) == n_unet
    assert sum(k.startswith(VAE_PREFIX) for k in keys) == n_vae
    assert sum(k.startswith(CLIP_PREFIX + "text_model.") for k in keys) == len(c.text_encoder.state_dict())
    for k in (  # a few names every SD 1.x checkpoint has
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.7.0.skip_connection.weight",  # 32 -> 64 channels
        "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",  # plain up block: upsampler at .1
        "model.diffusion_model.output_blocks.5.2.conv.weight",  # cross-attention up block: upsampler at .2
        "model.diffusion_model.output_blocks.11.1.proj_out.weight",
        "model.diffusion_model.time_embed.2.weight",
        "model.diffusion_model.out.2.bias",
        "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.down.2.downsample.conv.weight",
        "first_stage_model.decoder.up.3.block.2.conv2.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.decoder.mid.block_2.norm1.weight",
        "first_stage_model.decoder.norm_out.bias",
        "first_stage_model.post_quant_conv.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        "alphas_cumprod",
    ):
        assert k in keys, k
    assert "model.diffusion_model.output_blocks.12.0.in_layers.0.weight" not in keys
    assert q.shape == (32, 32, 1, 1)  # VAE mid attention: 1x1 conv in LDM, linear in diffusers


def test_safetensors_checkpoint_loads_back_bit_exact(sd1):
    c, ckpt, folder = sd1
    loaded = load_components(str(ckpt), config=str(folder))
    assert loaded.name == str(ckpt)
    assert_same_components(loaded, c)
    torch.manual_seed(1)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 16, 32)
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, t, ctx).sample, c.unet(x, t, ctx).sample)


def test_ckpt_with_state_dict_wrapper_and_dtype(sd1, tmp_path):
    c, _, folder = sd1
    ckpt = tmp_path / "sd1-tiny.ckpt"
    torch.save({"state_dict": sd1_checkpoint(c.unet, c.vae, c.text_encoder, c.scheduler), "global_step": 1}, ckpt)
    loaded = load_components(ckpt, dtype=torch.float16, config=str(folder))
    assert_same_components(loaded, c, dtype=torch.float16)


def test_checkpoint_weights_win_over_weights_in_the_config_folder(sd1, tmp_path):
    c, ckpt, _ = sd1
    other = save_config_folder(sd1_components(seed=1), tmp_path / "with_weights", keep_weights=True)
    assert_same_components(load_components(str(ckpt), config=str(other)), c)


def test_editor_from_single_file_edits_like_the_original(sd1):
    c, ckpt, folder = sd1
    ed = DiffEditor.from_pretrained(ckpt, config=str(folder), progress=False)
    assert isinstance(ed.scheduler, DDIMScheduler) and ed.vae_scale_factor == 8
    assert_same_weights(ed.unet, c.unet)
    ref = DiffEditor.from_components(c, progress=False)
    img = scene(64, 64)
    kw = dict(seed=3, num_inference_steps=4)
    a = ed.edit(img, "a red square", "a blue circle", **kw)
    b = ref.edit(img, "a red square", "a blue circle", **kw)
    assert torch.equal(a.soft, b.soft) and np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_without_config_offline_fails_clearly_instead_of_downloading(sd1):
    _, ckpt, _ = sd1  # diffusers would fetch stable-diffusion-v1-5's configs from the hub
    with pytest.raises(FileNotFoundError, match=r"sd1-tiny\.safetensors.*pass config=.*--config"):
        load_components(str(ckpt))


def test_unreadable_checkpoint(sd1, tmp_path):
    _, _, folder = sd1
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(OSError, match="broken.safetensors"):
        load_components(str(bad), config=str(folder))


def test_cli_edit_with_a_single_file_checkpoint(sd1, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from diffedit.cli import app

    _, ckpt, folder = sd1
    src = tmp_path / "photo.png"
    Image.fromarray(scene(64, 64)).save(src)
    args = ["edit", str(src), "-s", "a red square", "-t", "a blue circle", "--model", str(ckpt), "--steps", "4",
            "--seed", "1", "--device", "cpu", "--quiet"]
    res = CliRunner().invoke(app, args + ["--config", str(folder)])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "photo_edited.png").size == (64, 64)
    res = CliRunner().invoke(app, args)  # no --config, no hub: a clear message, no traceback
    assert res.exit_code != 0 and "--config" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("name", ["model.bin", "weights.txt", "model.pt"])
def test_other_suffixes_are_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"\.safetensors or \.ckpt") as e:
        load_components(str(path))
    assert name in str(e.value)


@pytest.mark.parametrize("name", ["missing.safetensors", "no/such/dir/model.ckpt"])
def test_missing_checkpoint(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_components(str(tmp_path / name), config=str(tmp_path))
