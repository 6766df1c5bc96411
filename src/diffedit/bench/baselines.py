"""The methods the benchmarks compare with ours, all on the same editor weights.

- `diffusers`: diffusers' StableDiffusionDiffEditPipeline (generate_mask -> invert -> __call__) with its
  defaults, built from the editor's own modules: the reference implementation we are measured against.
- `sdedit`: SDEdit (Meng et al. 2022, arXiv 2108.01073): noise the clean latent to the encoding ratio,
  denoise with the target prompt, no mask; the "no mask at all" baseline.
- `gt_mask`: our decoding with the ground-truth mask as a user mask; an upper bound for the mask step.
- ablations of ours: no mask smoothing, no pixel composite, batch-pooled mask normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from diffedit.editor import DiffEditor
from diffedit.images import ImageInput, load_image, pad_to_multiple, pil_to_tensor, tensor_to_pil
from diffedit.results import EditOptions, EditResult
from diffedit.sampling import masked_denoise
from diffedit.schedule import ddim_grid
from diffedit.timing import timed

if TYPE_CHECKING:  # importing diffusers' pipelines costs seconds: only when one is built
    from diffusers import StableDiffusionDiffEditPipeline

__all__ = [
    "OURS_VARIANTS",
    "diffusers_pipeline",
    "diffusers_edit",
    "sdedit",
    "gt_mask_edit",
]

# Our method and its ablations: option overrides on top of the benchmark's EditOptions.
OURS_VARIANTS: dict[str, dict] = {
    "ours": {},
    "ours_no_smooth": {"mask_smooth": 0.0},  # no Gaussian smoothing of the map before thresholding
    "ours_no_composite": {"composite": False},  # keep the decoder's pixels outside the mask
    "ours_batch_norm": {"mask_per_image": False},  # normalise the maps over the batch, as diffusers does
    "ours_no_edit_snap": {"edit_snap": False},  # composite mask: latent cells trimmed by the soft map (mask_refine)
    "ours_no_refine": {"mask_refine": False, "edit_snap": False},  # blocky composite mask: the latent cells
    "ours_snap_input": {"mask_snap": True, "edit_snap": False},  # mask snapped to the input's edges alone
    "ours_one_threshold": {"decode_threshold": None},  # decoding paints in the latent mask at mask_threshold (paper)
    "ours_no_trim": {"edit_trim": 0.0},  # the edit snap keeps the guided filter's halo of background
    "ours_no_cover": {"edit_cover": 0.0},  # the composite's mask stops where the edit's edges do, short of the old object
    "ours_no_spill": {"edit_spill": 0},  # the composite pastes the new object's rim drawn a pixel or two past the old edge
    "ours_feather2": {"feather": 2},  # a 2 px opacity ramp around the composite's mask
    "ours_whole_prompt_mask": {"mask_per_change": False},  # a several-word change mapped as one (the paper's map)
    "ours_noise_candidate": {"noise_candidates": (0.5,), "rerank_levels": (0.6, 0.7, 0.8, 0.9), "rerank_unconditional": 2.0},
    #   a fourth candidate (half fresh noise in the mask at r = 1), scored also against the empty prompt: not default
    # the paper's single decoding at r
    "ours_one_candidate": {"extra_strengths": (), "noise_candidates": (), "caption_candidate": False},
    "ours_attention_mask": {"method": "diffedit_attention_mask"},  # the mask from the changed words' cross-attention
    "ours_both_mask": {"mask_source": "both"},  # the noise difference and the attention map combined (mask_source)
    "ours_no_inpaint": {"inpaint_candidate": False},  # the model's own decoders only (the default before issue 21)
    "ours_inpaint": {"caption_candidate": False},  # the inpainting UNet's decoding alone under our mask (needs one)
    # inversions (docs/inversions.md): every candidate from the source prompt's walk (Miyake et al.'s negative-prompt
    # inversion: the caption encoding decoded against the source), with null-text embeddings, direct offsets, or DDPM's
    "ours_negative_prompt": {"inversion": "negative-prompt"},
    "ours_null_text": {"inversion": "null-text"},
    "ours_direct": {"inversion": "direct"},
    "ours_ddpm": {"inversion": "ddpm"},
    "p2p": {"method": "p2p"},  # Prompt-to-Prompt over DDIM inversion, its own local blend (docs/attention.md)
    "diffedit_p2p": {"method": "diffedit_p2p"},  # our mask around a Prompt-to-Prompt-controlled decoding
    "diffedit_p2p_no_inpaint": {"method": "diffedit_p2p", "inpaint_candidate": False},  # ... every candidate controlled
}


# ------------------------------------------------------------------ diffusers' pipeline
def diffusers_pipeline(editor: DiffEditor) -> "StableDiffusionDiffEditPipeline":
    """diffusers' DiffEdit pipeline sharing the editor's modules (no copy of the weights), progress bars off."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    if editor.vae.dtype != editor.unet.dtype:
        raise ValueError(
            f"diffusers' DiffEdit pipeline feeds VAE latents to the UNet as they are: the VAE ({editor.vae.dtype}) "
            f"must share the UNet's dtype ({editor.unet.dtype}); call editor.vae.to(editor.dtype) first"
        )
    config = editor.scheduler.config
    pipe = StableDiffusionDiffEditPipeline(
        vae=editor.vae, text_encoder=editor.text_encoder, tokenizer=editor.tokenizer, unet=editor.unet,
        scheduler=DDIMScheduler.from_config(config), inverse_scheduler=DDIMInverseScheduler.from_config(config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_edit(
    pipe: "StableDiffusionDiffEditPipeline",
    image: ImageInput,
    source: str,
    target: str,
    *,
    seed: int,
    num_inference_steps: int = 50,
    strength: float = 0.8,
    mask_noises: int = 10,
    timings: dict[str, float] | None = None,
) -> tuple[Image.Image, np.ndarray]:
    """One edit the way diffusers documents it; returns the edited image and the (h, w) bool latent mask.

    Everything not named here keeps diffusers' defaults (mask pass with guidance 7.5 and encode strength
    0.5, inversion with guidance 7.5, decoding with guidance 7.5). Each call gets a fresh CPU generator
    seeded with `seed`. `timings`, when given, receives generate_mask / invert / call seconds.
    """
    timings = {} if timings is None else timings
    image = load_image(image)
    device = pipe.unet.device
    generator = lambda: torch.Generator().manual_seed(seed)  # noqa: E731 - one fresh stream per stage
    with timed(timings, "generate_mask", device):
        mask = pipe.generate_mask(
            image=image, source_prompt=source, target_prompt=target, generator=generator(),
            num_inference_steps=num_inference_steps, num_maps_per_mask=mask_noises,
        )  # (1, h, w) int
    with timed(timings, "invert", device):
        inverted = pipe.invert(
            prompt=source, image=image, inpaint_strength=strength, generator=generator(),
            num_inference_steps=num_inference_steps,
        ).latents
    with timed(timings, "call", device):
        edited = pipe(
            prompt=target, mask_image=mask, image_latents=inverted, negative_prompt=source,
            inpaint_strength=strength, generator=generator(), num_inference_steps=num_inference_steps,
        ).images[0]
    return edited, np.asarray(mask[0]).astype(bool)


# ------------------------------------------------------------------ SDEdit
@torch.no_grad()
def sdedit(
    editor: DiffEditor,
    images: ImageInput | Sequence[ImageInput],
    targets: str | Sequence[str],
    *,
    strength: float = 0.8,
    seed: int = 0,
    sources: str | Sequence[str] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
) -> list[Image.Image]:
    """SDEdit (Meng et al. 2022): noise each clean latent to the top level of the DDIM grid cut at
    `strength`, then decode it with the target prompt and guidance, everywhere (no mask).

    The negative prompt is the source prompt (as in our decoding), or "" when `sources` is None.
    Image b's noise is drawn from a CPU generator seeded `seed + b`, as our mask noises are.
    """
    # 1. Check inputs, encode the images
    images = [load_image(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
    if len({im.size for im in images}) > 1:
        raise ValueError("images of one call must share a size")
    targets = [targets] * len(images) if isinstance(targets, str) else list(targets)
    negatives = [""] * len(images) if sources is None else [sources] * len(images) if isinstance(sources, str) else list(sources)
    if not len(targets) == len(negatives) == len(images):
        raise ValueError(f"got {len(images)} images, {len(targets)} targets, {len(negatives)} sources")
    w, h = images[0].size
    latents = editor.components.encode_images(pad_to_multiple(pil_to_tensor(images), editor.vae_scale_factor))  # (B, C, h, w)

    # 2. Noise to the top level N of the grid: x_N = sqrt(alpha_N) x_0 + sqrt(1 - alpha_N) eps
    grid = ddim_grid(editor.scheduler, num_inference_steps, strength)
    alpha = float(grid.alphas[-1])
    noise = torch.stack(
        [torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed + b)) for b in range(len(images))]
    ).to(latents.device, latents.dtype)
    top = alpha**0.5 * latents + (1 - alpha) ** 0.5 * noise
    levels = top.unsqueeze(0).expand(grid.num_steps + 1, *top.shape)  # only the top level is read: the mask is all ones

    # 3. Plain DDIM decoding with guidance: masked_denoise with a mask of ones
    ones = torch.ones(len(images), *latents.shape[-2:], device=latents.device)
    cond = editor.components.encode_prompts(targets)
    uncond = editor.components.encode_prompts(negatives) if guidance_scale != 1.0 else None
    edited = masked_denoise(editor.unet, levels, ones, cond, grid, uncond=uncond, guidance_scale=guidance_scale)
    return tensor_to_pil(editor.components.decode_latents(edited)[:, :, :h, :w])


# ------------------------------------------------------------------ ground-truth mask
def gt_mask_edit(
    editor: DiffEditor,
    images: Sequence[ImageInput],
    sources: Sequence[str],
    targets: Sequence[str],
    masks: Sequence[np.ndarray],
    *,
    seed: int = 0,
    options: EditOptions | None = None,
) -> EditResult:
    """Our decoding inside the ground-truth masks (bool (H, W) each), given as user masks."""
    user_masks = [np.asarray(m, dtype=bool).astype(np.uint8) * 255 for m in masks]
    # with an inpainter loaded, gt_mask decodes the default candidates and gt_mask_inpaint the inpainter alone
    return editor.edit(list(images), list(sources), list(targets), mask=user_masks, seed=seed, options=options)
