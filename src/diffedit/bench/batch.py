"""Batch benchmarks on ShapeWorld jobs: throughput (`diffedit batch` against one `diffedit edit` process per job,
side by side, from a cold start each) and resume (a `diffedit batch` process killed with SIGKILL at a random
moment, then run again: every job ends written once, and no partial file is ever visible).

Both run the real command line in subprocesses, on a manifest of ShapeEdit cases (`write_shapeworld_manifest`):
case i's image, prompts and seed `seed + i`; with targets_per_image > 1, further edits of the same scene.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffedit.results import EditOptions

STEPS = EditOptions.num_inference_steps  # the edit's default steps

__all__ = ["write_shapeworld_manifest", "run_throughput", "run_resume", "resume_ok", "format_throughput", "format_resume"]


def write_shapeworld_manifest(folder: Path, jobs: int, seed: int = 0, targets_per_image: int = 1) -> Path:
    """Write ceil(jobs / targets_per_image) ShapeEdit scenes as PNGs and a manifest.jsonl of `jobs` edits of them
    (ids case0000, or case0000_1, case0000_2 ... for several targets); returns the manifest's path."""
    from diffedit.shapeworld.world import edit_cases, sample_edit

    folder.mkdir(parents=True, exist_ok=True)
    images = -(-jobs // targets_per_image)
    rows, left = [], jobs
    for i, case in enumerate(edit_cases(images, seed)):
        name = f"case{i:04d}"
        Image.fromarray(case.source_image).save(folder / f"{name}.png")
        targets, rng = [case.target], np.random.default_rng([seed, i, 1])
        while len(targets) < min(targets_per_image, left):
            other = sample_edit(rng, scene=case.scene).target
            targets += [other] if other not in targets else []
        left -= len(targets)
        rows.append({"image": f"{name}.png", "source": case.source, "target": targets if len(targets) > 1 else targets[0],
                     "seed": seed + i, "id": name})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffedit.cli", *args]


def _common(model: str | None, steps: int, one_candidate: bool, threads: int | None) -> list[str]:
    out = ["--steps", str(steps), "--quiet"]
    out += ["--model", model] if model else []
    out += ["--one-candidate"] if one_candidate else []
    out += ["--threads", str(threads)] if threads else []
    return out


def _run(command: list[str], ok: tuple[int, ...] = (0,)) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(command[2:5])} ... exited {done.returncode}: {done.stderr.strip()[-500:]}")


def _compare(single: Path, batch: Path, ids: list[str]) -> dict[str, Any]:
    """How the two runs' outputs agree: files equal byte for byte, and the largest pixel difference."""
    same, worst = 0, 0
    for name in ids:
        a, b = single / f"{name}.png", batch / f"{name}.png"
        same += a.read_bytes() == b.read_bytes()
        diff = np.abs(np.asarray(Image.open(a), dtype=np.int16) - np.asarray(Image.open(b), dtype=np.int16))
        worst = max(worst, int(diff.max()))
    return {"identical_files": same, "max_pixel_difference": worst}


def run_throughput(
    workdir: Path, *, jobs: int = 8, seed: int = 0, model: str | None = None, steps: int = STEPS, batch_size: int = 8,
    one_candidate: bool = False, threads: int | None = None, targets_per_image: int = 1,
) -> dict[str, Any]:
    """Edits per second of one `diffedit edit` process per job and of one `diffedit batch` run, on the same jobs,
    each timed from process start to exit (model loading included)."""
    manifest = write_shapeworld_manifest(workdir / "inputs", jobs, seed, targets_per_image)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    common = _common(model, steps, one_candidate, threads)
    single, ids = workdir / "single", []
    start = time.perf_counter()
    for row in rows:  # one process per job, as a script calling `diffedit edit` would
        targets = row["target"] if isinstance(row["target"], list) else [row["target"]]
        for i, target in enumerate(targets):
            ids.append(row["id"] if len(targets) == 1 else f"{row['id']}_{i + 1}")
            _run(_cli("edit", str(manifest.parent / row["image"]), "--source", row["source"], "--target", target,
                      "--seed", str(row["seed"]), "--output", str(single / f"{ids[-1]}.png"), *common), ok=(0, 3))
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    _run(_cli("batch", str(manifest), "--output-dir", str(workdir / "batch"), "--batch-size", str(batch_size), *common))
    batch_s = time.perf_counter() - start
    return {"jobs": len(ids), "steps": steps, "batch_size": batch_size, "one_candidate": one_candidate,
            "model": model or "embedded", "threads": threads,
            "single_seconds": round(single_s, 2), "batch_seconds": round(batch_s, 2),
            "single_edits_per_second": round(len(ids) / single_s, 4), "batch_edits_per_second": round(len(ids) / batch_s, 4),
            "speedup": round(single_s / batch_s, 2), **_compare(single, workdir / "batch", ids)}


