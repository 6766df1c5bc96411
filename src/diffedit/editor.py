"""DiffEditor: DiffEdit (Couairon et al., ICLR 2023, arXiv 2210.11427) on diffusers components.

One edit, in the paper's three steps: (1) a mask from the disagreement of two noise estimates,
(2) DDIM inversion of the image latent up to the encoding ratio r, (3) DDIM decoding with the target
prompt in which the background is taken from the inversion at every level. Each step is a stage
(stages/), chosen by name through `EditOptions.method`; the editor composes them and batches: several
images, and several target prompts per image, share one mask pass, one inversion and one decoding loop.
By default it decodes a few candidates (encoding ratios, caption inversion) and keeps, per edit, the one
the model scores as most like the target.

The three steps are also public on their own: `mask()` returns a result that `edit(mask=...)` takes, and
`invert()` one that `edit(inversion=...)` takes, so a mask can be previewed and an inversion reused.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .accel import accelerated
from .callbacks import as_output, step_callback
from .components import Components, Prompt
from .devices import parse_dtype
from .errors import check_finite
from .images import ImageInput
from .loading import embedded_inpaint_path, load_components, load_inpaint_unet
from .results import OUTPUT_TYPES, EditOptions, EditResult, InversionResult, MaskResult, resolve_options
from .schedule import ddim_grid, ddim_scheduler
from .stages import (
    Batch, Candidate, JobMasks, NoiseStreams, PrecomputedMask, UserMask, decoder_for, mask_images, method, plan_candidates,
    mask_of, prepare_batch, resolve_seeds, stack_candidates, stage,
)
from .stages.batch import describe_prompt
from .stages.inpainting import InpaintingDecoder, check_inpainter, inpaint_hole, job_masked_latents
from .stages.inverting import check_walks, guide_record, invert_walks, plan_walks
from .stages.report import empty_mask_warnings, job_changes

__all__ = ["DiffEditor"]

EMBEDDED_INPAINTER = "embedded"  # inpaint_model naming the embedded ShapeWorld inpainter
Seed = int | Sequence[int] | None
Generator = torch.Generator | Sequence[torch.Generator] | None


class DiffEditor:
    """Text-driven semantic image editing. Build with `DiffEditor.from_pretrained(model)`."""

    def __init__(
        self, vae, unet, text_encoder, tokenizer, scheduler, *, name: str = "custom", progress: bool = True,
        inpaint_unet=None, components: Components | None = None,
    ):
        for module in (vae, unet, text_encoder):
            module.eval()
            module.requires_grad_(False)
        if components is None:
            self.components = Components(vae, unet, text_encoder, tokenizer, ddim_scheduler(scheduler), name)
        else:  # a kind of Components (components_sdxl.SDXLComponents) kept whole; the inpainter is set below
            self.components = replace(components, scheduler=ddim_scheduler(scheduler), name=name, inpaint_unet=None,
                                      inpaint_denoiser=None)
        self.components.progress = {"disable": not progress}
        self.acceleration: str | None = None  # the method behind `denoiser`, re-applied after .to()
        self.accelerate("auto")  # bit-identical outputs; a long-lived editor's small CPU edits get traced UNet calls
        if inpaint_unet is not None:
            self.set_inpainter(inpaint_unet)

    # ------------------------------------------------------------------ construction and placement
    @classmethod
    def from_components(cls, components: Components, **kwargs) -> "DiffEditor":
        c = components
        kwargs.setdefault("inpaint_unet", c.inpaint_unet)
        kind = {} if type(c) is Components else {"components": c}  # a subclass (components_sdxl) is kept whole
        editor = cls(c.vae, c.unet, c.text_encoder, c.tokenizer, c.scheduler, name=c.name, **kind, **kwargs)
        if editor.components.inpaint_unet is c.inpaint_unet is not None and c.inpaint_name:
            editor.components.inpaint_name = c.inpaint_name  # where it came from, not only its config's path
        return editor

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        torch_dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        config: str | None = None,
        progress: bool = True,
        dtype: torch.dtype | str | None = None,
        inpaint_model: str | None = "auto",
    ) -> "DiffEditor":
        """Load from a hub id, a diffusers folder, a .safetensors/.ckpt file, or None (the embedded model).

        torch_dtype is applied while loading (fp16 weights are never built in fp32 first); None means fp32 for
        every component. `dtype` is the old name of `torch_dtype`. inpaint_model: an inpainting model of the same
        family (folder, single file, hub id) whose UNet decodes one more candidate; "auto" (default): the embedded
        inpainter with the embedded model, none otherwise; None or "none": none.
        """
        if dtype is not None:
            if torch_dtype is not None:
                raise ValueError("give torch_dtype or its old name dtype, not both")
            warnings.warn("DiffEditor.from_pretrained(dtype=...) is now torch_dtype=...", FutureWarning, stacklevel=2)
            torch_dtype = dtype
        torch_dtype = parse_dtype(torch_dtype) or torch.float32
        editor = cls.from_components(load_components(model, dtype=torch_dtype, config=config), progress=progress)
        if inpaint_model in ("none", "same"):  # "same" (the CLIs'): the model itself decodes a noise candidate
            inpaint_model = None
        if inpaint_model == "auto":
            inpaint_model = EMBEDDED_INPAINTER if model is None and embedded_inpaint_path().is_dir() else None
        if inpaint_model is not None:
            unet = load_inpaint_unet(None if inpaint_model == EMBEDDED_INPAINTER else inpaint_model, dtype=torch_dtype,
                                     config=config if model is not None and Path(str(inpaint_model)).is_file() else None)
            editor.set_inpainter(unet, name=str(inpaint_model))
        return editor.to(device, torch_dtype)

    def set_inpainter(self, unet, name: str | None = None) -> "DiffEditor":
        """Decode one more candidate with this 9-channel inpainting UNet (`EditOptions.inpaint_candidate`), or none
        with None. It must fit the model: the latent channels of its VAE and the width of its text embeddings. `name`
        (sidecars' "inpainter"): where it came from; default the UNet's own name_or_path."""
        self.components.inpaint_name = None if unet is None else name or unet.config.get("_name_or_path") or "custom"
        if unet is not None:
            check_inpainter(unet, self.components.unet)
            unet.eval().requires_grad_(False).to(self.components.device, self.components.dtype)
        self.components.inpaint_unet = unet
        self.components.inpaint_denoiser = accelerated(self.components.inpaint_unet, self.acceleration)  # as the kind holds it
        return self

    def to(self, *args, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> "DiffEditor":
        """Move to a device and/or dtype, as `to("cuda")`, `to(torch.float16)`, `to("cuda", "fp16")` or by keyword."""
        for arg in args:
            if isinstance(arg, torch.dtype) or (isinstance(arg, str) and _is_dtype_name(arg)):
                dtype = arg
            else:
                device = arg
        self.components.to(device, parse_dtype(dtype))
        return self.accelerate(self.acceleration)  # traces hold the old device/dtype: take them again

    def accelerate(self, method: str | None = "trace") -> "DiffEditor":
        """Route UNet calls through a faster equivalent: "auto" (the default: small CPU inputs traced once a shape
        repeats, accel.auto_traced), "trace" (TorchScript per shape at once), "compile" (torch.compile; CUDA graphs
        on CUDA; minutes to compile), or None for the plain UNet."""
        if method not in (None, "auto", "trace", "compile"):
            raise ValueError(f"accelerate method must be 'auto', 'trace', 'compile' or None, got {method!r}")
        self.components.denoiser = accelerated(self.components.unet, method)
        self.components.inpaint_denoiser = accelerated(self.components.inpaint_unet, method)
        self.acceleration = method
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm keyword arguments for every phase's bar, as diffusers' pipelines take them (disable=True: none)."""
        self.components.progress = {**self.components.progress, **kwargs}

    vae = property(lambda self: self.components.vae)
    unet = property(lambda self: self.components.unet)
    text_encoder = property(lambda self: self.components.text_encoder)
    tokenizer = property(lambda self: self.components.tokenizer)
    scheduler = property(lambda self: self.components.scheduler)
    denoiser = property(lambda self: self.components.denoiser)
    inpainter = property(lambda self: self.components.inpaint_unet is not None)  # an inpainting UNet is loaded
    name = property(lambda self: self.components.name)
    device = property(lambda self: self.components.device)
    dtype = property(lambda self: self.components.dtype)
    vae_scale_factor = property(lambda self: self.components.vae_scale_factor)

    # ------------------------------------------------------------------ the three steps on their own
    @torch.no_grad()
    def mask(
        self,
        image: ImageInput | Sequence[ImageInput],
        source: Prompt | Sequence[Prompt],
        target: Prompt | Sequence[Prompt] | Sequence[Sequence[Prompt]],
        *,
        seed: Seed = None,
        generator: Generator = None,
        options: EditOptions | None = None,
        **overrides,
    ) -> MaskResult:
        """DiffEdit step 1 alone: the mask of each (image, target) job; `edit(..., mask=result)` edits with it."""
        options = resolve_options(options, overrides)
        batch = self._batch(image, source, target, options)
        base, seeds = resolve_seeds(seed, generator, len(batch.images))
        latents = self.components.encode_images(batch.pixels)
        check_finite(latents, "the VAE encoding")
        masks = stage("mask", mask_of(options))()(self.components, batch, latents, options, NoiseStreams(seeds))
        check_finite(masks.soft, "the mask pass")
        binary, soft = mask_images(masks.soft, masks.pixel, tuple(batch.pixels.shape[-2:]), batch.size)
        return MaskResult(masks.soft, masks.latent, masks.pixel, binary, soft, base, list(seeds), masks.changes,
                          empty_mask_warnings(batch, masks, options))

    @torch.no_grad()
    def invert(
        self,
        image: ImageInput | Sequence[ImageInput],
        source: Prompt | Sequence[Prompt] = "",
        *,
        seed: Seed = None,
        generator: Generator = None,
        options: EditOptions | None = None,
        **overrides,
    ) -> InversionResult:
        """DiffEdit step 2 alone: every inversion an edit with these options needs (the unconditional walk up to
        the highest candidate ratio; with a source prompt and the caption candidate, the caption walk too; the
        source walk and its per-step state for the other inversions). seed / generator: the "ddpm" inversion's noise.
        `edit(image, source, target, inversion=result)` then skips the VAE encoding and the inversion."""
        options = resolve_options(options, overrides)
        batch = self._batch(image, source, None, options, check_targets=False)
        noise = NoiseStreams(resolve_seeds(seed, generator, len(batch.images))[1])
        latents = self.components.encode_images(batch.pixels)
        check_finite(latents, "the VAE encoding")
        return self._invert(batch, latents, options, plan_candidates(options, batch.sources, self.inpainter), noise, {})

    # ------------------------------------------------------------------ the edit
    @torch.no_grad()
    def edit(
        self,
        image: ImageInput | Sequence[ImageInput],
        source: Prompt | Sequence[Prompt],
        target: Prompt | Sequence[Prompt] | Sequence[Sequence[Prompt]],
        *,
        mask: MaskResult | ImageInput | Sequence[ImageInput] | None = None,
        inversion: InversionResult | str | None = None,
        seed: Seed = None,
        generator: Generator = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[["DiffEditor", int, int, dict], dict | None] | None = None,
        options: EditOptions | None = None,
        **overrides,
    ) -> EditResult:
        """Edit `image` from what `source` describes to what `target` describes, inside an automatic mask.

        image: one image (path, PIL, array) or a list of same-size images. source / target: text or prompt
        embeddings (L, D); target is one prompt, several for one image (sharing its mask pass and inversion),
        or one prompt / list per image. mask: a `MaskResult` from `mask()`, or user masks (white = edit).
        inversion: an `InversionResult` from `invert()` of the same images, or the name of an inversion to run
        (`EditOptions.inversion`: "ddim", "caption", "negative-prompt", "null-text", "direct", "ddpm").
        seed: an int (image b uses seed + b) or one per image; generator: one, or one per image (the seeds drawn
        from them are recorded).
        callback_on_step_end(editor, step, timestep, {"latents", "candidate"}) may return {"latents": ...}.
        Options: an EditOptions or preset="fast" | "default" | "quality", and/or EditOptions fields as keywords
        (num_inference_steps=..., strength=...).
        """
        timings: dict[str, float] = {}
        parts = self.components
        # 1. Check inputs, read the images, form the jobs, and resolve the seeds of every noise stream
        named = {} if inversion is None or isinstance(inversion, InversionResult) else {"inversion": inversion}
        options, inversion = resolve_options(options, {**overrides, **named}), None if named else inversion
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        batch = self._batch(image, source, target, options)
        base, seeds = resolve_seeds(seed, generator, len(batch.images))
        noise, stages = NoiseStreams(seeds), method(options.method)
        candidates = plan_candidates(options, batch.sources, self.inpainter)

        # 2. Encode the images with the VAE (or take the clean level of a given inversion)
        if inversion is None:
            with parts.timed(timings, "vae_encode"):
                latents = parts.encode_images(batch.pixels)  # (B, C, h, w)
            check_finite(latents, "the VAE encoding")
        else:
            latents = check_walks(inversion, batch, _fingerprint(batch.pixels), options, candidates)

        # 3. Mask (DiffEdit step 1): computed, previewed by mask(), or the user's
        source_stage = (
            PrecomputedMask(mask) if isinstance(mask, MaskResult)
            else UserMask(mask) if mask is not None else stage("mask", mask_of(options))()
        )
        with parts.timed(timings, "mask"):
            masks = source_stage(parts, batch, latents, options, noise)
        check_finite(masks.soft, "the mask pass")

        # 4. Inversion up to the encoding ratio (step 2), one per image whatever the number of targets
        inversion = inversion or self._invert(batch, latents, options, candidates, noise, timings)

        # 5. Decode every candidate with the target prompts (step 3), all jobs in one batch, then finish each
        #    (edit snap, trim, composite)
        outputs, finals = self._decode(batch, inversion, masks, candidates, options, noise, timings, callback_on_step_end)

        # 6. Keep, per job, the candidate the model scores as most like the target
        with parts.timed(timings, "rerank"):
            chosen, scores = stage("selector", stages.selector)()(
                parts, batch, [u8 for u8, _ in outputs], masks.latent, options, noise
            )
        if not scores:
            del timings["rerank"]
        check_finite(torch.tensor(scores, dtype=torch.float64), "the candidates' scoring")
        jobs, pick = torch.arange(len(chosen)), torch.tensor(chosen)
        images_u8 = torch.stack([u8 for u8, _ in outputs])[pick, jobs]  # (J, 3, H, W)
        pixel_mask = torch.stack([m for _, m in outputs])[pick, jobs]  # (J, H, W)

        # 7. Outputs in the asked type, with everything that reproduces them
        binary, soft = mask_images(masks.soft, pixel_mask, tuple(batch.pixels.shape[-2:]), batch.size)
        edited, warnings = job_changes(batch, masks, images_u8, pixel_mask, options)
        return EditResult(
            images=as_output(images_u8, torch.stack(finals)[pick, jobs], output_type),
            mask_images=binary, soft_images=soft, mask=masks.latent.cpu(), soft=masks.soft.float().cpu(),
            sources=[describe_prompt(p) for p in batch.job_sources], targets=[describe_prompt(p) for p in batch.job_target],
            job_image=batch.job_image, seed=base, seeds=list(seeds), options=options, model=self.name,
            timings=timings, candidates=[c.label for c in candidates], chosen=chosen, candidate_scores=scores,
            mask_changes=masks.changes, output_type=output_type, edited=edited, warnings=warnings,
            inpainter=self.components.inpaint_name if any(c.inpaint for c in candidates) else None,
        )

    __call__ = edit

    # ------------------------------------------------------------------ helpers of the steps
    def _batch(self, image, source, target, options: EditOptions, check_targets: bool = True) -> Batch:
        if not check_targets:  # invert() has no targets: a stand-in job per image keeps one code path
            target = "\0 invert"
        return prepare_batch(image, source, target, vae_scale_factor=self.vae_scale_factor, max_pixels=options.max_pixels)

    def _invert(
        self, batch: Batch, latents: torch.Tensor, options: EditOptions, candidates: list[Candidate], noise: NoiseStreams,
        timings: dict,
    ) -> InversionResult:
        """Every walk the candidates read (stages/inverting.py plan_walks), as one batch, with its per-step state."""
        plan = plan_walks(options, batch.sources, candidates)
        with self.components.timed(timings, "inversion"):
            walks, steps = invert_walks(self.components, latents, plan, options, batch.sources, noise)
        described = {kind: [describe_prompt(p) for p in kind_prompts] for kind, (_, kind_prompts) in plan.items()}
        top_grid = ddim_grid(self.scheduler, options.num_inference_steps, next(iter(plan.values()))[0])
        return InversionResult(walks, described, options.num_inference_steps, top_grid.timesteps, _fingerprint(batch.pixels),
                               inversion=options.inversion, steps=steps, decoding=guide_record(options))

    def _decode(
        self, batch: Batch, inversion: InversionResult, masks: JobMasks, candidates: list[Candidate], options: EditOptions,
        noise: NoiseStreams, timings: dict, callback_on_step_end,
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
        """Decode and finish every candidate: per candidate (uint8 images (J, 3, H, W), pixel masks (J, H, W)), and
        the decoded latents (J, C, h, w) of each. The inversion's per-step state belongs to the model's own UNet: the
        inpainting candidate decodes the levels alone."""
        parts, stages = self.components, method(options.method)
        finisher = stage("finisher", stages.finisher)()
        h, w = batch.size
        with parts.timed(timings, "decoding"):
            negative = [options.negative_prompt if options.negative_prompt is not None else s for s in batch.job_sources]
            cond = parts.encode_prompts(batch.job_target)
            uncond = parts.encode_prompts(negative) if options.guidance_scale != 1.0 else None
        # Every candidate's jobs of one decoder in one batch: row c * J + j decodes job j of candidate c from its own
        # level (the inpainting candidate has its own UNet, hence its own batch)
        jobs, by_candidate = len(batch.job_image), {}
        for group in ([c for c in candidates if not c.inpaint], [c for c in candidates if c.inpaint]):
            if not group:
                continue
            grid = ddim_grid(self.scheduler, options.num_inference_steps, max(c.strength for c in group))
            levels, starts, state = stack_candidates(inversion.walks, group, batch.job_image, masks.latent, noise, grid,
                                                     options.num_inference_steps, None if group[0].inpaint else inversion.steps)
            k = len(group)
            hole = masks.latent if not group[0].inpaint else inpaint_hole(masks, options)
            c_k, u_k, m_k = (None if t is None else t.repeat(k, *[1] * (t.dim() - 1)) for t in (cond, uncond, hole))
            callback = step_callback(self, callback_on_step_end, group, starts[::jobs], jobs, grid)
            with parts.timed(timings, "decoding"):
                if group[0].inpaint:
                    masked = job_masked_latents(parts, batch, masks, hole, options)
                    decoder = InpaintingDecoder(parts.inpaint_denoiser, masked.repeat(k, 1, 1, 1))
                else:
                    decoder = decoder_for(stages.decoder, batch, options)
                edited = decoder(parts, levels, m_k, c_k, u_k, grid, guidance_scale=options.guidance_scale,
                                 job_image=None, starts=starts, callback=callback, **({"steps": state} if state else {}))
            by_candidate.update({c: edited[i * jobs : (i + 1) * jobs] for i, c in enumerate(group)})
        outputs, finals = [], []
        for c in candidates:
            latents = by_candidate[c]
            check_finite(latents, f"the decoding of candidate {c.label}")
            with parts.timed(timings, "vae_decode"):
                decoded = parts.decode_latents(latents)[:, :, :h, :w]  # (J, 3, H, W)
            check_finite(decoded, f"the VAE decoding of candidate {c.label}")
            outputs.append(finisher(parts, batch, decoded, masks, options))
            finals.append(latents)
        return outputs, finals


def _is_dtype_name(text: str) -> bool:
    try:
        return parse_dtype(text) is not None
    except ValueError:
        return False


def _fingerprint(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
