"""Speed: our edit against diffusers' StableDiffusionDiffEditPipeline, same model, steps, strength and noises.

Both run in one process on the same modules: a warm-up edit each (excluded), then `repeats` timed edits
each, interleaved so that a busy machine slows both alike; the figures are medians. Our phases come
from `EditResult.timings`; diffusers' are its three calls (generate_mask, invert, __call__), each of
which runs the VAE it needs. By design ours runs fewer network rows per edit: the mask pass without
guidance (2n UNet rows, diffusers 4n), the inversion unconditional (batch 1, diffusers 2), and the VAE
encoder once (diffusers n + 1 times); the counts are measured and reported as `rows`.
"""

from __future__ import annotations

import ctypes
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffedit.bench.baselines import diffusers_edit, diffusers_pipeline
from diffedit.bench.models import load_bench_editor
from diffedit.devices import resolve_device
from diffedit.images import save_json
from diffedit.results import EditOptions
from diffedit.timing import timed

__all__ = ["run_speed", "format_speed"]

# ShapeWorld captions; tokenizers too short for them (the tiny test model's 16 tokens) get the short forms
PROMPTS = ("a red circle on a gray background", "a blue square on a gray background")
SHORT_PROMPTS = ("a red circle", "a blue square")
OUR_PHASES = ("vae_encode", "mask", "inversion", "decoding", "vae_decode")
DIFFUSERS_PHASES = ("generate_mask", "invert", "call")


# ------------------------------------------------------------------ memory
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _PeakMemory:
    """Peak memory of a block in GiB: CUDA max_memory_allocated, or on Linux CPUs the growth of the
    resident set's high-water mark (VmHWM, reset through /proc/self/clear_refs, after malloc_trim)
    over the resident set at the start; None where unknown."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = 0
        else:
            _malloc_trim()  # hand freed heap back to the OS, so the baseline is what is really in use
            try:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current VmRSS
                self.base = _status_kib("VmRSS")
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**30
        elif self.base is not None:
            hwm = _status_kib("VmHWM")
            self.peak = None if hwm is None else max(0, hwm - self.base) / 2**20
        return False


# ------------------------------------------------------------------ row counting
class _RowCounter:
    """Counts the rows (batch entries) that go through the UNet, the VAE encoder and the VAE decoder,
    and the UNet's forward calls."""

    def __init__(self, editor):
        self.rows = {"unet": 0, "unet_calls": 0, "vae_encoder": 0, "vae_decoder": 0}
        self.modules = {"unet": editor.unet, "vae_encoder": editor.vae.encoder, "vae_decoder": editor.vae.decoder}
        self.handles = []

    def __enter__(self):
        for name, module in self.modules.items():
            def hook(mod, args, kwargs, name=name):
                x = args[0] if args else next(iter(kwargs.values()))
                self.rows[name] += int(x.shape[0])
                if name == "unet":
                    self.rows["unet_calls"] += 1
            self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


# ------------------------------------------------------------------ the benchmark
def _images(size: int, batch: int) -> list[Image.Image]:
    """Random RGB images (content does not change the time of a forward pass)."""
    return [
        Image.fromarray((np.random.RandomState(i).rand(size, size, 3) * 255).astype(np.uint8)) for i in range(batch)
    ]


def _prompts(tokenizer) -> tuple[str, str]:
    fits = all(len(tokenizer(p, verbose=False).input_ids) <= tokenizer.model_max_length for p in PROMPTS)
    return PROMPTS if fits else SHORT_PROMPTS


def _median_phases(runs: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, float]:
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in (*names, "other", "total")}


