"""Prompt-to-Prompt attention control (Hertz et al. 2022, arXiv 2208.01626) through diffusers attention processors.

A batch holds a source branch and a target branch row for row. `control_attention(unet, controller)` installs, for
the duration of a `with` block, processors that compute each layer's attention probabilities softmax(q k^T / sqrt(d))
and let the controller edit the target rows' before they weigh the values; the UNet's own processors come back
afterwards, whatever happens inside. The edits, on the conditional half of a guided batch (as the paper's code):

- cross-attention replacement (sec. 3.2, "word swap"; "prompt refinement"): for the first `cross_replace` of a row's
  steps, target token j takes the map of the source token it is aligned with (`token_alignment`); a target token with
  no source token (an inserted word) keeps its own map;
- re-weighting ("attention re-weighting"): chosen target tokens' maps are scaled by factors, at every step;
- self-attention replacement: for the first `self_replace` of the steps the target takes the source's self-attention,
  which keeps the layout;
- local blend: the chosen words' cross-attention maps, summed over layers and steps, locate the edit
  (`local_blend_mask`); the decoder keeps the source branch's latents outside (stages/p2p.py).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import attention_grid, changed_token_positions, word_token_spans

__all__ = [
    "AttentionController", "AttentionStore", "TokenEdit", "blend_words", "control_attention", "edit_cross_attention",
    "local_blend_mask", "parse_reweight", "token_alignment", "token_edits", "MAX_REWEIGHT",
]

MAX_REWEIGHT = 10.0  # attention probabilities scaled further push a layer's output far outside what it was trained on


def parse_reweight(text: str) -> dict[str, float]:
    """ "word=factor" items, separated by spaces or commas -> {word (lower case): factor}; a ValueError for a bad one."""
    out: dict[str, float] = {}
    for item in text.replace(",", " ").split():
        word, eq, factor = item.partition("=")
        try:
            value = float(factor) if eq and word else math.nan
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= MAX_REWEIGHT:  # NaN fails too
            raise ValueError(f"reweight item {item!r}: write word=factor with a factor in [0, {MAX_REWEIGHT:g}], e.g. 'blue=2'")
        out[word.lower()] = value
    return out


def token_alignment(tokenizer, source: str, target: str, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of the `length` target token positions: the source position whose map it takes, and whether it takes
    one. difflib over the two prompts' token ids: equal runs and replacements (word swap) map in order (a replacement
    of another token count spreads over the source tokens); inserted tokens take none (refinement: they keep their own
    map); the padding after the end token maps to the source's padding in order."""
    s = tokenizer(source, truncation=True).input_ids[:length]
    t = tokenizer(target, truncation=True).input_ids[:length]
    mapping, aligned = torch.arange(length), torch.ones(length, dtype=torch.bool)
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=s, b=t, autojunk=False).get_opcodes():
        if op == "insert":
            aligned[j1:j2] = False
        elif op in ("equal", "replace"):
            mapping[j1:j2] = torch.tensor([i1 + (j - j1) * (i2 - i1) // (j2 - j1) for j in range(j1, j2)])
    tail = torch.arange(len(t), length)
    mapping[len(t):] = (len(s) + tail - len(t)).clamp(max=length - 1)
    return mapping, aligned


@dataclass
class TokenEdit:
    """Per target row, what its cross-attention takes from its source row's."""

    mapping: torch.Tensor  # (R, T) long: the source token whose map target token j takes
    aligned: torch.Tensor  # (R, T) bool: False where target token j has no source token and keeps its own map
    weights: torch.Tensor  # (R, T) float: the factor on target token j's attention (re-weighting); 1: unchanged

    def repeat(self, k: int) -> "TokenEdit":
        """The rows k times over (the editor stacks candidates row-major: row c * R + r is row r)."""
        return TokenEdit(*(t.repeat(k, 1) for t in (self.mapping, self.aligned, self.weights)))

    def to(self, device) -> "TokenEdit":
        return TokenEdit(*(t.to(device) for t in (self.mapping, self.aligned, self.weights)))


def _word_positions(tokenizer, text: str, word: str) -> list[int]:
    spans = word_token_spans(tokenizer, text)
    return [p for w, span in zip(text.split(), spans) if w.lower().strip(".,;:!?") == word for p in span]


def token_edits(
    tokenizer, sources: Sequence[str | torch.Tensor], targets: Sequence[str | torch.Tensor], length: int,
    reweight: dict[str, float],
) -> TokenEdit:
    """The edit of each (source, target) row: `token_alignment` for texts (prompt embeddings: position to position),
    and `reweight`'s factors on the target words' tokens (a word the target lacks is a ValueError)."""
    rows = []
    for source, target in zip(sources, targets):
        texts = isinstance(source, str) and isinstance(target, str)
        mapping, aligned = token_alignment(tokenizer, source, target, length) if texts else (
            torch.arange(length), torch.ones(length, dtype=torch.bool))
        weights = torch.ones(length)
        for word, factor in reweight.items():
            found = _word_positions(tokenizer, target, word) if isinstance(target, str) else []
            if not found:
                raise ValueError(f"reweight: {word!r} is no word of the target prompt {target if texts else '(embeddings)'!r}")
            weights[[p for p in found if p < length]] = factor
        rows.append((mapping, aligned, weights))
    return TokenEdit(*(torch.stack(t) for t in zip(*rows)))


def blend_words(tokenizer, source, target, length: int, reweight: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) bool masks of the source's and the target's tokens whose maps make the local blend: the words the target
    changes (in both prompts) and the re-weighted words (where each prompt has them); none for prompt embeddings."""
    masks = []
    for own, other in ((source, target), (target, source)):
        chosen = torch.zeros(length, dtype=torch.bool)
        if isinstance(own, str) and isinstance(other, str):
            positions = changed_token_positions(tokenizer, other, own)
            positions += [p for word in reweight for p in _word_positions(tokenizer, own, word)]
            chosen[[p for p in positions if p < length]] = True
        masks.append(chosen)
    return masks[0], masks[1]


def edit_cross_attention(
    source: torch.Tensor, target: torch.Tensor, edit: TokenEdit, replace: torch.Tensor
) -> torch.Tensor:
    """The target rows' cross-attention probabilities after P2P's edits. source, target: (n, heads, cells, T); edit:
    the n rows'; replace: (n,) bool, the rows within their cross-replacement steps. Replaced rows take, for each
    aligned token, the source map of its aligned token; every row's tokens are then scaled by their weights."""
    mapped = source.gather(-1, edit.mapping[:, None, None, :].expand_as(source))  # (n, heads, cells, T)
    take = edit.aligned[:, None, None, :] & replace[:, None, None, None]
    return torch.where(take, mapped, target) * edit.weights[:, None, None, :].to(target.dtype)


class AttentionStore:
    """Head-averaged attention probabilities as the controlled rows used them, per step and layer:
    steps[i][layer] -> (2n, cells, keys), source rows then target rows, under the UNet's processor names (`...attn1.processor`:
    self-attention, `...attn2.processor`: cross-attention). Costly at full size: for inspection and tests."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def add(self, name: str, probs: torch.Tensor) -> None:
        if not self.steps:
            self.steps.append({})
        self.steps[-1][name] = probs.detach().float().cpu()


class AttentionController:
    """Prompt-to-Prompt's edits for a batch of R (source, target) row pairs, step by step: the decoder calls
    `at_step` before each UNet call with the rows in it and how far each has come."""

    def __init__(
        self, edit: TokenEdit, *, cross_replace: float, self_replace: float, blend_size: tuple[int, int] | None = None,
        store: AttentionStore | None = None,
    ):
        self.edit, self.cross_replace, self.self_replace, self.store = edit, cross_replace, self_replace, None
        rows, tokens = edit.mapping.shape
        # the local blend's maps: every cross-attention layer's on the latent grid, summed over layers and steps
        self.blend_maps = None if blend_size is None else torch.zeros(2, rows, tokens, *blend_size, device=edit.weights.device)
        self.reweights = bool((edit.weights != 1).any())
        self.at_step(torch.arange(rows), [0] * rows, [1] * rows)  # until the first at_step: every row, one step
        self.store = store

    def at_step(self, rows: torch.Tensor, done: Sequence[int], total: Sequence[int]) -> None:
        """The next UNet call holds these rows (each pair once: source rows then target rows); row i has taken done[i]
        of its total[i] steps. Replacement covers a row's first int(fraction * total) steps."""
        device = self.edit.weights.device
        self.rows = rows.to(device)
        self.cross_on = torch.tensor([d < int(self.cross_replace * t) for d, t in zip(done, total)], device=device)
        self.self_on = torch.tensor([d < int(self.self_replace * t) for d, t in zip(done, total)], device=device)
        self.acting = {True: bool(self.cross_on.any()) or self.reweights or self.blend_maps is not None,
                       False: bool(self.self_on.any())}
        if self.store is not None:
            self.store.steps.append({})

    def acts(self, cross: bool) -> bool:
        """Whether this call's layers of the kind need their probabilities (else they run their own processor)."""
        return self.store is not None or self.acting[cross]

    def edit_probs(self, name: str, cross: bool, probs: torch.Tensor) -> torch.Tensor:
        """(B, heads, cells, keys) probabilities of a call of 2n rows, or 4n guided (the unconditional half first,
        left alone) -> the same with the target rows edited."""
        n = len(self.rows)
        if probs.shape[0] not in (2 * n, 4 * n):
            raise ValueError(f"attention control expected 2 x {n} rows (or 4 x {n} guided), got {probs.shape[0]}")
        source, target = probs[-2 * n : -n], probs[-n:]
        if cross and self.blend_maps is not None:
            size = tuple(self.blend_maps.shape[-2:])
            for i, branch in enumerate((source, target)):
                self.blend_maps[i].index_add_(0, self.rows, attention_grid(branch.mean(1).float(), size))
        if cross:
            edit = TokenEdit(self.edit.mapping[self.rows], self.edit.aligned[self.rows], self.edit.weights[self.rows])
            edited = edit_cross_attention(source, target, edit, self.cross_on)
        else:
            edited = torch.where(self.self_on[:, None, None, None], source, target)
        probs = torch.cat([probs[:-n], edited])
        if self.store is not None:
            self.store.add(name, probs[-2 * n :].mean(1))
        return probs


class _ControlledAttention:
    """diffusers' AttnProcessor with the controller's edit between the softmax and the values; the layers a step leaves
    alone run the layer's own processor."""

    def __init__(self, inner, controller: AttentionController, name: str):
        self.inner, self.controller, self.name = inner, controller, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        cross = encoder_hidden_states is not None
        if not self.controller.acts(cross):
            return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, temb=temb, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = hidden_states.shape
        if hidden_states.ndim == 4:  # (B, C, H, W) -> (B, H * W, C)
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        keys = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, keys.shape[1], keys.shape[0])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)  # (B * heads, cells, keys)
        probs = self.controller.edit_probs(self.name, cross, probs.unflatten(0, (-1, attn.heads))).flatten(0, 1)
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, value))))
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def control_attention(unet, controller: AttentionController) -> Iterator[AttentionController]:
    """Route every attention layer of `unet` through the controller inside the block; its processors come back after.
    It needs the plain UNet: a traced one runs its recorded graph, not the processors."""
    original = dict(unet.attn_processors)
    unet.set_attn_processor({name: _ControlledAttention(p, controller, name) for name, p in original.items()})
    try:
        yield controller
    finally:
        unet.set_attn_processor(original)


def local_blend_mask(
    source_maps: torch.Tensor, target_maps: torch.Tensor, source_words: torch.Tensor, target_words: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """P2P's local blend region (sec. 3.3), (n, 1, h, w) bool: per prompt, its chosen words' maps (n, T, h, w) summed,
    max-pooled over 3 x 3 cells and scaled to a maximum of 1, above `threshold`; the source's region or the target's."""

    def region(maps: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        m = (maps * words[:, :, None, None].to(maps.dtype)).sum(1, keepdim=True)  # (n, 1, h, w)
        m = F.max_pool2d(m, 3, stride=1, padding=1)
        return m / m.amax((-2, -1), keepdim=True).clamp_min(1e-12) > threshold

    return region(source_maps, source_words) | region(target_maps, target_words)
