"""`BatchEditor`: the stateful class both engines run. It loads the model once, then takes groups of jobs
(plan.py) and returns one result row per job it ran; the local engine calls it in a loop, Ray Data's
`map_batches` in an actor per worker.

A group's entries are edited one model call per image size: the jobs of an entry (one image, one source) share
its mask pass and inversion, and every image carries its own seed, so a job's noise does not depend on its
neighbours. Each job's image and JSON sidecar are written as a set (files.write_files: temporaries, then renames,
the sidecar last), so a job is finished exactly when its sidecar is there, and a crash leaves no partial file.
A job that fails (unreadable image, an error in its call, a full disk) is a failed row; the others go on.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

from ..files import write_files
from ..images import load_image
from ..results import EditOptions, EditResult
from .plan import job_state, output_paths, result_row

__all__ = ["BatchEditor"]


def _strict(value: Any) -> Any:
    """Strict JSON has no inf/NaN: such floats are written as strings (as `diffedit edit` writes them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:1000]


def job_sidecar(result: EditResult, k: int, entry: dict, job: dict, image_path: Path) -> dict[str, Any]:
    """The sidecar of job k of a call, in `diffedit edit`'s format for one image and one target, plus "batch"."""
    full = result.to_dict()
    prefix = f"edit {k + 1} ("
    return {
        "input": entry["image"], "outputs": [str(image_path)], "model": full["model"], "inpainter": full["inpainter"],
        "seed": entry["seed"],
        "seeds": [entry["seed"]], "jobs": [{**full["jobs"][k], "image": 0}], "options": full["options"],
        "mask_fraction": [full["mask_fraction"][k]], "candidates": full["candidates"],
        "chosen": full["chosen"][k:k + 1], "candidate_scores": full["candidate_scores"][k:k + 1],
        "timings_s": full["timings_s"], "edited": full["edited"][k:k + 1],
        "warnings": [w for w in full["warnings"] if w.startswith(prefix)],
        "batch": {"id": job["id"], "key": job["key"], "row": job["row"], "jobs_in_call": len(result.targets),
                  "images_in_call": len(result.seeds)},
        **{key: full[key] for key in ("decoder", "family") if key in full},  # a flow model's (FlowEditResult)
    }


