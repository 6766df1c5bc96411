"""Prompt sets: a prompt as the mean text embedding of several sentences, as diffusers' DiffEdit guide does.

The sentences come from a file (one a line), from templates around a concept word (the offline default), or from a
local seq2seq language model (Flan-T5 in the guide) asked for captions of images containing the concept. The mean of
their (L, D) embeddings goes wherever a prompt goes (`editor.edit(image, source_embeds, target_embeds)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["TEMPLATES", "read_prompt_set", "template_prompts", "Seq2SeqPrompter", "mean_embedding"]

TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a close-up photo of a {}",
             "a rendering of a {}", "a good photo of a {}")
MAX_SENTENCES = 256
# the guide's instruction to Flan-T5
LM_INSTRUCTION = ("Provide a caption for images containing a {}. The captions should be in English and should be no "
                  "longer than 150 characters.")


def read_prompt_set(path: str | Path) -> list[str]:
    """The sentences of a prompt-set file: one a line, blank lines skipped; ValueError when it has none."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the prompt set {path}: {e}") from e
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise ValueError(f"the prompt set {path} has no sentences (one a line)")
    if len(sentences) > MAX_SENTENCES:
        raise ValueError(f"the prompt set {path} has {len(sentences)} sentences; at most {MAX_SENTENCES}")
    return sentences


def template_prompts(concept: str, templates: Sequence[str] = TEMPLATES) -> list[str]:
    """Sentences about a concept word from templates ("a photo of a {}"...): the offline default."""
    concept = " ".join(concept.split())
    if not concept:
        raise ValueError("the concept word is empty")
    return [t.format(concept) for t in templates]


REWRITE_INSTRUCTION = "Rewrite the caption as the instruction says. Caption: {} Instruction: {} New caption:"


class Seq2SeqPrompter:
    """Sentences about a concept from a local seq2seq language model (Flan-T5), sampled as the guide does."""

    def __init__(self, model, tokenizer, *, name: str = "seq2seq", max_new_tokens: int = 40):
        self.model, self.tokenizer, self.name, self.max_new_tokens = model.eval(), tokenizer, name, max_new_tokens

    @classmethod
    def from_pretrained(cls, path: str, *, device: str | torch.device = "cpu", **kwargs) -> "Seq2SeqPrompter":
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path, local_files_only=True), name=str(path), **kwargs)

    @torch.no_grad()
    def __call__(self, concept: str, num: int = 8, *, seed: int = 0) -> list[str]:
        """`num` sampled sentences (top-k 10, temperature 0.7: the guide's), deterministic for a seed; empty ones
        and repeats dropped."""
        ids = self.tokenizer(LM_INSTRUCTION.format(concept), return_tensors="pt").input_ids.to(self.model.device)
        with torch.random.fork_rng(devices=[]):  # the seed, without touching the caller's random state
            torch.manual_seed(seed)
            out = self.model.generate(ids, do_sample=True, max_new_tokens=self.max_new_tokens, top_k=10,
                                      temperature=0.7, num_return_sequences=num)
        sentences = [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        sentences = list(dict.fromkeys(s for s in sentences if s))
        if not sentences:
            raise ValueError(f"the language model {self.name} gave no sentence about {concept!r}")
        return sentences


    @torch.no_grad()
    def rewrite(self, caption: str, instruction: str) -> str:
        """The caption rewritten as the instruction says (greedy, deterministic); ValueError when the model gives
        nothing or the caption unchanged."""
        text = REWRITE_INSTRUCTION.format(caption, instruction)
        ids = self.tokenizer(text, return_tensors="pt").input_ids.to(self.model.device)
        out = self.model.generate(ids, do_sample=False, max_new_tokens=self.max_new_tokens)
        rewritten = " ".join(self.tokenizer.decode(out[0], skip_special_tokens=True).split())
        if not rewritten or rewritten == caption:
            raise ValueError(f"the language model {self.name} did not rewrite {caption!r} by {instruction!r}")
        return rewritten


def mean_embedding(parts, sentences: Sequence[str]) -> torch.Tensor:
    """(L, D) mean of the sentences' text embeddings (parts: a Components or a DiffEditor's .components)."""
    if not sentences:
        raise ValueError("a prompt set needs at least one sentence")
    return parts.encode_prompts(list(sentences)).mean(0)
