"""`diffedit batch`: many edits from a manifest (or a folder of images), resumable, locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffedit.cli.common import SET_HELP, check_range, check_seed, edit_options, embedded_model, fail, require, resolve_device
from diffedit.cli.common import check_flow_decoder, refuse_flow_inpainter, resolve_dtype
from diffedit.cli.edit import (
    CONFIG_OPTION, DEFAULTS, DEVICE_OPTION, DTYPE_OPTION, FLOW_DECODER_OPTION, INPAINT_OPTION, MODEL_OPTION, QUIET_OPTION,
    THREADS_OPTION,
)

EXIT_SOME_FAILED = 5  # the run finished, but some jobs failed (results.jsonl says why)
CLUSTER = "Ray engine"


def batch(
    manifest: Path = typer.Argument(
        ..., help="A .jsonl or .csv manifest (image, source, target; optional seed, id, options), or a folder of images.",
    ),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where edits, sidecars and results.jsonl go."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="For a folder: what its images show now."),
    target: Optional[list[str]] = typer.Option(None, "--target", "-t", help="For a folder: what they should show; repeatable."),
    seed: int = typer.Option(0, "--seed", help="Seed of rows that give none."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Jobs per model call (images of one size and options)."),
    steps: int = typer.Option(DEFAULTS.num_inference_steps, "--steps", help="DDIM steps over the full noise range."),
    one_candidate: bool = typer.Option(
        False, "--one-candidate", help="The paper's single decoding at the strength: no extra candidates, no scoring.",
    ),
    settings: Optional[list[str]] = typer.Option(None, "--set", metavar="NAME=VALUE", help=SET_HELP),
    model: Optional[str] = MODEL_OPTION,
    config: Optional[str] = CONFIG_OPTION,
    inpaint_model: str = INPAINT_OPTION,
    flow_decoder: Optional[str] = FLOW_DECODER_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data).", rich_help_panel=CLUSTER),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join (auto, ray://head:10001); default: one running here, else a new local one.",
        rich_help_panel=CLUSTER,
    ),
    workers: int = typer.Option(1, "--workers", help="Ray workers, each with its own model.", rich_help_panel=CLUSTER),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="GPUs per Ray worker (1: one worker per GPU).",
                                          rich_help_panel=CLUSTER),
) -> None:
    """Edit every job of MANIFEST into --output-dir: <id>.png and <id>.json per job, and results.jsonl.

    Finished jobs are skipped, so running the same command again resumes a stopped run. A bad row is reported
    in results.jsonl (failed, with the reason) and the others run. Exit codes: 0 every job done or skipped; 2 the
    manifest or the options cannot be used (nothing run); 5 the run finished but some jobs failed; 130 interrupted.
    """
    from diffedit.batch import run_batch

    flags = dict(num_inference_steps=steps)
    if one_candidate:
        flags.update(extra_strengths=(), noise_candidates=(), caption_candidate=False, inpaint_candidate=False)
    elif inpaint_model == "same":  # the plain model as an inpainter: decoded from fresh noise inside the mask
        flags.update(noise_candidates=(1.0,))
    options = edit_options(flags, settings)
    check_seed(seed)
    check_range(batch_size, "--batch-size", 1, 4096)
    check_range(workers, "--workers", 1, 10_000)
    check_range(gpus_per_worker, "--gpus-per-worker", 0, 64)
    check_range(threads, "--threads", 1, 256)
    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, got {engine!r}")
    if engine == "ray":
        require("ray.data", "cluster", "--engine ray")
    elif address is not None or workers != 1 or gpus_per_worker:
        fail("--address, --workers and --gpus-per-worker are for --engine ray")
    else:  # the device is the workers' own on a cluster
        device = resolve_device(device)
        resolve_dtype(dtype, device)
    model = embedded_model(model)  # shapeworld, shapeworld-flow: the embedded models
    refuse_flow_inpainter(model, inpaint_model)
    check_flow_decoder(model, flow_decoder)
    editor_kwargs = {"device": device, "dtype": dtype, "config": config, "threads": threads}
    cluster = {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker}
    try:
        summary = run_batch(manifest, output_dir, source=source, targets=target, options=options, seed=seed,
                            batch_size=batch_size, engine=engine, model=model, inpaint_model=inpaint_model,
                            flow_decoder=flow_decoder, editor_kwargs=editor_kwargs, cluster=cluster, progress=not quiet)
    except KeyboardInterrupt:
        fail("interrupted: finished jobs are kept; run the same command again to resume", 130)
    typer.echo(f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed of {summary['jobs']} "
               f"jobs in {summary['seconds']:.1f} s ({summary['edits_per_second']:.3f} edits/s); "
               f"results in {output_dir / 'results.jsonl'}")
    if summary["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)
