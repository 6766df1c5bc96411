"""Prompt sets (prompt_sets.py): files, templates, a tiny random seq2seq LM built here, averaged embeddings, the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertTokenizer, T5Config, T5ForConditionalGeneration
from typer.testing import CliRunner

from diffedit.cli import app
from diffedit.prompt_sets import Seq2SeqPrompter, mean_embedding, read_prompt_set, template_prompts
from tiny import tiny_components

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "on", "the", "grass", "sofa", "small"]
runner = CliRunner()


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny random T5 with a tiny word-piece tokenizer, written as a local folder (no download)."""
    path = tmp_path_factory.mktemp("t5")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(path)
    config = T5Config(vocab_size=len(WORDS) + 5, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                      pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    return path


def test_a_set_file_is_one_sentence_a_line(tmp_path):
    path = tmp_path / "set.txt"
    path.write_text("a photo of a cat\n\n  a cat on the grass  \n")
    assert read_prompt_set(path) == ["a photo of a cat", "a cat on the grass"]
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="no sentences"):
        read_prompt_set(path)
    assert all("red fox" in s for s in template_prompts(" red  fox "))


def test_the_mean_embedding_averages_the_sentences():
    parts = tiny_components()
    sentences = ["a red cat", "a blue dog", "a cat"]
    mean = mean_embedding(parts, sentences)
    rows = parts.encode_prompts(sentences)
    assert mean.shape == rows.shape[1:]
    torch.testing.assert_close(mean, rows.mean(0))
    assert not torch.allclose(mean, rows[0])


def test_a_local_seq2seq_model_writes_sentences_deterministically(t5_dir):
    prompter = Seq2SeqPrompter.from_pretrained(str(t5_dir), max_new_tokens=6)
    state = torch.random.get_rng_state()
    sentences = prompter("cat", num=4, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state untouched
    assert sentences == prompter("cat", num=4, seed=1)
    assert sentences and len(set(sentences)) == len(sentences) and all(s.strip() for s in sentences)
    assert all(set(s.split()) <= set(WORDS) for s in sentences)


def test_edit_with_prompt_sets_records_their_sentences(tmp_path, tiny_model_dir, t5_dir):
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    source = tmp_path / "cats.txt"
    source.write_text("a photo of a cat\na cat on the sofa\n")
    res = runner.invoke(app, ["edit", str(image), "--source-set", str(source), "--target-set", "dog", "--model",
                              str(tiny_model_dir), "--steps", "4", "--seed", "0", "--one-candidate"])
    assert res.exit_code == 0, res.output
    prompts = json.loads((tmp_path / "photo_edited.json").read_text())["prompts"]
    assert prompts["source_from"] == "set file" and prompts["source_set"] == ["a photo of a cat", "a cat on the sofa"]
    assert prompts["target_from"] == "templates" and all("dog" in s for s in prompts["target_set"])
    res = runner.invoke(app, ["edit", str(image), "--source", "a cat", "--target-set", "dog", "--prompt-lm", str(t5_dir),
                              "--model", str(tiny_model_dir), "--steps", "4", "--seed", "0", "--one-candidate",
                              "--overwrite", "--quiet"])
    assert res.exit_code == 0, res.output
    prompts = json.loads((tmp_path / "photo_edited.json").read_text())["prompts"]
    assert prompts["target_from"] == "language model" and prompts["source_from"] == "given"
    assert prompts["target_set"] == Seq2SeqPrompter.from_pretrained(str(t5_dir))("dog")


def test_an_instruction_the_rules_cannot_apply_goes_to_the_language_model(t5_dir):
    from diffedit.prompts_auto import derive_prompts

    image = np.full((32, 32, 3), 128, np.uint8)
    prompter = Seq2SeqPrompter.from_pretrained(str(t5_dir), max_new_tokens=6)
    with pytest.raises(ValueError, match="ShapeWorld grammar"):  # a free caption: the rules alone refuse it
        derive_prompts(None, image, source="a cat on the sofa", instruction="make the cat a dog")
    derived = derive_prompts(None, image, source="a cat on the sofa", instruction="make the cat a dog",
                             rewriter=prompter.rewrite)
    assert derived.record["target_from"] == "language model" and derived.record["rewriter"] == str(t5_dir)
    assert derived.targets == [prompter.rewrite("a cat on the sofa", "make the cat a dog")]  # greedy: deterministic
    assert derived.targets[0] and derived.targets[0] != "a cat on the sofa"
    # a ShapeWorld caption the rules can rewrite never reaches the model
    rules = derive_prompts(None, image, source="a red circle on a gray background", instruction="make the circle blue",
                           rewriter=prompter.rewrite)
    assert rules.record["target_from"] == "instruction" and rules.targets == ["a blue circle on a gray background"]
