"""A batch's plan: which jobs are done already, and the groups the others run in.

Jobs of one image, source, seed and options form an entry (they share one mask pass and one inversion); entries
with the same options are packed, in manifest order, into groups of about `batch_size` jobs, one model call per
image size. The groups are planned from every valid job of the manifest, done or not, so a group always holds the
same jobs and its outputs are the same bytes whichever engine runs it and whether the run was interrupted: a
group with some jobs done runs whole and writes only the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import BadRow, Job

__all__ = ["Plan", "plan_batch", "job_state", "output_paths"]


@dataclass
class Plan:
    """What a run does: `groups` to send to an engine (JSON-ready dicts), and what is settled before it starts."""

    jobs: list[Job]  # every valid job, manifest order
    groups: list[dict[str, Any]] = field(default_factory=list)  # groups with at least one job to do
    done: list[Job] = field(default_factory=list)  # finished by an earlier run: reported as skipped
    duplicates: list[tuple[Job, int]] = field(default_factory=list)  # (job, row it repeats): skipped
    bad: list[BadRow] = field(default_factory=list)  # rows that cannot run: failed

    @property
    def todo(self) -> int:
        return sum(1 for g in self.groups for e in g["entries"] for j in e["jobs"] if not j["done"])


def output_paths(output_dir: Path, job_id: str) -> tuple[Path, Path]:
    """(edited image, JSON sidecar) of a job."""
    return output_dir / f"{job_id}.png", output_dir / f"{job_id}.json"


def job_state(output_dir: Path, job_id: str, key: str) -> str:
    """"done" when the job's sidecar records this key and its image is there; "todo" when the sidecar is missing
    (an image without one was never finished: it is written again); "other" when the sidecar is another edit's."""
    image, sidecar = output_paths(output_dir, job_id)
    try:
        with open(sidecar, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return "todo"
    except (OSError, ValueError):
        return "other"
    recorded = record.get("batch", {}).get("key") if isinstance(record, dict) else None
    if recorded != key:
        return "other"
    return "done" if image.is_file() else "todo"


def _entries(jobs: list[Job]) -> list[tuple[str, list[Job]]]:
    """Jobs grouped by (image, source, seed, options), first appearance first: [(options key, jobs)]."""
    entries: dict[tuple, list[Job]] = {}
    for job in jobs:
        options = json.dumps(job.options.to_dict(), sort_keys=True)
        entries.setdefault((job.path, job.source, job.seed, options), []).append(job)
    return [(k[3], v) for k, v in entries.items()]


def _group(index: int, entries: list[list[Job]], done: set[str]) -> dict[str, Any]:
    first = entries[0][0]
    return {
        "index": index,
        "options": first.options.to_dict(),
        "entries": [
            {"image": jobs[0].image, "path": jobs[0].path, "source": jobs[0].source, "seed": jobs[0].seed,
             "jobs": [{"row": j.row, "id": j.id, "key": j.key, "target": j.target, "done": j.id in done} for j in jobs]}
            for jobs in entries
        ],
    }


def plan_batch(jobs: list[Job], bad: list[BadRow], output_dir: Path, batch_size: int) -> Plan:
    """Skip repeated and finished jobs, refuse ids that clash with another edit, and pack the rest into groups."""
    plan, seen, valid = Plan(jobs=[], bad=list(bad)), {}, []
    for job in jobs:
        if job.id in seen:
            other = seen[job.id]
            if other.key == job.key:
                plan.duplicates.append((job, other.row))
            else:
                plan.bad.append(BadRow(job.row, f"id {job.id!r} is also row {other.row}'s, another edit: give another id",
                                       job.image))
            continue
        seen[job.id] = job
        state = job_state(output_dir, job.id, job.key)
        if state == "other":
            plan.bad.append(BadRow(job.row, f"{output_paths(output_dir, job.id)[1]} holds another edit (other prompts, "
                                   "seed, options or model): move it away or give this row another id", job.image))
            continue
        valid.append(job)
        if state == "done":
            plan.done.append(job)
    plan.jobs = valid
    done = {j.id for j in plan.done}
    by_options: dict[str, list[list[Job]]] = {}  # options -> entries of the group being filled
    groups: list[list[list[Job]]] = []
    for options, entry in _entries(valid):
        current = by_options.get(options)
        if current is None or sum(len(e) for e in current) + len(entry) > batch_size:
            current = by_options[options] = []
            groups.append(current)
        current.append(entry)
    for i, entries in enumerate(groups):
        group = _group(i, entries, done)
        if any(not j["done"] for e in group["entries"] for j in e["jobs"]):
            plan.groups.append(group)
    return plan


def result_row(output_dir: Path, status: str, *, row: int, image: str, job_id: str = "", source: str = "", target: str = "",
               seed: int | None = None, reason: str = "") -> dict[str, Any]:
    """One line of results.jsonl: status is "done", "skipped" or "failed" (with the reason)."""
    out = {"row": row, "id": job_id, "status": status, "image": image, "source": source, "target": target, "seed": seed}
    if job_id:
        image_path, sidecar = output_paths(output_dir, job_id)
        out.update(output=str(image_path), sidecar=str(sidecar))
    if reason:
        out["reason"] = reason
    return out
