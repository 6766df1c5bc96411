"""Models the benchmarks run on: random-weight builds (no download) and loading by name or path.

Timing does not depend on weight values, so `sd15-random` (Stable Diffusion 1.5's architecture with
random weights) measures what the real SD 1.5 would cost, and `tiny` measures the per-step overhead of
the code around the networks. `tiny_components` and `char_tokenizer` build them offline, in memory; the
test suite builds its models with them too (tests/tiny.py), so one builder serves both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from diffedit.devices import parse_dtype
from diffedit.editor import DiffEditor
from diffedit.loading import Components
from diffedit.schedule import sd_scheduler

if TYPE_CHECKING:  # the model classes are imported where a model is built: `diffedit --help` stays fast
    from transformers import CLIPTokenizer

__all__ = ["BENCH_MODELS", "TINY_WORDS", "char_tokenizer", "tiny_components", "sd15_random_components", "load_bench_editor"]

BENCH_MODELS = ("tiny", "shapeworld", "sd15-random")  # or a path / hub id
TINY_WORDS = ("a", "cat", "dog", "red", "blue", "circle", "square", "on", "photo", "of", "the", "bowl")  # one token each


def char_tokenizer(max_length: int, words: tuple[str, ...] = ()) -> "CLIPTokenizer":
    """A CLIP tokenizer built in memory, with no files: each letter a-z is a token (with and without the
    word-final `</w>`), and each of `words` is merged into one token; prompts are padded or cut to `max_length`.

    The random-weight models' tokenizer (`sd15-random` with no words, `tiny` with TINY_WORDS)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []  # transformers 5 wants tuples, not "a b" strings
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        acc = pieces[0]
        for p in pieces[1:]:
            merges.append((acc, p))
            acc += p
            vocab.setdefault(acc, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")


def tiny_components(seed: int = 0) -> Components:
    """The `tiny` model: random components seeded `seed` (VAE factor 2, UNet 32/64, 2-layer text encoder of width 32,
    `char_tokenizer(16, TINY_WORDS)`, SD's DDIM schedule); a step costs milliseconds on CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = char_tokenizer(16, TINY_WORDS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
        sample_size=32, force_upcast=False,
    )
    return Components(vae, unet, text_encoder, tokenizer, sd_scheduler(), name="tiny")


def sd15_random_components(seed: int = 0) -> Components:
    """Stable Diffusion 1.5's architecture with random weights: 860 M UNet, 84 M VAE, 123 M CLIP text encoder.

    UNet weights are halved (as /work/shared/tools/diffusers_diffedit_gpu_anchor.py does) so that fp16
    activations of a random network stay finite.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8,
    )
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215,
        force_upcast=False,  # random weights: fp16 is fine, and both pipelines then run the VAE in one dtype
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    return Components(vae, unet, text_encoder, char_tokenizer(77), sd_scheduler(), name="sd15-random")


def load_bench_editor(
    model: str | None, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32", progress: bool = False,
    inpaint_model: str | None = "auto",
) -> DiffEditor:
    """An editor for a benchmark: "tiny", "sd15-random", "shapeworld" / None (the embedded model), or a path/hub id;
    inpaint_model as `diffedit edit --inpaint-model` takes it ("auto": the embedded inpainter with the embedded model;
    "none" and "same": none)."""
    if model in ("tiny", "sd15-random"):
        if inpaint_model not in (None, "auto", "none", "same"):
            raise ValueError(f"the {model} model is built at random: no inpainting model fits it")
        editor = DiffEditor.from_components(tiny_components() if model == "tiny" else sd15_random_components(),
                                            progress=progress)
    else:
        editor = DiffEditor.from_pretrained(None if model in (None, "shapeworld") else model, progress=progress,
                                            inpaint_model=inpaint_model)
    if editor.device != torch.device(device):
        editor.to(device)
    dtype = parse_dtype(dtype)
    # cast only when needed (diffusers warns on every .to(dtype)); transformers 5 loads a checkpoint's own
    # dtype, so an fp16-saved text encoder may come back fp16 beside an fp32 UNet
    if any(m.dtype != dtype for m in (editor.unet, editor.text_encoder, editor.vae)):
        editor.to(dtype=dtype)
    return editor
