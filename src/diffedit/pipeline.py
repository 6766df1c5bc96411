"""DiffEditPipeline: diffusers' StableDiffusionDiffEditPipeline API (generate_mask, invert, __call__) on our DiffEdit.

Change the import and keep your code. Results differ where diffusers' pipeline departs from the paper
(Couairon et al., ICLR 2023); docs/migration.md lists every difference:

1. Decoding blends the background with the inverted latent of the SAME noise level and ends on the image's own
   clean latent (diffusers blends one level too noisy). `invert(...).latents` therefore keeps the clean level:
   (B, N + 1, C, h, w), noisiest first, clean last (diffusers: (B, N, ...), no clean level).
2. The mask is normalised per image (diffusers pools a batch's statistics).
3. The mask pass encodes each image once, with the VAE posterior mean (diffusers samples it per noise).
4. The mask pass runs no classifier-free guidance: with one negative prompt for both estimates it scales their
   difference by a constant, which the normalisation divides away.
Sampling is deterministic DDIM (eta = 0) on the noise schedule of `scheduler`, whatever its class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.deprecated.stable_diffusion_diffedit.pipeline_stable_diffusion_diffedit import (
    DiffEditInversionPipelineOutput,
)
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import USE_PEFT_BACKEND, logging, scale_lora_layers, unscale_lora_layers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

from .inversion import ddim_invert
from .masks import finish_mask, noise_difference_maps
from .pipeline_utils import (
    UNetWithKwargs,
    batch_size_of,
    check_call,
    check_decode_inputs,
    check_generator,
    check_inverse_scheduler,
    check_mask_inputs,
    check_prompt_inputs,
    clean_level_estimate,
    mask_output,
    prepare_mask_image,
    prompt_list,
    same_negatives,
    step_callback,
    to_levels,
)
from .prompts import encode_prompts
from .sampling import masked_denoise
from .schedule import ddim_grid

__all__ = ["DiffEditInversionPipelineOutput", "DiffEditPipeline"]

logger = logging.get_logger(__name__)


class DiffEditPipeline(DiffusionPipeline, StableDiffusionMixin, TextualInversionLoaderMixin, StableDiffusionLoraLoaderMixin):
    """Drop-in replacement for diffusers' StableDiffusionDiffEditPipeline with the paper's DiffEdit."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: ClassVar[list[str]] = ["safety_checker", "feature_extractor", "inverse_scheduler"]
    _exclude_from_cpu_offload: ClassVar[list[str]] = ["safety_checker"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        inverse_scheduler: DDIMInverseScheduler | None = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__()
        if safety_checker is None and requires_safety_checker:
            logger.warning(f"{self.__class__.__name__} runs without a safety checker (safety_checker=None).")
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("a safety_checker needs a feature_extractor; pass one, or safety_checker=None")
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=safety_checker, feature_extractor=feature_extractor, inverse_scheduler=inverse_scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    # ------------------------------------------------------------------ VAE memory switches (diffusers' old API)
    def enable_vae_slicing(self):
        """Decode a batch one image at a time."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self):
        """Decode a batch at once."""
        self.vae.disable_slicing()

    def enable_vae_tiling(self):
        """Encode and decode large images in tiles."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self):
        """Encode and decode whole images."""
        self.vae.disable_tiling()

    # ------------------------------------------------------------------ building blocks
    @torch.no_grad()
    def encode_prompt(
        self, prompt, device=None, num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = False,
        negative_prompt=None, prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None, clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """diffusers' encode_prompt: (prompt embeddings, negative embeddings or None); clip_skip applies to both."""
        device = device or self._execution_device
        batch = batch_size_of(prompt, prompt_embeds)
        if lora_scale is not None and USE_PEFT_BACKEND:
            self._lora_scale = lora_scale
            scale_lora_layers(self.text_encoder, lora_scale)
        try:
            embeds = self._embed(prompt, prompt_embeds, batch, device, clip_skip, "prompt")
            negative = negative_prompt_embeds
            if do_classifier_free_guidance:
                negative = self._embed(negative_prompt or "", negative_prompt_embeds, batch, device, clip_skip, "negative_prompt")
        finally:
            if lora_scale is not None and USE_PEFT_BACKEND:
                unscale_lora_layers(self.text_encoder, lora_scale)
        def repeat(x):
            return x if x is None else x.repeat_interleave(num_images_per_prompt, dim=0)
        return repeat(embeds), repeat(negative)

    def _embed(self, prompt, prompt_embeds, batch: int, device, clip_skip: int | None, name: str) -> torch.Tensor:
        """(batch, L, D) embeddings of a prompt (str or list) or the given embeddings, in the UNet's dtype."""
        dtype = self.unet.dtype
        if prompt_embeds is not None:
            if prompt_embeds.shape[0] not in (1, batch):
                raise ValueError(f"`{name}_embeds` has a batch of {prompt_embeds.shape[0]}; the call has {batch}")
            return prompt_embeds.to(device, dtype).expand(batch, -1, -1)
        prompts = self.maybe_convert_prompt(prompt_list(prompt, batch, name), self.tokenizer)  # textual inversion tokens
        if clip_skip is None:
            return encode_prompts(self.tokenizer, self.text_encoder, prompts, device=device, dtype=dtype)
        if not isinstance(clip_skip, int) or not 0 <= clip_skip <= self.text_encoder.config.num_hidden_layers:
            raise ValueError(f"clip_skip must be an int in [0, {self.text_encoder.config.num_hidden_layers}], got {clip_skip}")
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        hidden = self.text_encoder(ids.to(device), output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        final_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm  # transformers 4 / 5
        return final_norm(hidden).to(device, dtype)

    def _unet(self, cross_attention_kwargs: dict | None):
        """The UNet, called with `cross_attention_kwargs` when given."""
        return self.unet if not cross_attention_kwargs else UNetWithKwargs(self.unet, cross_attention_kwargs)

    @torch.no_grad()
    def encode_images(self, image, batch_size: int) -> torch.Tensor:
        """Images (PIL, arrays, tensors in diffusers' conventions) -> (batch, C, h, w) latents: the posterior mean, scaled."""
        pixels = self.image_processor.preprocess(image).to(self._execution_device, self.vae.dtype)
        if pixels.shape[1] == self.vae.config.latent_channels:  # latents already, as diffusers accepts
            latents = pixels
        else:
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            latents = (self.vae.encode(pixels).latent_dist.mean - shift) * self.vae.config.scaling_factor
        if latents.shape[0] == 1 and batch_size > 1:
            latents = latents.expand(batch_size, -1, -1, -1)
        if latents.shape[0] != batch_size:
            raise ValueError(f"got {latents.shape[0]} images for a batch of {batch_size} prompts")
        return latents.to(self.unet.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str):
        """(B, C, h, w) latents -> images in diffusers' output_type ("pil", "np", "pt", "latent"), and the NSFW flags."""
        if output_type == "latent":
            return latents, None
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        image = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift, return_dict=False)[0]
        nsfw = None
        if self.safety_checker is not None:
            features = self.feature_extractor(self.image_processor.postprocess(image, output_type="pil"), return_tensors="pt")
            clip_input = features.pixel_values.to(self._execution_device, image.dtype)
            image, nsfw = self.safety_checker(images=image, clip_input=clip_input)
        denormalize = [True] * image.shape[0] if nsfw is None else [not flag for flag in nsfw]
        return self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize), nsfw

    # ------------------------------------------------------------------ DiffEdit step 1: the mask
    @torch.no_grad()
    def generate_mask(
        self,
        image: torch.Tensor | PIL.Image.Image = None,
        target_prompt: str | list[str] | None = None,
        target_negative_prompt: str | list[str] | None = None,
        target_prompt_embeds: torch.Tensor | None = None,
        target_negative_prompt_embeds: torch.Tensor | None = None,
        source_prompt: str | list[str] | None = None,
        source_negative_prompt: str | list[str] | None = None,
        source_prompt_embeds: torch.Tensor | None = None,
        source_negative_prompt_embeds: torch.Tensor | None = None,
        num_maps_per_mask: int | None = 10,
        mask_encode_strength: float | None = 0.5,
        mask_thresholding_ratio: float | None = 3.0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "np",
        cross_attention_kwargs: dict[str, Any] | None = None,
    ):
        """Latent edit mask (B, h, w) in {0, 1}: |eps(target) - eps(source)| over noises, clamped at ratio x mean, per image."""
        # 1. Check inputs
        for name, prompt, embeds, negative, negative_embeds in (
            ("target_prompt", target_prompt, target_prompt_embeds, target_negative_prompt, target_negative_prompt_embeds),
            ("source_prompt", source_prompt, source_prompt_embeds, source_negative_prompt, source_negative_prompt_embeds),
        ):
            check_prompt_inputs(prompt, embeds, negative, negative_embeds, name)
        check_mask_inputs(image, num_maps_per_mask, mask_thresholding_ratio, output_type)
        if guidance_scale > 1 and not same_negatives(
            target_negative_prompt, target_negative_prompt_embeds, source_negative_prompt, source_negative_prompt_embeds
        ):
            raise ValueError(
                "the mask pass runs without guidance, where one negative prompt for both estimates cancels; different "
                "target and source negative prompts do not: give them equal, or guidance_scale=1"
            )

        # 2. Define call parameters
        batch_size = batch_size_of(target_prompt, target_prompt_embeds)
        check_generator(generator, batch_size)
        device = self._execution_device

        # 3. Encode the prompts (no classifier-free guidance: it cancels in the normalisation)
        target = self._embed(target_prompt, target_prompt_embeds, batch_size, device, None, "target_prompt")
        source = self._embed(source_prompt, source_prompt_embeds, batch_size, device, None, "source_prompt")

        # 4. Encode each image once, with the posterior mean, and noise it at mask_encode_strength
        latents = self.encode_images(image, batch_size)  # (B, C, h, w)
        grid = ddim_grid(self.scheduler, num_inference_steps, mask_encode_strength)
        alpha = float(grid.alphas[-1])
        noise = randn_tensor((batch_size, num_maps_per_mask, *latents.shape[1:]), generator=generator, device=device,
                             dtype=latents.dtype)  # one generator per image draws that image's noises
        noisy = alpha**0.5 * latents.unsqueeze(1) + (1 - alpha) ** 0.5 * noise  # (B, n, C, h, w)

        # 5. Difference of the noise estimates, clamped at ratio x mean and thresholded, each image on its own
        maps = noise_difference_maps(self._unet(cross_attention_kwargs), noisy, int(grid.timesteps[-1]), source, target,
                                     list(range(batch_size)))
        _, mask = finish_mask(maps, clamp="mean_ratio", mean_ratio=mask_thresholding_ratio, per_image=True, smooth=0.0)

        # 6. Convert to the output type
        self.maybe_free_model_hooks()
        return mask_output(mask, output_type)

    # ------------------------------------------------------------------ DiffEdit step 2: the inversion
    @torch.no_grad()
    def invert(
        self,
        prompt: str | list[str] | None = None,
        image: torch.Tensor | PIL.Image.Image = None,
        num_inference_steps: int = 50,
        inpaint_strength: float = 0.8,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        decode_latents: bool = False,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int | None = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        lambda_auto_corr: float = 20.0,
        lambda_kl: float = 20.0,
        num_reg_steps: int = 0,
        num_auto_corr_rolls: int = 5,
    ):
        """DDIM inversion up to inpaint_strength; `.latents` is (B, N + 1, C, h, w), noisiest first, the clean latent last."""
        # 1. Check inputs
        check_prompt_inputs(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        if image is None:
            raise ValueError("`image` must be given")
        check_call(output_type, callback_steps)
        if num_reg_steps:
            raise ValueError("num_reg_steps > 0 (Pix2Pix-Zero's noise regularisation) is not part of DiffEdit and not supported")
        check_inverse_scheduler(self.scheduler, self.inverse_scheduler)

        # 2. Define call parameters
        batch_size = batch_size_of(prompt, prompt_embeds)
        check_generator(generator, batch_size)  # nothing is drawn: the posterior mean needs no generator
        device = self._execution_device
        do_guidance = guidance_scale > 1.0

        # 3. Encode the images (posterior mean) and the prompt
        latents = self.encode_images(image, batch_size)
        cond, uncond = self.encode_prompt(prompt, device, 1, do_guidance, negative_prompt, prompt_embeds, negative_prompt_embeds)

        # 4. DDIM inversion on the scheduler's grid, every level kept
        grid = ddim_grid(self.scheduler, num_inference_steps, inpaint_strength)
        with self.progress_bar(total=grid.num_steps) as bar:
            on_level = step_callback(bar, callback, callback_steps, lambda k: int(grid.timesteps[k]), lambda k: k - 1)
            levels = ddim_invert(self._unet(cross_attention_kwargs), latents, cond, grid, uncond=uncond if do_guidance else None,
                                 guidance_scale=guidance_scale, callback=on_level)  # (N + 1, B, C, h, w), clean first
        latents = levels.flip(0).transpose(0, 1).contiguous()  # (B, N + 1, C, h, w): noisiest first, clean last

        # 5. Decode every level if asked
        images = self.decode(latents.flatten(0, 1), output_type)[0] if decode_latents and output_type != "latent" else None
        self.maybe_free_model_hooks()
        if not return_dict:
            return latents, images
        return DiffEditInversionPipelineOutput(latents=latents, images=images)

    # ------------------------------------------------------------------ DiffEdit step 3: masked decoding
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        mask_image: torch.Tensor | PIL.Image.Image = None,
        image_latents: torch.Tensor | PIL.Image.Image = None,
        inpaint_strength: float | None = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
    ):
        """Masked DDIM decoding with the target prompt; outside the mask, every level is the inversion's of that level."""
        # 1. Check inputs
        check_prompt_inputs(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        check_call(output_type, callback_steps)
        check_decode_inputs(mask_image, image_latents, eta, latents, num_images_per_prompt)

        # 2. Define call parameters
        batch_size = batch_size_of(prompt, prompt_embeds)
        check_generator(generator, batch_size)  # nothing is drawn: decoding is deterministic
        device, unet = self._execution_device, self._unet(cross_attention_kwargs)

        # 3. Encode input prompt (the negative one always: it also conditions the clean-level estimate of step 4)
        cond, uncond = self.encode_prompt(prompt, device, 1, True, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                          lora_scale=(cross_attention_kwargs or {}).get("scale"), clip_skip=clip_skip)

        # 4. Set the DDIM grid and read the inverted levels; diffusers' latents lack the clean level: estimate it
        grid = ddim_grid(self.scheduler, num_inference_steps, inpaint_strength)
        levels, has_clean = to_levels(image_latents, batch_size, grid.num_steps)
        levels = levels.to(device, self.unet.dtype)
        if not has_clean:
            levels = torch.cat([clean_level_estimate(unet, levels[0], uncond, grid)[None], levels])

        # 5. Preprocess mask
        mask = prepare_mask_image(mask_image, batch_size, tuple(levels.shape[-2:]), self.vae_scale_factor)

        # 6. Denoising loop: DDIM steps with guidance, the background blended from the same level, ending on level 0
        with self.progress_bar(total=grid.num_steps) as bar:
            on_level = step_callback(bar, callback, callback_steps, lambda k: int(grid.timesteps[k + 1]),
                                     lambda k: grid.num_steps - 1 - k)  # step i lands on level N - 1 - i
            edited = masked_denoise(unet, levels, mask.to(device), cond, grid, uncond=uncond if guidance_scale > 1 else None,
                                    guidance_scale=guidance_scale, callback=on_level)  # (B, C, h, w)

        # 7. Post-processing: identical copies per prompt (decoding is deterministic), then decode
        images, nsfw = self.decode(edited.repeat_interleave(num_images_per_prompt, dim=0), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, nsfw
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=nsfw)
