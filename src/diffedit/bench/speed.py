"""Speed: our presets (the edit a user gets) and our single decoding against diffusers' StableDiffusionDiffEditPipeline.

Every method runs in one process on the same modules: a warm-up edit each (excluded), then `repeats` timed edits
each, interleaved so that a busy machine slows all alike; the figures are medians. diffusers' pipeline and our
`one_decoding` run at its defaults (50 steps, strength 0.8, 10 mask noises), the presets with their own options. Our phases come
from `EditResult.timings`; diffusers' are its three calls (generate_mask, invert, __call__), each of
which runs the VAE it needs. By design `one_decoding` runs fewer network rows than diffusers for the same work: the
mask pass without guidance (2n UNet rows, diffusers 4n), the inversion unconditional (batch 1, diffusers 2), and
the VAE encoder once (diffusers n + 1 times); the counts are measured and reported as `rows`.
"""

from __future__ import annotations

import ctypes
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffedit.bench.baselines import diffusers_edit, diffusers_pipeline
from diffedit.accel import AUTO_AFTER
from diffedit.bench.models import load_bench_editor
from diffedit.devices import resolve_device
from diffedit.images import save_json
from diffedit.results import EditOptions
from diffedit.timing import timed

__all__ = ["run_speed", "format_speed"]

# ShapeWorld captions; tokenizers too short for them (the tiny test model's 16 tokens) get the short forms
PROMPTS = ("a red circle on a gray background", "a blue square on a gray background")
SHORT_PROMPTS = ("a red circle", "a blue square")
OUR_PHASES = ("vae_encode", "mask", "inversion", "decoding", "vae_decode", "rerank")
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


OUR_METHODS = ("fast", "default", "quality", "one_decoding")  # the presets, and the paper's single decoding
METHODS = (*OUR_METHODS, "diffusers")


def _accelerate(editor, accel: str | None, dev: torch.device) -> str:
    """Put our UNet behind `accel` (None: the editor's default); returns the report's note on it."""
    if accel is None:
        if editor.acceleration == "auto" and dev.type == "cpu":
            return ("ours runs its default accelerate('auto'): small CPU inputs traced after the editor's first "
                    f"{AUTO_AFTER} UNet calls, so the warm-up repeats ours until nothing new is traced (a long-lived editor; "
                    "a one-off edit runs the plain UNet: --accel none times that); diffusers runs the plain UNet")
        return "ours runs the plain UNet here (its default 'auto' traces only small CPU inputs)"
    editor.accelerate(None if accel == "none" else accel)
    if accel == "none":
        return "ours runs the plain UNet (accelerate(None)), as a one-off edit does"
    what = "compiled (CUDA graphs on CUDA)" if accel == "compile" else "traced"
    return (f"ours runs the UNet through accelerate({accel!r}), {what} in the warm-up; "
            "diffusers' pipeline runs the plain UNet, as its defaults do")


def _our_options(name: str, steps: int, strength: float, mask_noises: int) -> EditOptions:
    """A preset's options; "one_decoding": the work diffusers' pipeline does (one decoding at `steps` and `strength`,
    the target prompt's map alone from `mask_noises` noises, no candidates)."""
    if name == "one_decoding":
        return EditOptions(num_inference_steps=steps, strength=strength, mask_noises=mask_noises, max_pixels=None,
                           extra_strengths=(), noise_candidates=(), caption_candidate=False, mask_per_change=False)
    return EditOptions.preset(name, max_pixels=None)


