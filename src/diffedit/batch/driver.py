"""`run_batch`: a manifest's jobs planned, run on an engine (local or Ray), and reported in results.jsonl.

The run holds a lock on the output folder (two runs never write the same files), removes temporaries that a
killed run left, skips what is done, and writes results.jsonl as it goes: first a line per job settled before
any model loads (skipped: done already or a repeated row; failed: a bad row, with the reason), then one per job
as it finishes. A run that is stopped loses nothing finished; the same command again resumes it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..results import EditOptions
from .manifest import read_jobs
from .plan import Plan, plan_batch, result_row

__all__ = ["run_batch", "ENGINES", "RESULTS", "Tally"]

ENGINES = ("local", "ray")
RESULTS = "results.jsonl"  # the run's report, in the output folder
LOCK = ".diffedit-batch.lock"


@dataclass
class Tally:
    """Counts of a run's jobs by status, and the seconds since it started."""

    total: int
    counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "skipped": 0, "failed": 0})
    start: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        """Edits written per second since the run started (model loading included)."""
        return self.counts["done"] / max(self.seconds, 1e-9)

    def summary(self) -> dict[str, Any]:
        return {"jobs": self.total, **self.counts, "seconds": round(self.seconds, 3), "edits_per_second": round(self.rate(), 4)}


class ResultsLog:
    """results.jsonl (one whole line per write, so a reader never sees half a line) and the progress bar."""

    def __init__(self, path: Path, total: int, progress: bool):
        from tqdm.auto import tqdm

        self.tally = Tally(total)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666)
        self.bar = tqdm(total=total, unit="job", desc="batch", disable=not progress, dynamic_ncols=True)

    def add(self, row: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(row) + "\n").encode())
        self.tally.counts[row["status"]] += 1
        c = self.tally.counts
        self.bar.set_postfix_str(f"done {c['done']}, skipped {c['skipped']}, failed {c['failed']}, "
                                 f"{self.tally.rate():.2f} edits/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        os.close(self.fd)


@contextmanager
def _locked(output_dir: Path):
    """Hold the output folder's lock for the run (a ValueError when another run holds it)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(output_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another batch is writing to {output_dir}: wait for it, or give another --output-dir") from None
        yield
    finally:
        os.close(fd)


def _remove_temporaries(output_dir: Path) -> int:
    """Delete the hidden temporaries (.<name>.<random>.part, files.write_files) that a killed run left behind."""
    removed = 0
    for p in output_dir.iterdir():
        if p.name.startswith(".") and p.name.endswith(".part") and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def _settled(plan: Plan, output_dir: Path) -> Iterator[dict[str, Any]]:
    """Result rows of the jobs decided before the run: done already, repeated rows, bad rows."""
    for job in plan.done:
        yield result_row(output_dir, "skipped", row=job.row, image=job.image, job_id=job.id, source=job.source,
                         target=job.target, seed=job.seed, reason="done already")
    for job, first in plan.duplicates:
        yield result_row(output_dir, "skipped", row=job.row, image=job.image, job_id=job.id, source=job.source,
                         target=job.target, seed=job.seed, reason=f"the same job as row {first}")
    for bad in sorted(plan.bad, key=lambda b: b.row):
        yield result_row(output_dir, "failed", row=bad.row, image=bad.image, reason=bad.reason)


def _engine_rows(engine: str, groups: list[dict], editor_kwargs: dict, cluster: dict) -> Iterator[dict[str, Any]]:
    if engine == "local":
        from .local import run_local

        return run_local(groups, editor_kwargs)
    from .ray_engine import run_ray

    return run_ray(groups, editor_kwargs, **cluster)


def run_batch(
    manifest: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    source: str | None = None,
    targets: list[str] | None = None,
    options: EditOptions | None = None,
    seed: int = 0,
    batch_size: int = 8,
    engine: str = "local",
    model: str | None = None,
    inpaint_model: str | None = "auto",
    flow_decoder: str | None = None,
    editor_kwargs: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every job of `manifest` (a .jsonl / .csv, or a folder of images with `source` and `targets`) into
    `output_dir`; returns the counts ({"jobs", "done", "skipped", "failed", "seconds", "edits_per_second"}).

    options: the run's EditOptions (rows may change them); seed: of rows without one; batch_size: jobs per model
    call. engine: "local" (this process) or "ray" (cluster: address, workers, gpus_per_worker). editor_kwargs:
    BatchEditor's (device, dtype, config, threads). inpaint_model: as `diffedit edit --inpaint-model` takes it (a job
    done with another inpainter is not done); flow_decoder: a flow model's decoder (None: FlowEditor's default; part of
    the jobs' keys when given). ValueError for a manifest that cannot be read at all."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    manifest, output_dir = Path(manifest), Path(output_dir)
    if manifest.is_dir() and output_dir.resolve() == manifest.resolve():
        raise ValueError(f"--output-dir {output_dir} is the folder of input images: its edits would be read as inputs next time")
    decides = model if inpaint_model == "auto" else f"{model or 'embedded'} | inpaint {inpaint_model}"  # jobs' keys
    decides = decides if flow_decoder is None else f"{decides} | flow {flow_decoder}"
    jobs, bad = read_jobs(manifest, options=options, seed=seed, model=decides, source=source, targets=targets)
    if not jobs and not bad:
        raise ValueError(f"{manifest} holds no job")
    output_dir.mkdir(parents=True, exist_ok=True)
    with _locked(output_dir):
        _remove_temporaries(output_dir)
        plan = plan_batch(jobs, bad, output_dir, batch_size)
        total = len(plan.jobs) + len(plan.duplicates) + len(plan.bad)
        log = ResultsLog(output_dir / RESULTS, total, progress)
        try:
            for row in _settled(plan, output_dir):
                log.add(row)
            if plan.groups:
                kwargs = {**(editor_kwargs or {}), "model": model, "inpaint_model": inpaint_model,
                          "flow_decoder": flow_decoder, "output_dir": str(output_dir)}
                for row in _engine_rows(engine, plan.groups, kwargs, cluster or {}):
                    log.add(row)
        finally:
            log.close()
    return log.tally.summary()