def run_speed(
    model: str | None = "shapeworld",
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    size: int = 512,
    steps: int = EditOptions.num_inference_steps,  # the edit's defaults (dataclass fields' defaults)
    strength: float = EditOptions.strength,
    mask_noises: int = EditOptions.mask_noises,
    batch: int = 1,
    repeats: int = 3,
    compile: bool = False,
    accel: str | None = None,
    candidates: bool = False,
    json_path: str | Path | None = None,
    verbose: bool = True,
) -> dict:
    """Time our edit and diffusers' DiffEdit pipeline side by side; returns (and prints) the figures.

    model: "tiny", "shapeworld" (the embedded model), "sd15-random" (SD 1.5's architecture with random
    weights) or a model path / hub id. batch > 1: ours edits the B images in one call, diffusers in a loop.
    candidates False times ours with one decoding and the target prompt's map alone (no per-change maps),
    the work diffusers' pipeline does; True with the editor's defaults (extra encoding ratios and the caption
    inversion, scored by the model, and the per-change maps of a several-word change).
    """
    # 1. Check inputs
    if repeats < 1 or batch < 1 or steps < 1:
        raise ValueError("repeats, batch and steps must be >= 1")
    if size % 8 or size < 16:
        raise ValueError(f"size must be a multiple of 8 and >= 16, got {size}")
    dev = torch.device(resolve_device(device))
    if compile and dev.type != "cuda":
        raise ValueError("--compile is CUDA only: on CPU, compiling the UNet takes minutes for a few % per step")
    if compile and accel not in (None, "compile"):
        raise ValueError(f"--compile and --accel {accel} are two fast paths for our UNet; choose one")
    accel = "compile" if compile else accel
    options = EditOptions(num_inference_steps=steps, strength=strength, mask_noises=mask_noises, max_pixels=None)
    if not candidates:  # the work diffusers' pipeline does: one decoding, and the target prompt's map alone
        options = options.replace(extra_strengths=(), noise_candidates=(), caption_candidate=False, mask_per_change=False)

    # 2. Load the model once for both methods; diffusers' pipeline shares the editor's modules
    editor = load_bench_editor(model, device=dev, dtype=dtype)
    notes = []
    if editor.vae.dtype != editor.unet.dtype:  # an upcast fp16 VAE: diffusers' pipeline cannot mix dtypes
        notes.append(f"VAE cast from {editor.vae.dtype} to {editor.unet.dtype} for both methods (diffusers needs one dtype)")
        editor.vae.to(editor.unet.dtype)
    pipe = diffusers_pipeline(editor)  # built before acceleration: diffusers always runs the plain UNet
    if accel is not None:
        editor.accelerate(accel)
        what = "compiled (CUDA graphs on CUDA)" if accel == "compile" else "traced"
        notes.append(f"ours runs the UNet through accelerate({accel!r}), {what} in the warm-up; "
                     "diffusers' pipeline runs the plain UNet, as its defaults do")
    images = _images(size, batch)
    source, target = _prompts(editor.tokenizer)

    ours, theirs = _edit_runners(editor, pipe, images, source, target, options, dev)

    # 3. Warm-up (excluded), counting the network rows of one call of each; 4. timed runs, interleaved
    methods = {"ours": ours, "diffusers": theirs}
    rows, runs, peaks = _measure(methods, editor, dev, repeats, counted=accel is None)

    # 5. Report
    report = {
        "model": model or "shapeworld", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(editor.dtype).replace("torch.", ""), "size": size, "steps": steps, "strength": strength,
        "mask_noises": mask_noises, "batch": batch, "repeats": repeats, "compile": compile, "accel": accel,
        "candidates": candidates, "threads": torch.get_num_threads(), "prompts": [source, target],
        "torch": torch.__version__, "notes": notes,
    }
    for name, phases in (("ours", OUR_PHASES), ("diffusers", DIFFUSERS_PHASES)):
        report[name] = _method_figures(runs[name], peaks[name], rows[name], phases, batch)
    report["ratio"] = round(report["diffusers"]["total_s"] / report["ours"]["total_s"], 4)
    if verbose:
        print(format_speed(report))
    if json_path is not None:
        save_json(report, json_path)
    return report


def _edit_runners(editor, pipe, images: list, source: str, target: str, options: EditOptions, dev: torch.device):
    """Two callables that run one timed edit of `images` each: ours (one call for the batch) and diffusers' pipeline
    (a loop, one image at a time); each returns its phase timings and "total"."""
    batch = len(images)

    def ours() -> dict[str, float]:
        t: dict[str, float] = {}
        with timed(t, "total", dev):
            result = editor.edit(
                images if batch > 1 else images[0], [source] * batch if batch > 1 else source, target,
                seed=0, options=options,
            )
        t.update(result.timings)
        t["other"] = t["total"] - sum(result.timings.values())
        return t

    def theirs() -> dict[str, float]:
        t: dict[str, float] = {}
        with timed(t, "total", dev):
            for i, image in enumerate(images):  # diffusers' pipeline takes one image at a time
                diffusers_edit(pipe, image, source, target, seed=i, num_inference_steps=options.num_inference_steps,
                               strength=options.strength, mask_noises=options.mask_noises, timings=t)
        t["other"] = t["total"] - sum(t[k] for k in DIFFUSERS_PHASES)
        return t

    return ours, theirs


