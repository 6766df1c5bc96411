"""Outputs of the default edit on fixed seeds, pinned before the engine refactor (issue 18).

`python tests/pinned.py` rewrites tests/pinned/*.npz from the current code; `test_pinned.py` checks
that the code still produces them. Rewrite only when a change of the edit's pixels is intended, and say
so in the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
PINNED = HERE / "pinned"


def tiny_case() -> dict[str, np.ndarray]:
    """The tiny random model: two images, three targets, every default on (three candidates, per-change maps)."""
    sys.path.insert(0, str(HERE))
    from conftest import scene
    from tiny import tiny_components

    from diffedit import DiffEditor

    editor = DiffEditor.from_components(tiny_components(), progress=False)
    images = [scene(seed=0), scene(seed=1)]
    targets = [["a blue circle", "a red square on a dog"], ["a blue square"]]
    result = editor.edit(images, "a red square", targets, seed=7, num_inference_steps=10)
    one = editor.edit(images[0], "a red square", "a blue square", seed=3, num_inference_steps=10,
                      extra_strengths=(), caption_candidate=False)
    return {
        "images": np.stack([np.asarray(im) for im in result.images]),
        "masks": np.stack([np.asarray(m) for m in result.mask_images]),
        "chosen": np.asarray(result.chosen),
        "one_image": np.asarray(one.image),
        "one_mask": np.asarray(one.mask_image),
    }


def embedded_case() -> dict[str, np.ndarray]:
    """The embedded ShapeWorld model: one colour, one shape and one colour-and-shape edit, default options."""
    from diffedit import DiffEditor
    from diffedit.shapeworld.world import sample_edit

    editor = DiffEditor.from_pretrained(progress=False)
    rng = np.random.default_rng(2026)
    cases = [sample_edit(rng, kind=k) for k in ("color", "shape", "both")]
    out: dict[str, list] = {"images": [], "masks": [], "chosen": []}
    for i, case in enumerate(cases):
        result = editor.edit(case.source_image, case.source, case.target, seed=100 + i)
        out["images"].append(np.asarray(result.image))
        out["masks"].append(np.asarray(result.mask_image))
        out["chosen"].append(result.chosen[0])
    return {k: np.stack(v) if k != "chosen" else np.asarray(v) for k, v in out.items()}


CASES = {"tiny": tiny_case, "embedded": embedded_case}

if __name__ == "__main__":
    torch.set_num_threads(1)
    PINNED.mkdir(exist_ok=True)
    for name, make in CASES.items():
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        arrays = make()
        np.savez_compressed(PINNED / f"{name}.npz", **arrays)
        print(name, {k: v.shape for k, v in arrays.items()})