class BatchEditor:
    """Loads the model once; `run_group(group)` edits a planned group and writes its jobs' outputs, and
    `__call__(batch)` does it for Ray Data's batches ({"group": [JSON texts]} -> {"result": [JSON texts]})."""

    def __init__(
        self,
        output_dir: str,
        *,
        model: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        config: str | None = None,
        threads: int | None = None,
        inpaint_model: str | None = "auto",
        flow_decoder: str | None = None,
        crash_after: int | None = None,
        crash_marker: str | None = None,
    ):
        """output_dir: where outputs go. model/config/device/dtype/inpaint_model/flow_decoder as `diffedit edit` takes
        them (flow_decoder: a flow model's only; None: FlowEditor's default); threads:
        torch's CPU threads. crash_after / crash_marker (tests): SIGKILL this process once it has written that many
        jobs (0: as a group starts): the first time in a run when crash_marker names a file (which records it), every
        time without one."""
        import torch

        from .. import devices
        from ..editor import DiffEditor
        from ..flow.editor import FlowEditor
        from ..flow.loading import flow_family

        _quiet_libraries()
        if threads is not None:
            torch.set_num_threads(threads)
        device = devices.resolve_device(device)
        dtype = devices.auto_dtype(device) if dtype in (None, "auto") else dtype
        if flow_family(model) is not None:  # an SD3, FLUX or shapeworld-flow folder: FlowEdit (docs/flow.md)
            if inpaint_model not in (None, "auto", "none"):
                raise ValueError("a flow model (SD3, FLUX, shapeworld-flow) takes no --inpaint-model")
            decoder = {} if flow_decoder is None else {"decoder": flow_decoder}
            self.editor = FlowEditor.from_pretrained(model, device=device, torch_dtype=dtype, progress=False, **decoder)
        elif flow_decoder is not None:
            raise ValueError("flow_decoder applies to flow models only (SD3, FLUX, shapeworld-flow)")
        else:
            self.editor = DiffEditor.from_pretrained(model, device=device, torch_dtype=dtype, config=config,
                                                     progress=False, inpaint_model=inpaint_model)
        self.output_dir = Path(output_dir)
        self.crash_after, self.crash_marker, self.written = crash_after, crash_marker, 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = [row for text in batch["group"] for row in self.run_group(json.loads(str(text)))]
        return {"result": np.array([json.dumps(r) for r in rows], dtype=str)}

    def run_group(self, group: dict[str, Any]) -> list[dict[str, Any]]:
        """Edit a group (plan.py) and write the jobs not done yet; one result row for each of them."""
        options = EditOptions(**group["options"])
        self._maybe_crash()
        rows, by_size = [], {}
        for entry in group["entries"]:
            todo = [j for j in entry["jobs"] if not j["done"]]
            try:
                image = load_image(entry["path"], max_pixels=options.max_pixels)
            except (ValueError, OSError) as e:
                rows += [self._row(entry, j, "failed", f"cannot read the image: {_one_line(e)}") for j in todo]
                continue
            by_size.setdefault(image.size, []).append((entry, image))
        for calls in by_size.values():  # one call per size; a call whose jobs are all done is not run
            if any(not j["done"] for entry, _ in calls for j in entry["jobs"]):
                rows += self._edit(calls, options)
        return rows

    def _edit(self, calls: list[tuple[dict, Any]], options: EditOptions) -> list[dict[str, Any]]:
        entries = [entry for entry, _ in calls]
        try:
            result = self.editor.edit(
                [image for _, image in calls], [e["source"] for e in entries],
                [[j["target"] for j in e["jobs"]] for e in entries], seed=[e["seed"] for e in entries], options=options,
            )
        except Exception as e:  # noqa: BLE001 - a failed call fails its jobs, not the run
            return [self._row(entry, j, "failed", f"the edit failed: {type(e).__name__}: {_one_line(e)}")
                    for entry in entries for j in entry["jobs"] if not j["done"]]
        rows, k = [], 0
        for entry in entries:
            for job in entry["jobs"]:
                if not job["done"]:
                    rows.append(self._write(result, k, entry, job))
                k += 1
        return rows

    def _write(self, result: EditResult, k: int, entry: dict, job: dict) -> dict[str, Any]:
        """Write job k's image and sidecar as one set (the sidecar last); a crash before its rename leaves no trace."""
        image_path, sidecar_path = output_paths(self.output_dir, job["id"])
        if job_state(self.output_dir, job["id"], job["key"]) == "done":  # an earlier attempt (a worker that died) wrote it
            return self._row(entry, job, "done", "written by an earlier attempt of this group")
        record = _strict(job_sidecar(result, k, entry, job, image_path))

        def write_json(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2, allow_nan=False)
                f.write("\n")

        try:
            write_files([(image_path, lambda tmp: result.images[k].save(tmp, format="PNG")), (sidecar_path, write_json)])
        except OSError as e:
            return self._row(entry, job, "failed", f"cannot write {image_path}: {e.strerror or e}")
        self.written += 1
        self._maybe_crash()
        warnings = record["warnings"]
        return self._row(entry, job, "done", "; ".join(warnings) if warnings else "")

    def _row(self, entry: dict, job: dict, status: str, reason: str = "") -> dict[str, Any]:
        return result_row(self.output_dir, status, row=job["row"], image=entry["image"], job_id=job["id"],
                          source=entry["source"], target=job["target"], seed=entry["seed"], reason=reason)

    def _maybe_crash(self) -> None:
        if self.crash_after is None or self.written < self.crash_after:
            return
        if self.crash_marker is not None:  # once in a run
            try:
                fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)


def _quiet_libraries() -> None:
    """No loading advice or weight bars from diffusers / transformers in a batch's output."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
