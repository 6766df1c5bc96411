"""The stages an edit is composed of, one protocol per kind, registered by name (registry.py).

Floors, bottom up: registry, noise, batch -> masking, inverting, decoding -> attention_mask, candidates, finishing, p2p.
Importing this package registers every built-in stage.
"""

from .attention_mask import CombinedMask, CrossAttentionMask
from .batch import Batch, prepare_batch
from .candidates import Candidate, ModelScoreSelector, plan_candidates, stack_candidates
from .decoding import MaskedDDIMDecoder, noised_start
from .finishing import CompositeFinisher, mask_images, snap_to_edit
from .inverting import DDIMInverter
from .masking import JobMasks, NoiseDifferenceMask, PrecomputedMask, UserMask, mask_changes
from .noise import STREAMS, NoiseStreams, resolve_seeds
from .p2p import MaskedPromptToPromptDecoder, PromptToPromptDecoder, WholeMask
from .registry import KINDS, MASK_SOURCES, METHODS, Method, decoder_for, mask_of, method, register, stage

__all__ = [
    "CrossAttentionMask", "CombinedMask", "MASK_SOURCES", "mask_of",
    "Batch", "prepare_batch", "Candidate", "ModelScoreSelector", "plan_candidates", "stack_candidates", "MaskedDDIMDecoder",
    "noised_start",
    "CompositeFinisher", "mask_images", "snap_to_edit", "DDIMInverter", "JobMasks", "NoiseDifferenceMask",
    "PrecomputedMask", "UserMask", "mask_changes", "STREAMS", "NoiseStreams", "resolve_seeds", "KINDS", "METHODS",
    "Method", "method", "register", "stage", "decoder_for", "MaskedPromptToPromptDecoder", "PromptToPromptDecoder", "WholeMask",
]
