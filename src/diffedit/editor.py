"""DiffEditor: DiffEdit (Couairon et al., ICLR 2023, arXiv 2210.11427) on diffusers components.

One edit, in the paper's three steps: (1) a mask from the disagreement of two noise estimates,
(2) DDIM inversion of the image latent up to the encoding ratio r, (3) DDIM decoding with the target
prompt in which the background is taken from the inversion at every level. The editor batches: several
images, and several target prompts per image, share one mask pass, one inversion and one decoding loop.
By default it decodes a few candidates (encoding ratios, caption inversion) and keeps, per edit, the one
the model scores as most like the target (rerank.py); `extra_strengths=(), noise_candidates=(), caption_candidate=False` is the
paper's single decoding.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .images import ImageInput, load_image, load_mask, pad_to_multiple, pil_to_tensor
from .inversion import ddim_invert
from .loading import Components, load_components
from .masks import (
    dilate, finish_mask, guided_filter, latent_mask_from_pixels, merge_change_maps, noise_difference_maps, trim_to_background,
    upsample_mask,
)
from .prompts import encode_prompts, single_changes
from .rerank import denoising_errors, rerank_scores
from .results import EditOptions, EditResult, InversionResult, MaskResult
from .sampling import composite, feathered_alpha, masked_denoise
from .schedule import ddim_grid, ddim_scheduler

__all__ = ["DiffEditor"]


@dataclass
class _Batch:
    """Inputs of one call, normalised: images, one source per image, jobs = (image, target) pairs."""

    images: list[Image.Image]
    pixels: torch.Tensor  # (B, 3, Hp, Wp) in [-1, 1], padded to the VAE grid
    size: tuple[int, int]  # (H, W) before padding
    sources: list[str]  # (B,)
    job_image: list[int]  # (J,)
    job_target: list[str]  # (J,)


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class DiffEditor:
    """Text-driven semantic image editing. Build with `DiffEditor.from_pretrained(model)`."""

    def __init__(self, vae, unet, text_encoder, tokenizer, scheduler, *, name: str = "custom", progress: bool = True):
        for module in (vae, unet, text_encoder):
            module.eval()
            module.requires_grad_(False)
        self.vae, self.unet, self.text_encoder, self.tokenizer = vae, unet, text_encoder, tokenizer
        self.scheduler = ddim_scheduler(scheduler)
        self.name = name
        self.progress = progress  # tqdm bars per phase; False silences them
        self.denoiser = unet  # what every UNet call goes through: the UNet itself, or an accelerated wrapper
        self.acceleration: str | None = None  # the method behind `denoiser`, re-applied after .to()

    def accelerate(self, method: str | None = "trace") -> "DiffEditor":
        """Route UNet calls through a faster equivalent: "trace" (TorchScript per shape, see accel.py),
        "compile" (torch.compile, one graph per input shape; on CUDA with CUDA graphs, mode
        "reduce-overhead", as the UNet forward at batch 1 is launch-bound; minutes to compile), or None
        for the plain UNet."""
        self.acceleration = method
        if method is None:
            self.denoiser = self.unet
        elif method == "trace":
            from .accel import TracedUNet

            self.denoiser = TracedUNet(self.unet)
        elif method == "compile":
            from .accel import CompiledUNet

            self.denoiser = CompiledUNet(self.unet)
        else:
            raise ValueError(f"accelerate method must be 'trace', 'compile' or None, got {method!r}")
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_components(cls, components: Components, **kwargs) -> "DiffEditor":
        c = components
        return cls(c.vae, c.unet, c.text_encoder, c.tokenizer, c.scheduler, name=c.name, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        config: str | None = None,
        progress: bool = True,
    ) -> "DiffEditor":
        """Load from a hub id, a diffusers folder, a .safetensors/.ckpt file, or None (the embedded model).

        dtype None means fp32 for every component (transformers would otherwise keep a text encoder in the
        dtype it was saved in, e.g. fp16, beside an fp32 UNet).
        """
        editor = cls.from_components(load_components(model, config=config), progress=progress)
        return editor.to(device, dtype if dtype is not None else torch.float32)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> "DiffEditor":
        """Move to a device and/or dtype; an fp16 VAE that asks for upcasting (SD VAEs overflow) stays fp32."""
        if isinstance(dtype, str):
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype) or getattr(
                torch, dtype, None
            )
            if not isinstance(dtype, torch.dtype):
                raise ValueError("dtype must be one of fp32, fp16, bf16 (or a torch.dtype)")

        def move(module, to_dtype):  # no-op casts skipped: diffusers warns on every .to(dtype)
            module.to(device=device, **({"dtype": to_dtype} if to_dtype not in (None, module.dtype) else {}))

        move(self.unet, dtype)
        move(self.text_encoder, dtype)
        vae_dtype = dtype
        if dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            vae_dtype = torch.float32
        move(self.vae, vae_dtype)
        return self.accelerate(self.acceleration)  # traces hold the old device/dtype: take them again

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ building blocks
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, h, w) scaled latents (posterior mean: deterministic)."""
        z = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, H, W) float32 images in [-1, 1]."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(P,) prompts -> (P, L, D) text embeddings in the editor's dtype."""
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, device=self.device, dtype=self.dtype)

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False, dynamic_ncols=True)

    @contextmanager
    def _timed(self, timings: dict[str, float], name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

    def prepare_batch(self, image, source, target, options: EditOptions) -> _Batch:
        """Normalise (image | images, source | sources, target | targets | targets per image) to jobs."""
        many = isinstance(image, (list, tuple))
        images = [load_image(im, max_pixels=options.max_pixels) for im in _as_list(image)]
        if not images:
            raise ValueError("no image given")
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            raise ValueError(f"images of one call must share a size, got {sorted(sizes)}; edit them in separate calls")
        sources = _as_list(source)
        if len(sources) == 1:
            sources = sources * len(images)
        if len(sources) != len(images):
            raise ValueError(f"got {len(sources)} source prompts for {len(images)} images")
        if not many:  # one image: target is one prompt or several prompts for it
            targets = [_as_list(target)]
        elif isinstance(target, str):
            targets = [[target] for _ in images]
        else:
            targets = [_as_list(t) for t in target]
            if len(targets) != len(images):
                raise ValueError(f"got {len(targets)} targets for {len(images)} images (one target, or list per image)")
        job_image, job_target = [], []
        for b, ts in enumerate(targets):
            if not ts:
                raise ValueError(f"image {b} has no target prompt")
            for t in ts:
                if not isinstance(t, str) or not t.strip():
                    raise ValueError("target prompt is empty: say what the edited image should show")
                if not isinstance(sources[b], str):
                    raise ValueError("source prompt must be a string ('' for none)")
                if t.strip() == sources[b].strip():
                    raise ValueError(f"target prompt equals the source prompt ({t!r}): nothing to edit")
                job_image.append(b)
                job_target.append(t)
        pixels = pad_to_multiple(pil_to_tensor(images), self.vae_scale_factor)
        w, h = images[0].size
        return _Batch(images, pixels, (h, w), sources, job_image, job_target)

    @staticmethod
    def _seed(seed: int | None, generator: torch.Generator | None) -> int:
        if generator is not None:
            return int(generator.initial_seed())
        if seed is None:
            return secrets.randbelow(2**31)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        return seed

    def _mask_noise(self, shape, n: int, seed: int, generator: torch.Generator | None) -> torch.Tensor:
        """(B, n, C, h, w) mask-pass noise drawn on the CPU: image b uses seed + b, so batching never changes it."""
        b = shape[0]
        if generator is not None:
            noise = torch.randn((b, n, *shape[1:]), generator=generator)
        else:
            noise = torch.stack(
                [torch.randn((n, *shape[1:]), generator=torch.Generator().manual_seed(seed + i)) for i in range(b)]
            )
        return noise.to(self.device, self.dtype)

    def _compute_mask(
        self,
        batch: _Batch,
        latents: torch.Tensor,
        options: EditOptions,
        seed: int,
        generator: torch.Generator | None,
        user_mask,
        timings: dict[str, float],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns latent soft maps (J, h, w), latent binary masks (J, h, w) and pixel masks (J, H, W)."""
        hp, wp = batch.pixels.shape[-2:]
        h, w = batch.size
        if user_mask is not None:
            masks = _as_list(user_mask) if isinstance(user_mask, (list, tuple)) else [user_mask] * len(batch.images)
            if len(masks) != len(batch.images):
                raise ValueError(f"got {len(masks)} masks for {len(batch.images)} images")
            pixel = torch.zeros(len(masks), hp, wp, dtype=torch.bool)
            for i, m in enumerate(masks):
                pixel[i, :h, :w] = torch.from_numpy(load_mask(m, (w, h)))
            latent = torch.stack([latent_mask_from_pixels(p, self.vae_scale_factor) for p in pixel])
            idx = torch.tensor(batch.job_image)
            return latent[idx].float(), latent[idx], pixel[idx][:, :h, :w]

        with self._timed(timings, "mask"):
            maps = self.noise_maps(batch, latents, options, seed, generator)
            soft, binary = finish_mask(
                maps, clamp=options.mask_clamp, quantile=options.mask_quantile, mean_ratio=options.mask_mean_ratio,
                per_image=options.mask_per_image, smooth=options.mask_smooth,
                threshold=options.latent_threshold,
                dilate_cells=options.mask_dilate,
            )
        pixel = upsample_mask(binary, (hp, wp)) > 0.5  # (J, Hp, Wp): the latent cells, blocky
        if options.mask_refine or options.mask_snap:  # trim the cells' edges with the soft map, upsampled smoothly
            soft_px = upsample_mask(soft, (hp, wp), soft=True)
            if options.mask_snap:  # ... made to follow the input's colour edges
                guide = (batch.pixels[batch.job_image].to(soft_px.device) + 1.0) / 2.0
                soft_px = guided_filter(soft_px, guide, radius=self.vae_scale_factor)
            pixel &= soft_px > options.mask_threshold
        return soft, binary, pixel[:, :h, :w]

    def _snap_to_edit(
        self, soft: torch.Tensor, binary: torch.Tensor, original: torch.Tensor, edited: torch.Tensor, threshold: float,
        trim: float = 0.0,
    ) -> torch.Tensor:
        """The composite's pixel mask (J, H, W) from the soft map snapped to the edges of input and edit.

        The soft map, upsampled, goes through a guided filter whose guide stacks the input and the
        decoded edit (J, 3, H, W each, in [-1, 1]): it steps where either has an edge, so the mask follows
        the old object's outline and the new one's, which the input alone does not show. It may spill one
        latent cell past the latent mask, where the decoder draws the edge of what it painted inside.
        The filter runs on the editor's device, on each image's box around that reach (exact: an output
        pixel depends on the inputs within twice the radius). With `trim` > 0 it then drops the pixels
        that match, in input and edit together, a colour of the ring one latent cell wide around that
        reach (`trim_to_background`): the filter's halo where the soft map stays high past an outline.
        """
        (h, w), f = original.shape[-2:], self.vae_scale_factor
        padded = (binary.shape[-2] * f, binary.shape[-1] * f)
        region = (upsample_mask(dilate(binary, 1), padded) > 0.5)[:, :h, :w].to(self.device)
        ring = (upsample_mask(dilate(binary, 2), padded) > 0.5)[:, :h, :w].to(self.device) & ~region
        soft_px = upsample_mask(soft, padded, soft=True)[:, :h, :w].to(self.device)
        guide = (torch.cat([original, edited], dim=1).to(self.device, torch.float32) + 1.0) / 2.0  # (J, 6, H, W)
        out = torch.zeros_like(region)
        for j in range(region.shape[0]):
            ys, xs = torch.nonzero(region[j], as_tuple=True)
            if ys.numel() == 0:
                continue
            y0, y1 = max(0, int(ys.min()) - 2 * f), min(h, int(ys.max()) + 1 + 2 * f)
            x0, x1 = max(0, int(xs.min()) - 2 * f), min(w, int(xs.max()) + 1 + 2 * f)
            snapped = guided_filter(soft_px[j : j + 1, y0:y1, x0:x1], guide[j : j + 1, :, y0:y1, x0:x1], radius=f, eps=1e-2)
            out[j, y0:y1, x0:x1] = region[j, y0:y1, x0:x1] & (snapped[0] > threshold)
            out[j] = trim_to_background(out[j], guide[j], ring[j], trim)
        return out.cpu()

    @staticmethod
    def _mask_changes(batch: _Batch, options: EditOptions) -> list[list[str]]:
        """Per job, the single-change prompts whose maps are merged into its mask (prompts.single_changes);
        none without `mask_per_change` or when the mask's reference is not the source prompt."""
        return [
            single_changes(batch.sources[b], target)
            if options.mask_per_change and options.mask_reference in (None, batch.sources[b]) else []
            for b, target in zip(batch.job_image, batch.job_target)
        ]

    def noise_maps(
        self, batch: _Batch, latents: torch.Tensor, options: EditOptions, seed: int, generator=None
    ) -> torch.Tensor:
        """Step 1 before normalisation: |eps_target - eps_reference| averaged over noises, (J, h, w); for a target
        that changes several words, merged with the maps of each single change (`mask_per_change`)."""
        # 1a. Noise the latents at mask_strength with n noises per image
        grid = ddim_grid(self.scheduler, options.num_inference_steps, options.mask_strength)
        t, alpha = int(grid.timesteps[-1]), float(grid.alphas[-1])
        noise = self._mask_noise(latents.shape, options.mask_noises, seed, generator)  # (B, n, C, h, w)
        noisy = alpha**0.5 * latents.unsqueeze(1) + (1 - alpha) ** 0.5 * noise
        # 1b. Predict the noise with the reference and the target prompts in one batch (no guidance: it cancels)
        reference = [options.mask_reference if options.mask_reference is not None else s for s in batch.sources]
        # ... and, for a target that changes several words of the source, with each single change (merge_change_maps)
        parts = self._mask_changes(batch, options)
        prompts = list(batch.job_target) + [p for ps in parts for p in ps]
        images = list(batch.job_image) + [b for b, ps in zip(batch.job_image, parts) for _ in ps]
        rows = (len(batch.images) + len(prompts)) * options.mask_noises
        with self._bar(rows, "mask") as bar:
            maps = noise_difference_maps(
                self.denoiser, noisy, t, self.encode_prompts(reference), self.encode_prompts(prompts),
                images, max_batch=options.mask_batch_size, progress=bar.update,
            )
        out, start = maps[: len(batch.job_target)].clone(), len(batch.job_target)
        for j, ps in enumerate(parts):
            if ps:
                out[j] = merge_change_maps(out[j], maps[start : start + len(ps)], options.mask_quantile)
                start += len(ps)
        return out

    def _pil_masks(self, soft: torch.Tensor, pixel: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]):
        h, w = size
        soft_px = upsample_mask(soft, padded, soft=True)[:, :h, :w].clamp(0, 1)
        to_l = lambda a: Image.fromarray((a.cpu().numpy() * 255.0 + 0.5).astype(np.uint8), mode="L")
        return [to_l(m.float()) for m in pixel], [to_l(s) for s in soft_px]

    def _candidates(self, batch: _Batch, options: EditOptions) -> list[tuple[float, bool, float]]:
        """The decodings to try: (encoding ratio, inverted with the source prompt?, share of fresh noise in the
        mask at the top level); the paper's first. Noise candidates start from the top unconditional level."""
        out = [(options.strength, False, 0.0)]
        out += [(r, False, 0.0) for r in options.extra_strengths if (r, False, 0.0) not in out]
        top = max(r for r, _, _ in out)
        out += [(top, False, s) for s in options.noise_candidates if (top, False, s) not in out]
        if options.caption_candidate and all(s.strip() for s in batch.sources) and not options.inversion_prompt:
            out.append((options.strength, True, 0.0))
        return out

    @staticmethod
    def _label(strength: float, caption: bool, noise: float) -> str:
        return f"r={strength:g}" + (" caption" if caption else "") + (f" noise {noise:g}" if noise else "")

    def _noised_start(
        self, levels: torch.Tensor, binary: torch.Tensor, share: float, batch: _Batch, seed: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Per-job levels (N + 1, J, C, h, w) whose top level has `share` of its variance replaced by fresh noise
        inside the latent mask: the decoder may then redraw the shape instead of following the old outline.
        Job j's noise comes from seed + its image index + 2**33 (or `generator`), drawn on the CPU."""
        top = levels[-1]  # (J, C, h, w)
        if generator is not None:
            noise = torch.randn(top.shape, generator=generator)
        else:
            noise = torch.stack([
                torch.randn(top.shape[1:], generator=torch.Generator().manual_seed(seed + b + 2**33)) for b in batch.job_image
            ])
        m = binary.reshape(top.shape[0], 1, *top.shape[-2:]).to(top)
        mixed = (1 - share) ** 0.5 * top + share**0.5 * noise.to(top)
        out = levels.clone()
        out[-1] = m * mixed + (1 - m) * top
        return out

    def _finish(self, batch, decoded, soft, binary, pixel_mask, options: EditOptions, *, user_mask: bool):
        """Decoded images (J, 3, H, W) in [-1, 1] -> (uint8 images pasted into the input, their pixel masks)."""
        h, w = batch.size
        decoded_u8 = ((decoded + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
        if not options.composite:
            return decoded_u8, pixel_mask
        if options.edit_snap and not user_mask:
            inputs = batch.pixels[batch.job_image][:, :, :h, :w]
            pixel_mask = self._snap_to_edit(
                soft, binary, inputs, decoded.clamp(-1, 1), options.mask_threshold, options.edit_trim
            )
        original = ((batch.pixels[:, :, :h, :w] + 1.0) * 127.5).round().to(torch.uint8)[batch.job_image]
        return composite(original, decoded_u8, feathered_alpha(pixel_mask, options.feather)), pixel_mask

    def _rerank(
        self, batch: _Batch, images: list[torch.Tensor], binary: torch.Tensor, options: EditOptions, seed: int,
        generator: torch.Generator | None,
    ) -> list[list[float]]:
        """Score K candidates (uint8 (J, 3, H, W) each) of every job (rerank_scores): the source prompt's error
        minus the target's, plus `rerank_unconditional` times the empty prompt's error minus the target's.

        Each job's candidates are encoded again with the VAE and scored inside the latent mask grown by one
        cell, with noises drawn from seed + image index (or `generator`), shared by its candidates.
        """
        k, j = len(images), len(batch.job_image)
        pixels = torch.cat(images).float() / 127.5 - 1.0  # (K * J, 3, H, W), candidate-major
        latents = self.encode_images(pad_to_multiple(pixels, self.vae_scale_factor))
        latents = latents.reshape(k, j, *latents.shape[1:])
        region = dilate(binary.float(), 1) > 0.5  # (J, h, w)
        train_steps = self.scheduler.config.num_train_timesteps
        timesteps = [min(train_steps - 1, int(round(level * train_steps))) for level in options.rerank_levels]
        sources = self.encode_prompts([batch.sources[b] for b in batch.job_image])
        targets = self.encode_prompts(batch.job_target)
        weight = options.rerank_unconditional
        empty = self.encode_prompts([""]) if weight else None
        shape = (len(timesteps), options.rerank_noises, *latents.shape[2:])
        scores = []
        with self._bar(j, "rerank") as bar:
            for i, b in enumerate(batch.job_image):
                g = generator if generator is not None else torch.Generator().manual_seed(seed + b + 2**32)
                noises = torch.randn(shape, generator=g).to(self.device, self.dtype)
                errors = denoising_errors(
                    self.denoiser, latents[:, i], torch.stack([sources[i], targets[i], *([empty[0]] if weight else [])]),
                    region[i].expand(k, -1, -1),
                    self.scheduler.alphas_cumprod, timesteps, noises,
                    prediction_type=self.scheduler.config.prediction_type,
                    max_batch=options.mask_batch_size or 256,
                )
                scores.append([float(v) for v in rerank_scores(errors, unconditional=2 if weight else None, weight=weight)])
                bar.update()
        return scores

    # ------------------------------------------------------------------ public steps
    def mask(
        self,
        image: ImageInput | Sequence[ImageInput],
        source: str | Sequence[str],
        target: str | Sequence[str] | Sequence[Sequence[str]],
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        options: EditOptions | None = None,
        **overrides,
    ) -> MaskResult:
        """DiffEdit step 1 alone: the mask of each (image, target) job."""
        options = (options or EditOptions()).replace(**overrides)
        seed = self._seed(seed, generator)
        batch = self.prepare_batch(image, source, target, options)
        latents = self.encode_images(batch.pixels)
        soft, binary, pixel = self._compute_mask(batch, latents, options, seed, generator, None, {})
        mask_images, soft_images = self._pil_masks(soft, pixel, tuple(batch.pixels.shape[-2:]), batch.size)
        return MaskResult(soft=soft, mask=binary, mask_images=mask_images, soft_images=soft_images, seed=seed)

    @torch.no_grad()
    def invert(
        self,
        image: ImageInput | Sequence[ImageInput],
        prompt: str = "",
        *,
        num_inference_steps: int = 50,
        strength: float = 0.8,
        guidance_scale: float = 1.0,
        max_pixels: int | None = EditOptions.max_pixels,
    ) -> InversionResult:
        """DiffEdit step 2 alone: DDIM inversion of each image up to `strength`, every level kept."""
        images = [load_image(im, max_pixels=max_pixels) for im in _as_list(image)]
        if len({im.size for im in images}) > 1:
            raise ValueError("images of one call must share a size")
        latents = self.encode_images(pad_to_multiple(pil_to_tensor(images), self.vae_scale_factor))
        grid = ddim_grid(self.scheduler, num_inference_steps, strength)
        return InversionResult(self._invert(latents, prompt, grid, guidance_scale), grid.timesteps)

    def _invert(self, latents: torch.Tensor, prompt: str | list[str], grid, guidance_scale: float = 1.0) -> torch.Tensor:
        """Every level of the DDIM inversion of latents (B, ...) with one prompt, or one prompt per image."""
        prompts = [prompt] * latents.shape[0] if isinstance(prompt, str) else list(prompt)
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([""] * latents.shape[0]) if guidance_scale != 1.0 else None
        with self._bar(grid.num_steps, "invert") as bar:
            return ddim_invert(
                self.denoiser, latents, cond, grid, uncond=uncond, guidance_scale=guidance_scale,
                callback=lambda k, x: bar.update(),
            )

    @torch.no_grad()
    def edit(
        self,
        image: ImageInput | Sequence[ImageInput],
        source: str | Sequence[str],
        target: str | Sequence[str] | Sequence[Sequence[str]],
        *,
        mask: ImageInput | Sequence[ImageInput] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        options: EditOptions | None = None,
        **overrides,
    ) -> EditResult:
        """Edit `image` from what `source` describes to what `target` describes, inside an automatic mask.

        image: one image (path, PIL, array) or a list of same-size images. target: one prompt, several
        prompts for one image (sharing its inversion and mask pass), or one prompt / list per image.
        mask: a user mask (white = edit) instead of the computed one. Options: an EditOptions and/or its
        fields as keywords (num_inference_steps=..., strength=..., guidance_scale=...).
        """
        timings: dict[str, float] = {}
        # 1. Check inputs and read images
        options = (options or EditOptions()).replace(**overrides)
        seed = self._seed(seed, generator)
        batch = self.prepare_batch(image, source, target, options)
        padded, (h, w) = tuple(batch.pixels.shape[-2:]), batch.size

        # 2. Encode the images with the VAE
        with self._timed(timings, "vae_encode"):
            latents = self.encode_images(batch.pixels)  # (B, C, h, w)

        # 3. Mask (DiffEdit step 1), or the user's
        soft, binary, pixel_mask = self._compute_mask(batch, latents, options, seed, generator, mask, timings)

        # 4. DDIM inversion up to the encoding ratio (step 2), one per image whatever the number of targets;
        #    taken up to the highest ratio of the candidates, whose lower ratios read its lower levels
        candidates = self._candidates(batch, options)
        grids = {r: ddim_grid(self.scheduler, options.num_inference_steps, r) for r, _, _ in candidates}
        with self._timed(timings, "inversion"):
            top = max(r for r, caption, _ in candidates if not caption)
            inverted = {False: self._invert(latents, options.inversion_prompt, grids[top])}  # (N + 1, B, C, h, w)
            if any(caption for _, caption, _ in candidates):
                inverted[True] = self._invert(latents, batch.sources, grids[options.strength])

        # 5. Masked decoding of every candidate with the target prompts and guidance (step 3), all jobs in one
        #    batch; each candidate decoded with the VAE and pasted into the input outside its mask
        with self._timed(timings, "decoding"):
            negative = [options.negative_prompt if options.negative_prompt is not None else batch.sources[b] for b in batch.job_image]
            cond = self.encode_prompts(batch.job_target)
            uncond = self.encode_prompts(negative) if options.guidance_scale != 1.0 else None
        outputs = []  # per candidate: (uint8 images (J, 3, H, W), pixel masks (J, H, W))
        for strength, caption, noise in candidates:
            grid = grids[strength]
            levels, job_image = inverted[caption][: grid.num_steps + 1], batch.job_image
            if noise:  # per-job levels: each job's top level mixed with fresh noise inside its own mask
                levels = self._noised_start(levels[:, job_image], binary, noise, batch, seed, generator)
                job_image = None
            with self._timed(timings, "decoding"), self._bar(grid.num_steps, "denoise") as bar:
                edited = masked_denoise(
                    self.denoiser, levels, binary, cond, grid,
                    uncond=uncond, guidance_scale=options.guidance_scale, job_image=job_image,
                    callback=lambda k, x: bar.update(),
                )
            with self._timed(timings, "vae_decode"):
                decoded = self.decode_latents(edited)[:, :, :h, :w]  # (J, 3, H, W)
            outputs.append(self._finish(batch, decoded, soft, binary, pixel_mask, options, user_mask=mask is not None))

        # 6. Keep, per job, the candidate the target prompt explains best (rerank.py)
        chosen, scores = [0] * len(batch.job_image), []
        if len(candidates) > 1:
            with self._timed(timings, "rerank"):
                scores = self._rerank(batch, [u8 for u8, _ in outputs], binary, options, seed, generator)
            chosen = [int(torch.tensor(row).argmax()) for row in scores]
        jobs = torch.arange(len(chosen))
        decoded_u8 = torch.stack([u8 for u8, _ in outputs])[torch.tensor(chosen), jobs]
        pixel_mask = torch.stack([m for _, m in outputs])[torch.tensor(chosen), jobs]
        images = [Image.fromarray(a) for a in decoded_u8.permute(0, 2, 3, 1).numpy()]

        mask_images, soft_images = self._pil_masks(soft, pixel_mask, padded, (h, w))
        return EditResult(
            images=images,
            mask_images=mask_images,
            soft_images=soft_images,
            mask=binary.cpu(),
            soft=soft.float().cpu(),
            sources=[batch.sources[b] for b in batch.job_image],
            targets=batch.job_target,
            job_image=batch.job_image,
            seed=seed,
            options=options,
            model=self.name,
            timings=timings,
            candidates=[self._label(*c) for c in candidates],
            chosen=chosen,
            candidate_scores=scores,
            mask_changes=[[] for _ in batch.job_image] if mask is not None else self._mask_changes(batch, options),
        )