def run_speed(
    model: str | None = "shapeworld",
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    size: int = 512,
    steps: int = 50,  # diffusers' pipeline's defaults: 50 steps, strength 0.8, 10 mask noises
    strength: float = 0.8,
    mask_noises: int = 10,
    batch: int = 1,
    repeats: int = 3,
    compile: bool = False,
    accel: str | None = None,
    methods: tuple[str, ...] = ("default", "one_decoding", "diffusers"),
    json_path: str | Path | None = None,
    verbose: bool = True,
) -> dict:
    """Time our presets and diffusers' DiffEdit pipeline side by side; returns (and prints) the figures.

    model: "tiny", "shapeworld" (the embedded model), "sd15-random" (SD 1.5's architecture with random
    weights) or a model path / hub id. batch > 1: ours edits the B images in one call, diffusers in a loop.
    methods: presets ("fast", "default", "quality": candidates, scoring and per-change maps as a user gets them),
    "one_decoding" (the work diffusers' pipeline does, at `steps`, `strength` and `mask_noises`), and "diffusers"
    (its pipeline at `steps`, `strength`, `mask_noises`: by default its own defaults). Ratios: diffusers / method.
    """
    # 1. Check inputs
    if repeats < 1 or batch < 1 or steps < 1:
        raise ValueError("repeats, batch and steps must be >= 1")
    if size % 8 or size < 16:
        raise ValueError(f"size must be a multiple of 8 and >= 16, got {size}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "diffusers" not in methods or len(methods) < 2:
        raise ValueError(f"methods: diffusers and at least one of {', '.join(OUR_METHODS)}; unknown: {unknown}")
    dev = torch.device(resolve_device(device))
    if compile and dev.type != "cuda":
        raise ValueError("--compile is CUDA only: on CPU, compiling the UNet takes minutes for a few % per step")
    if compile and accel not in (None, "compile"):
        raise ValueError(f"--compile and --accel {accel} are two fast paths for our UNet; choose one")
    accel = "compile" if compile else accel

    # 2. Load the model once for every method; diffusers' pipeline shares the editor's modules
    editor = load_bench_editor(model, device=dev, dtype=dtype)
    notes = []
    if editor.vae.dtype != editor.unet.dtype:  # an upcast fp16 VAE: diffusers' pipeline cannot mix dtypes
        notes.append(f"VAE cast from {editor.vae.dtype} to {editor.unet.dtype} for both methods (diffusers needs one dtype)")
        editor.vae.to(editor.unet.dtype)
    pipe = diffusers_pipeline(editor)  # built before acceleration: diffusers always runs the plain UNet
    notes.append(_accelerate(editor, accel, dev))
    images = _images(size, batch)
    source, target = _prompts(editor.tokenizer)
    options = {m: _our_options(m, steps, strength, mask_noises) for m in methods if m != "diffusers"}
    runners = {m: _our_runner(editor, images, source, target, o, dev) for m, o in options.items()}
    runners["diffusers"] = _diffusers_runner(pipe, images, source, target, steps, strength, mask_noises, dev)

    # 3. Warm-up (excluded), counting the network rows of one call of each; 4. timed runs, interleaved
    rows, runs, peaks = _measure(runners, editor, dev, repeats, counted=accel in (None, "none"))

    # 5. Report
    report = {
        "model": model or "shapeworld", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(editor.dtype).replace("torch.", ""), "size": size, "steps": steps, "strength": strength,
        "mask_noises": mask_noises, "batch": batch, "repeats": repeats, "compile": compile, "accel": accel,
        "threads": torch.get_num_threads(), "prompts": [source, target], "torch": torch.__version__, "notes": notes,
        "options": {m: {k: o.to_dict()[k] for k in _SHOWN} for m, o in options.items()}, "methods": {},
    }
    for name in methods:
        phases = DIFFUSERS_PHASES if name == "diffusers" else OUR_PHASES
        report["methods"][name] = _method_figures(runs[name], peaks[name], rows[name], phases, batch)
    theirs = report["methods"]["diffusers"]["total_s"]
    report["ratios"] = {m: round(theirs / f["total_s"], 4) for m, f in report["methods"].items() if m != "diffusers"}
    if verbose:
        print(format_speed(report))
    if json_path is not None:
        save_json(report, json_path)
    return report


# the options that set an edit's cost, shown per method in the report
_SHOWN = ("num_inference_steps", "strength", "extra_strengths", "caption_candidate", "rerank_noises", "rerank_levels",
          "mask_noises", "mask_per_change")


def _our_runner(editor, images: list, source: str, target: str, options: EditOptions, dev: torch.device):
    """A callable that runs one timed edit of `images` (one call for the batch); returns its phases and "total"."""
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

    return ours


def _diffusers_runner(pipe, images: list, source: str, target: str, steps: int, strength: float, mask_noises: int,
                      dev: torch.device):
    """A callable that runs diffusers' pipeline on `images` (a loop, one image at a time)."""

    def theirs() -> dict[str, float]:
        t: dict[str, float] = {}
        with timed(t, "total", dev):
            for i, image in enumerate(images):  # diffusers' pipeline takes one image at a time
                diffusers_edit(pipe, image, source, target, seed=i, num_inference_steps=steps,
                               strength=strength, mask_noises=mask_noises, timings=t)
        t["other"] = t["total"] - sum(t[k] for k in DIFFUSERS_PHASES)
        return t

    return theirs


def _measure(methods: dict, editor, dev: torch.device, repeats: int, *, counted: bool) -> tuple[dict, dict, dict]:
    """Warm each method up once (counting its network rows on the plain UNet: traced calls are not seen by hooks, and
    a compiled UNet would trace the hooks in; skipped under an explicit fast path), warm ours up until the default
    "auto" acceleration has traced every shape it will (a long-lived editor), then time `repeats` interleaved runs with
    their peak memory. Returns (rows, runs, peaks) by method name."""
    rows: dict[str, dict | None] = {}
    for name, fn in methods.items():
        if not counted and name != "diffusers":
            fn()
            rows[name] = None
            continue
        denoiser, editor.components.denoiser = editor.components.denoiser, editor.unet
        try:
            with _RowCounter(editor) as counter:
                fn()
        finally:
            editor.components.denoiser = denoiser
        rows[name] = counter.rows
    # until every traced wrapper (the UNet's, the inpainter's) is past its first `after` calls and a round of every
    # method traces nothing new
    wrappers = [w for w in (editor.denoiser, editor.components.inpaint_denoiser) if hasattr(w, "_traces")]
    for _ in range(16 if wrappers else 0):
        before = sum(len(w._traces) for w in wrappers)
        for name, fn in methods.items():
            if name != "diffusers":
                fn()
        if all(w.calls > w.after for w in wrappers) and sum(len(w._traces) for w in wrappers) == before:
            break
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
    """A text table of a run_speed report: one column per method, then ratios, memory and network rows."""
    r, methods = report, report["methods"]
    lines = [
        f"diffedit bench speed: model {r['model']}, {r['device_name']} {r['dtype']}, {r['size']}x{r['size']}, "
        f"batch {r['batch']}, median of {r['repeats']} (warm-up excluded), {r['threads']} threads; diffusers and "
        f"one_decoding at {r['steps']} steps, strength {r['strength']}, {r['mask_noises']} mask noises",
    ]
    for name, o in r["options"].items():
        if name != "one_decoding":
            cands = 1 + len(o["extra_strengths"]) + int(o["caption_candidate"])
            lines.append(f"  {name}: {o['num_inference_steps']} steps, {cands} candidate(s)"
                         + (f" scored at {len(o['rerank_levels'])} levels x {o['rerank_noises']} noises" if cands > 1 else "")
                         + f", {o['mask_noises']} mask noises")
    names = list(methods)
    phases = list(dict.fromkeys(k for f in methods.values() for k in f["phases_s"]))
    lines.append(f"  {'seconds':<14}" + "".join(f"{n:>14}" for n in names))
    for ph in phases:
        cells = [methods[n]["phases_s"].get(ph) for n in names]
        lines.append(f"  {ph:<14}" + "".join(f"{'':>14}" if c is None else f"{c:14.3f}" for c in cells))
    lines.append(f"  {'total':<14}" + "".join(f"{methods[n]['total_s']:14.3f}" for n in names))
    lines.append(f"  {'diffusers / x':<14}" + "".join(f"{r['ratios'][n]:13.2f}x" if n in r["ratios"] else f"{'':>14}"
                                                     for n in names))
    if r["batch"] > 1:
        lines.append(f"  {'edits / s':<14}" + "".join(f"{methods[n]['edits_per_s']:14.3f}" for n in names))
    kind = "GPU max allocated" if r["device"].startswith("cuda") else "CPU resident-set growth"
    mem = ["n/a" if methods[n]["peak_memory_gib"] is None else f"{methods[n]['peak_memory_gib']:.3f}" for n in names]
    lines.append(f"  {'peak GiB':<14}" + "".join(f"{m:>14}" for m in mem) + f"   ({kind})")
    counted = [n for n in names if methods[n]["rows_per_call"] is not None]
    if counted:
        lines.append("  UNet rows (forwards): " + ", ".join(
            f"{n} {methods[n]['rows_per_call']['unet']} ({methods[n]['rows_per_call']['unet_calls']})" for n in counted))
        lines.append("  VAE encoder / decoder rows: " + ", ".join(
            f"{n} {methods[n]['rows_per_call']['vae_encoder']} / {methods[n]['rows_per_call']['vae_decoder']}" for n in counted))
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
