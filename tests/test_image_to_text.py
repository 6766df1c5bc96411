"""An image-to-text captioner from a local folder (captioning.ImageToTextCaptioner): a tiny random BLIP built here."""

import numpy as np
import pytest
import torch
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

from diffedit import DiffEditor
from diffedit.captioning import ImageToTextCaptioner
from diffedit.prompts_auto import derive_prompts
from tiny import tiny_components

WORDS = ["a", "red", "blue", "circle", "square", "on", "gray", "background", "cat", "photo", "of"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """A tiny random BLIP captioning model and its processor, written as a local folder (no download)."""
    path = tmp_path_factory.mktemp("blip")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[CLS]")
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    config = BlipConfig(text_config=dict(vocab_size=len(WORDS) + 5, **small, pad_token_id=0, bos_token_id=2,
                                         sep_token_id=3, eos_token_id=3),
                        vision_config=dict(**small, image_size=32, patch_size=8), projection_dim=32)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(path)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def test_a_local_blip_folder_captions_an_image(blip_dir):
    captioner = ImageToTextCaptioner.from_pretrained(str(blip_dir), max_new_tokens=5)
    image = np.zeros((40, 48, 3), np.uint8)
    image[10:30, 10:30] = (220, 50, 50)
    caption = captioner(image)
    assert isinstance(caption, str) and caption and caption == captioner(image)  # greedy: the same caption again
    assert set(caption.split()) <= set(WORDS)  # words of the tiny vocabulary, special tokens dropped
    assert captioner.name == str(blip_dir)


def test_derive_prompts_takes_the_source_from_the_captioner(blip_dir):
    captioner = ImageToTextCaptioner.from_pretrained(str(blip_dir), max_new_tokens=5)
    editor = DiffEditor.from_components(tiny_components(), progress=False)
    image = np.full((32, 32, 3), 128, np.uint8)
    derived = derive_prompts(editor, image, source="auto", target="a blue square", captioner=captioner)
    assert derived.source == captioner(image)
    assert derived.record["captioner"] == str(blip_dir) and derived.record["source_from"] == "captioner"
