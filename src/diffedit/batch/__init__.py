"""Batches of edits (`diffedit batch`): a manifest read into jobs (manifest.py), planned into groups that
share model calls (plan.py), run by `BatchEditor` (runner.py) on the local engine (local.py) or on Ray Data
(ray_engine.py), and reported in results.jsonl (driver.py)."""

from .driver import ENGINES, RESULTS, run_batch
from .manifest import BadRow, Job, read_jobs
from .plan import Plan, plan_batch
from .runner import BatchEditor

__all__ = ["run_batch", "ENGINES", "RESULTS", "BatchEditor", "Job", "BadRow", "read_jobs", "Plan", "plan_batch"]
