"""Cross-attention maps of a UNet call: which latent cells each prompt token attends to.

`capture_cross_attention(unet)` installs recording attention processors for the duration of a `with` block and
puts the UNet's own processors back afterwards, whatever happens inside. Each recorder computes the cross-attention
probabilities softmax(q k^T / sqrt(d)) of its layer on the side and then calls the layer's own processor, so the
UNet's outputs are exactly those of the plain UNet. The maps of the changed words of a target prompt locate the
edit (Prompt-to-Prompt's local blend, Hertz et al. 2022; InstDiffEdit's one-pass attention mask, Zou et al. 2024).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = ["CrossAttentionStore", "attention_grid", "capture_cross_attention", "changed_token_positions", "word_token_spans"]


class CrossAttentionStore:
    """Cross-attention probabilities of every recorded layer, averaged over heads: name -> [(B, cells, tokens)]."""

    def __init__(self) -> None:
        self.layers: dict[str, list[torch.Tensor]] = {}

    def add(self, name: str, probs: torch.Tensor) -> None:
        self.layers.setdefault(name, []).append(probs.detach().float())

    def maps(self, size: tuple[int, int]) -> torch.Tensor:
        """(B, tokens, h, w): every layer's map resized to `size` (the latent grid) and averaged over layers and calls."""
        resized = [attention_grid(probs, size) for calls in self.layers.values() for probs in calls]
        if not resized:
            raise ValueError("no cross-attention was recorded: the UNet has no cross-attention layers, or was not called")
        return torch.stack(resized).mean(0)


def attention_grid(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, cells, tokens) probabilities of one layer -> (B, tokens, h, w) maps on the latent grid `size` (bilinear)."""
    b, cells, tokens = probs.shape
    h, w = size
    lh = max(1, round((cells * h / w) ** 0.5))  # the layer's own grid keeps the latent's aspect ratio
    grid = probs.transpose(1, 2).reshape(b, tokens, lh, cells // lh)
    return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)


def _cross_attention_probs(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb) -> torch.Tensor:
    """(B, cells, tokens) attention probabilities of a diffusers `Attention` layer, averaged over heads (the steps of
    its processor up to the softmax)."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
    probs = attn.get_attention_scores(query, key, None)  # (B * heads, cells, tokens)
    return probs.reshape(-1, attn.heads, *probs.shape[1:]).mean(1)


class _Recorder:
    """An attention processor that records the cross-attention probabilities, then runs the layer's own processor."""

    def __init__(self, inner, store: CrossAttentionStore, name: str):
        self.inner, self.store, self.name = inner, store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            self.store.add(self.name, _cross_attention_probs(attn, hidden_states, encoder_hidden_states, temb))
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                          temb=temb, **kwargs)


@contextmanager
def capture_cross_attention(unet) -> Iterator[CrossAttentionStore]:
    """Record the cross-attention maps of every UNet call inside the block; the UNet's processors come back after."""
    original = dict(unet.attn_processors)
    store = CrossAttentionStore()
    unet.set_attn_processor({name: _Recorder(p, store, name) for name, p in original.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


def changed_token_positions(tokenizer, source: str, target: str) -> list[int]:
    """Positions, in the target prompt's token ids, of the target words that differ from the source (difflib over
    whitespace-split words); [] when no word differs. Word k's tokens are found by tokenizing the target's first k
    and k + 1 words (special tokens included as the text encoder sees them)."""
    s, t = source.split(), target.split()
    changed = [j for op, _, _, j1, j2 in difflib.SequenceMatcher(a=s, b=t, autojunk=False).get_opcodes()
               if op in ("replace", "insert") for j in range(j1, j2)]
    spans = word_token_spans(tokenizer, target)
    return [p for j in changed for p in spans[j]]


def word_token_spans(tokenizer, text: str) -> list[range]:
    """The token positions of each whitespace-split word of `text`, as the text encoder sees the whole prompt (start
    token at 0; positions past the tokenizer's length dropped)."""
    words = text.split()
    ends = [_content_length(tokenizer, " ".join(words[:k])) for k in range(len(words) + 1)]
    limit = tokenizer.model_max_length
    return [range(ends[k], min(ends[k + 1], max(ends[k], limit))) for k in range(len(words))]


def _content_length(tokenizer, text: str) -> int:
    """Tokens of `text` up to and without the end-of-text token (the start token counted)."""
    ids = tokenizer(text, truncation=False).input_ids
    eos = getattr(tokenizer, "eos_token_id", None)
    return len(ids) - 1 if eos is not None and ids and ids[-1] == eos else len(ids)
