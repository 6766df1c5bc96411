"""ShapeEdit rows of the flow model (issue 25): the embedded ShapeWorld rectified-flow model (or any flow model)
under its two decoders, with and without our mask.

* `flowedit`: FlowEdit (the velocity-difference ODE, no inversion) inside the velocity-difference mask, then the
  pixel composite;
* `flowedit_no_mask`: plain FlowEdit as its paper runs it: the whole image may change (no mask, no composite);
* `flow_inverted`: Euler inversion of the source flow, target decoding with the background of the same level,
  then the composite (DiffEdit's decoding on a flow model).

Case i is edited with seed `seed + i`, `batch_size` cases per call, as the other rows. The decoding settings are
FLOW_OPTIONS (chosen on the tuning seed 1000: docs/flow.md), the mask options the DiffEdit defaults'.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLOW_METHODS", "FLOW_OPTIONS", "flow_edit", "load_flow_bench_editor"]

FLOW_METHODS = ("flowedit", "flowedit_no_mask", "flow_inverted")

FLOW_OPTIONS = {  # EditOptions fields of the flow rows, tuned on seed 1000 (24 cases; docs/flow.md)
    "flowedit": {"strength": 0.66, "guidance_scale": 5.0, "num_inference_steps": 25},  # strength: the paper's
    "flowedit_no_mask": {"strength": 0.66, "guidance_scale": 5.0, "num_inference_steps": 25},
    "flow_inverted": {"strength": 0.8, "guidance_scale": 10.0, "num_inference_steps": 25},
}
SOURCE_GUIDANCE = 3.5  # FlowEdit's source-velocity guidance (the paper's for SD3; 1.0-2.5 did worse here)


def load_flow_bench_editor(model=None, *, device: str = "cpu", dtype: str = "fp32"):
    """A FlowEditor on `model` (default: the embedded ShapeWorld flow model), progress bars off."""
    from diffedit.flow.editor import FlowEditor
    from diffedit.loading import embedded_flow_path

    return FlowEditor.from_pretrained(model if model is not None else embedded_flow_path(), device=device,
                                      torch_dtype=dtype, progress=False, source_guidance=SOURCE_GUIDANCE)


def flow_edit(method: str, editor, cases, *, seed: int, options, batch_size: int, bar) -> list:
    """(edited uint8 (H, W, 3), predicted bool mask or None) per case, as quality._edit_method returns them."""
    settings = dict(FLOW_OPTIONS[method])
    decoder = "inverted" if method == "flow_inverted" else "flowedit"
    out: list = []
    for start in range(0, len(cases), batch_size):
        batch = cases[start:start + batch_size]
        images = [c.source_image for c in batch]
        sources, targets = [c.source for c in batch], [c.target for c in batch]
        if method == "flowedit_no_mask":
            whole = [np.full(c.mask.shape, 255, np.uint8) for c in batch]
            result = editor.edit(images, sources, targets, mask=whole, seed=seed + start, decoder=decoder,
                                 options=options.replace(**settings, composite=False))
            out += [(np.asarray(im), None) for im in result.images]
        else:
            result = editor.edit(images, sources, targets, seed=seed + start, decoder=decoder,
                                 options=options.replace(**settings))
            out += [(np.asarray(im), np.asarray(m) > 127) for im, m in zip(result.images, result.mask_images)]
        bar.update(len(batch))
    return out
