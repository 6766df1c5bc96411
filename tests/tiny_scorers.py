"""Random scoring networks written to folders in the layouts users bring real weights in (no download): LPIPS as
torchvision's backbone checkpoint plus the lpips package's linear heads, CLIP and a DINO-shaped ViT as transformers
folders, tiny."""

from __future__ import annotations

from pathlib import Path

import torch

from diffedit.bench.models import TINY_WORDS, char_tokenizer
from diffedit.bench.real_metrics import LPIPS, LPIPS_NETS


def save_random_lpips(folder: Path, net: str = "squeeze", seed: int = 0) -> LPIPS:
    """A random LPIPS of the real architecture, saved as `{arch}-0000.pth` (torchvision's keys, classifier included)
    and `{net}.pth` (lpips' `lin{k}.model.1.weight` heads, (1, C, 1, 1), non-negative); returns the model saved."""
    torch.manual_seed(seed)
    model = LPIPS(net)
    with torch.no_grad():
        for head in model.heads:
            head.copy_(torch.rand(head.shape) * 0.1)
    folder.mkdir(parents=True, exist_ok=True)
    arch = LPIPS_NETS[net][0]
    backbone = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(10, 4)  # torchvision's checkpoints hold the classifier too
    torch.save(backbone, folder / f"{arch}-0000.pth")
    torch.save({f"lin{i}.model.1.weight": h.detach().view(1, -1, 1, 1).clone() for i, h in enumerate(model.heads)},
               folder / f"{net}.pth")
    return model


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random CLIPModel (width 32, 2 layers, 32 px images) with its CLIPProcessor, as save_pretrained writes them."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(seed)
    tokenizer = char_tokenizer(77, TINY_WORDS)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_dino(folder: Path, seed: int = 0) -> Path:
    """A random ViTModel (width 32, 2 layers, 8 px patches) shaped as DINO's, as save_pretrained writes it."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                       patch_size=8), add_pooling_layer=False).save_pretrained(folder)
    return folder