def format_throughput(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['jobs']} ShapeWorld jobs, {r['steps']} steps{', one candidate' if r['one_candidate'] else ''}, model {r['model']}, "
        f"threads {r['threads'] or 'default'}",
        f"  diffedit edit, one process per job : {r['single_seconds']:8.1f} s  {r['single_edits_per_second']:.3f} edits/s",
        f"  diffedit batch, --batch-size {r['batch_size']:<5} : {r['batch_seconds']:8.1f} s  "
        f"{r['batch_edits_per_second']:.3f} edits/s",
        f"  batch / single: {r['speedup']:.2f}x; outputs identical byte for byte: {r['identical_files']}/{r['jobs']}, "
        f"largest pixel difference {r['max_pixel_difference']}",
    ])


class Watcher(threading.Thread):
    """Polls a folder: every visible output must be whole when seen (PNG decodes, JSON parses), and a job's files
    must not change once its sidecar is there (written twice)."""

    def __init__(self, folder: Path, interval: float = 0.01):
        super().__init__(daemon=True)
        self.folder, self.interval, self.stop = folder, interval, threading.Event()
        self.seen: dict[str, tuple[int, int, int]] = {}
        self.partial: list[str] = []
        self.rewritten: list[str] = []
        self.checks = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            time.sleep(self.interval)
        self.poll()

    def poll(self) -> None:
        for path in sorted(self.folder.glob("[!.]*.*")):
            if path.suffix not in (".png", ".json"):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            ident, old = (st.st_ino, st.st_mtime_ns, st.st_size), self.seen.get(path.name)
            if old == ident:
                continue
            committed = path.with_suffix(".json").name in self.seen
            if old is not None and (path.suffix == ".json" or committed):
                self.rewritten.append(path.name)
            self.seen[path.name] = ident
            self.checks += 1
            try:
                if path.suffix == ".png":
                    Image.open(path).load()
                else:
                    json.loads(path.read_text())
            except FileNotFoundError:
                continue
            except Exception as e:  # noqa: BLE001 - anything unreadable is a partial file
                self.partial.append(f"{path.name}: {e}")


def _sidecars(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("[!.]*.json") if p.name != "results.jsonl"}


def _kill_when(process: subprocess.Popen, output: Path, after: int, delay: float) -> int:
    """SIGKILL `process` `delay` seconds after `after` jobs are written; returns the jobs written by then (-1: it
    ended first)."""
    while len(_sidecars(output)) < after:
        if process.poll() is not None:
            return -1
        time.sleep(0.01)
    time.sleep(delay)
    if process.poll() is not None:
        return -1
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(_sidecars(output))


def _results(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]


