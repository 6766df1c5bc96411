"""The Ray engine: the planned groups as a Ray Dataset, `map_batches` over an actor pool of BatchEditor (the
class the local engine runs), so each worker loads the model once; the driver streams the result rows back.

Ray is imported here only (`pip install 'diffedit[cluster]'`). With no address, the run joins the cluster Ray finds
on this machine, or starts a local instance (and stops it after); with one ("auto", "ray://head:10001"), it joins
that cluster, whose workers must import this package and read the inputs and write the output folder at the same
paths (a shared file system).
A worker that dies has its groups retried on another; a retried group writes only the jobs not yet written.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

from .runner import BatchEditor

__all__ = ["local_instance", "no_room", "run_ray", "WORKER_RESTARTS"]

WORKER_RESTARTS = 8  # a worker that dies more often (killed for memory, crashing on its jobs) ends the run: no endless loop


def run_ray(
    groups: list[dict[str, Any]],
    editor_kwargs: dict[str, Any],
    *,
    address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    restarts: int = WORKER_RESTARTS,
) -> Iterator[dict[str, Any]]:
    """Result rows of every group, in the order they finish, from `workers` actors (one model each), each restarted
    at most `restarts` times after dying."""
    try:
        import ray
    except ImportError:
        raise ValueError("the Ray engine needs ray, which the core install leaves out: pip install 'diffedit[cluster]'") from None
    started = not ray.is_initialized()
    if started:
        _init(ray, address, workers, cpus_per_worker)
    try:
        refusal = no_room(ray.nodes(), gpus_per_worker, cpus_per_worker)
        if refusal:  # Ray Data would wait forever for a node that fits, saying nothing
            raise ValueError(refusal)
        import logging

        import ray.data

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": ours count

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the batch's own bar counts jobs
        context.execution_options.preserve_order = False
        if gpus_per_worker and editor_kwargs.get("device") in (None, "auto"):
            editor_kwargs = {**editor_kwargs, "device": "cuda"}
        items = [{"group": json.dumps(g)} for g in groups]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            BatchEditor, fn_constructor_kwargs=editor_kwargs, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=gpus_per_worker or None, num_cpus=cpus_per_worker,
            max_restarts=restarts,  # a dead worker is restarted and its task retried; Ray Data's default has no bound
        )
        try:
            for row in dataset.iter_rows():
                yield json.loads(row["result"])
        except Exception as e:  # noqa: BLE001 - Ray wraps a worker's error; say it in one line
            if type(e).__name__ != "ActorDiedError":
                raise
            if "creation task" in str(e):
                raise ValueError(f"a Ray worker could not start: {_last_error(str(e))}") from None
            raise ValueError(f"a Ray worker died more than {restarts} times (killed for memory, or crashing on the same "
                             "jobs) and the run stopped; the jobs written are kept and the same command resumes the "
                             "rest") from None
    finally:
        if started:
            ray.shutdown()


def _init(ray, address: str | None, workers: int, cpus_per_worker: float) -> None:
    """Join the cluster at `address`; with none, the one Ray finds on this machine (RAY_ADDRESS, or one `ray start`
    left running), else a new local instance (`local_instance`)."""
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if address:
        ray.init(address=address, **common)
        return
    try:
        ray.init(**common, **local_instance(workers, cpus_per_worker))
    except ValueError as e:  # Ray found a running cluster, which takes no instance settings: join it as it is
        if "connecting to an existing cluster" not in str(e):
            raise
        ray.init(**common)


def local_instance(workers: int, cpus_per_worker: float) -> dict[str, Any]:
    """ray.init's arguments for the local instance a run without an address starts: a CPU per worker even on a
    smaller machine (else the pool would wait), and workers at the command's own priority. Ray starts workers at
    nice 15, so on a machine busy with other work they got almost no CPU and the batch seemed to hang (an edit
    that takes a second took minutes); the local engine never had that."""
    return {"num_cpus": max(os.cpu_count() or 1, math.ceil(workers * cpus_per_worker)),
            "_system_config": {"worker_niceness": 0}}


def no_room(nodes: list[dict[str, Any]], gpus_per_worker: float, cpus_per_worker: float) -> str | None:
    """Why no live node of the cluster (`ray.nodes()`) can hold one worker, or None when one can."""
    need = {"GPU": gpus_per_worker, "CPU": cpus_per_worker}
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if any(all(r.get(k, 0.0) >= v for k, v in need.items() if v) for r in alive):
        return None
    most = {k: max((r.get(k, 0.0) for r in alive), default=0.0) for k in need}
    return (f"no node of the Ray cluster can hold a worker ({gpus_per_worker:g} GPU, {cpus_per_worker:g} CPU); the largest "
            f"has {most['GPU']:g} GPU and {most['CPU']:g} CPU: lower --gpus-per-worker, or add a node that has them")


def _last_error(text: str) -> str:
    """The innermost "SomeError: message" of a traceback Ray put in an error's text."""
    found = re.findall(r"\b([A-Z]\w*(?:Error|Exception)): (.+?)(?=\s+File \"|$)", text)
    return f"{found[-1][0]}: {found[-1][1].strip()}" if found else text.splitlines()[0]