def _measure(methods: dict, editor, dev: torch.device, repeats: int, *, counted: bool) -> tuple[dict, dict, dict]:
    """Warm each method up once (counting its network rows unless a fast path hides the calls from hooks: traced
    calls are not seen, and a compiled UNet would trace the hooks in), then time `repeats` interleaved runs with
    their peak memory. Returns (rows, runs, peaks) by method name."""
    rows: dict[str, dict | None] = {}
    for name, fn in methods.items():
        if not counted and name == "ours":
            fn()
            rows[name] = None
            continue
        with _RowCounter(editor) as counter:
            fn()
        rows[name] = counter.rows
    runs: dict[str, list] = {name: [] for name in methods}
    peaks: dict[str, list] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            with _PeakMemory(dev) as mem:
                runs[name].append(fn())
            peaks[name].append(mem.peak)
    return rows, runs, peaks


def _method_figures(runs: list, peaks: list, rows: dict | None, phases, batch: int) -> dict:
    """One method's figures: median phases and total, every run's total, edits per second, peak memory, rows."""
    med = _median_phases(runs, phases)
    known = [p for p in peaks if p is not None]
    return {
        "phases_s": {k: round(v, 5) for k, v in med.items() if k != "total"},
        "total_s": round(med["total"], 5),
        "runs_s": [round(r["total"], 5) for r in runs],
        "edits_per_s": round(batch / med["total"], 4),
        "peak_memory_gib": round(max(known), 4) if known else None,
        "rows_per_call": rows,
    }


def format_speed(report: dict) -> str:
    """A text table of a run_speed report."""
    r = report
    lines = [
        f"diffedit bench speed: model {r['model']}, {r['device_name']} {r['dtype']}, {r['size']}x{r['size']}, "
        f"{r['steps']} steps, strength {r['strength']}, {r['mask_noises']} mask noises, batch {r['batch']}, "
        f"median of {r['repeats']} (warm-up excluded), {r['threads']} threads, ours with "
        f"{'its defaults (candidates, per-change maps)' if r.get('candidates') else 'one decoding, one map (as diffusers)'}",
    ]
    ours, theirs = r["ours"], r["diffusers"]
    a, b = list(ours["phases_s"].items()), list(theirs["phases_s"].items())
    lines.append(f"  {'ours':<14}{'s':>9}    {'diffusers':<14}{'s':>9}")
    for i in range(max(len(a), len(b))):
        left = f"{a[i][0]:<14}{a[i][1]:9.3f}" if i < len(a) else " " * 23
        right = f"{b[i][0]:<14}{b[i][1]:9.3f}" if i < len(b) else ""
        lines.append(f"  {left}    {right}")
    lines.append(f"  {'total':<14}{ours['total_s']:9.3f}    {'total':<14}{theirs['total_s']:9.3f}")
    lines.append(f"diffusers / ours: {r['ratio']:.2f}x")
    if r["batch"] > 1:
        lines.append(
            f"edits per second: ours {ours['edits_per_s']:.3f} (one call of {r['batch']}), "
            f"diffusers {theirs['edits_per_s']:.3f} (a loop)"
        )
    mem = lambda m: "n/a" if m is None else f"{m:.3f} GiB"  # noqa: E731
    kind = "max allocated" if r["device"].startswith("cuda") else "resident-set growth"
    lines.append(f"peak memory ({kind}): ours {mem(ours['peak_memory_gib'])}, diffusers {mem(theirs['peak_memory_gib'])}")
    ro, rd = ours["rows_per_call"], theirs["rows_per_call"]
    if ro is not None and rd is not None:
        lines.append(
            f"rows per call (ours vs diffusers): UNet {ro['unet']} vs {rd['unet']} "
            f"(in {ro['unet_calls']} vs {rd['unet_calls']} forwards), "
            f"VAE encoder {ro['vae_encoder']} vs {rd['vae_encoder']}, VAE decoder {ro['vae_decoder']} vs {rd['vae_decoder']}"
        )
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