def run_resume(
    workdir: Path, *, jobs: int = 200, seed: int = 0, kill_seed: int | None = None, model: str | None = None,
    steps: int = STEPS, batch_size: int = 8, one_candidate: bool = False, threads: int | None = None, targets_per_image: int = 2,
    manifest: Path | None = None,
) -> dict[str, Any]:
    """Run `diffedit batch` on `jobs` ShapeWorld jobs, SIGKILL it after a random number of written jobs (and a random
    fraction of a second), run it again to the end, and check: every job has its image and sidecar, none was
    written twice, the second run's results.jsonl has one line per job (done or skipped), no partial file was ever
    visible, no temporary is left. Long because it is one story told in order: run, kill, look, resume, check."""
    rng = random.Random(kill_seed)
    manifest = manifest or write_shapeworld_manifest(workdir / "inputs", jobs, seed, targets_per_image)
    output = workdir / "output"
    command = _cli("batch", str(manifest), "--output-dir", str(output), "--batch-size", str(batch_size),
                   *_common(model, steps, one_candidate, threads))
    output.mkdir(parents=True, exist_ok=True)
    watcher = Watcher(output)
    watcher.start()
    after, delay = rng.randint(1, max(1, jobs - 1)), rng.uniform(0.0, 0.5)
    start = time.perf_counter()
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    written = _kill_when(first, output, after, delay)
    first_s = time.perf_counter() - start
    committed = {name: watcher.seen.get(f"{name}.png") for name in _sidecars(output)}
    left_temporaries = len(list(output.glob(".*.part")))
    start = time.perf_counter()
    second = subprocess.run(command, capture_output=True, text=True)
    second_s = time.perf_counter() - start
    watcher.stop.set()
    watcher.join()
    results = _results(output)
    by_status = {s: sorted(r["id"] for r in results if r["status"] == s) for s in ("done", "skipped", "failed")}
    ids = sorted(by_status["done"] + by_status["skipped"])
    images = {p.stem for p in output.glob("[!.]*.png")}
    return {
        "jobs": jobs, "steps": steps, "batch_size": batch_size, "model": model or "embedded",
        "killed_after_jobs": written, "kill_planned_after": after, "kill_delay_s": round(delay, 3),
        "first_run_seconds": round(first_s, 2), "second_run_seconds": round(second_s, 2),
        "second_exit_code": second.returncode, "temporaries_left_by_kill": left_temporaries,
        "results_lines": len(results), "done": len(by_status["done"]), "skipped": len(by_status["skipped"]),
        "failed": len(by_status["failed"]), "distinct_jobs": len(set(ids)), "sidecars": len(_sidecars(output)),
        "images": len(images), "temporaries_left": len(list(output.glob(".*.part"))),
        "redone_after_commit": sorted(set(by_status["done"]) & set(committed)),
        "skipped_not_committed": sorted(set(by_status["skipped"]) - set(committed)),
        "rewritten": watcher.rewritten, "partial": watcher.partial, "files_checked": watcher.checks,
        "changed_after_commit": sorted(n for n, ident in committed.items() if watcher.seen.get(f"{n}.png") != ident),
    }


def resume_ok(r: dict[str, Any]) -> bool:
    """Whether a resume run met every promise: all jobs once, nothing twice, nothing partial, nothing left over."""
    return (r["results_lines"] == r["jobs"] == r["distinct_jobs"] == r["done"] + r["skipped"] == r["sidecars"] == r["images"]
            and r["failed"] == 0 and r["temporaries_left"] == 0 and r["second_exit_code"] == 0
            and not (r["redone_after_commit"] or r["skipped_not_committed"] or r["rewritten"] or r["partial"]
                     or r["changed_after_commit"]))


def format_resume(r: dict[str, Any]) -> str:
    killed = (f"killed (SIGKILL) after {r['killed_after_jobs']} jobs written, {r['first_run_seconds']:.1f} s in; "
              f"{r['temporaries_left_by_kill']} temporaries left by the kill" if r["killed_after_jobs"] >= 0
              else f"the first run ended before the kill ({r['first_run_seconds']:.1f} s)")
    return "\n".join([
        f"{r['jobs']} ShapeWorld jobs, {r['steps']} steps, --batch-size {r['batch_size']}, model {r['model']}",
        f"  first run: {killed}",
        f"  second run: {r['second_run_seconds']:.1f} s, exit {r['second_exit_code']}; results.jsonl {r['results_lines']} lines: "
        f"{r['done']} done, {r['skipped']} skipped, {r['failed']} failed ({r['distinct_jobs']} distinct jobs)",
        f"  files: {r['images']} images, {r['sidecars']} sidecars, {r['temporaries_left']} temporaries left",
        f"  written twice: {len(r['redone_after_commit']) + len(r['rewritten']) + len(r['changed_after_commit'])}; "
        f"partial files seen: {len(r['partial'])} (of {r['files_checked']} files checked as they appeared)",
        f"  {'OK' if resume_ok(r) else 'FAILED'}",
    ])
