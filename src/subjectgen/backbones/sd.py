"""Stable Diffusion 1.x/2.x: one CLIP text encoder (its last hidden states), a UNet2DConditionModel, a DDPM
schedule with an ε or v target."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import UserError
from .base import Backbone, Components, Conditioning, load_as_stored, stored_dtype


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """CLIP last hidden states (B, 77, D), as Stable Diffusion conditions on them."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def load_scheduler(path: Path, index: dict, default: str):
    scheduler_cls = getattr(diffusers, index.get("scheduler", [None, default])[1])
    return scheduler_cls.from_pretrained(path / "scheduler")


def check_unet(unet: UNet2DConditionModel, title: str, where: str) -> None:
    """A UNet this family can train: 4 input channels (an inpainting UNet takes 9)."""
    if unet.config.in_channels != 4:
        raise UserError(f"{where}: its UNet takes {unet.config.in_channels} input channels (an inpainting or "
                        f"other conditioned model); subjectgen trains text-to-image {title} models only")


def ddpm_training_sample(scheduler, latents: torch.Tensor, generator: torch.Generator):
    """Noise, uniform timesteps, x_t and the ε or v target: the DDPM families' training step."""
    from ..training.losses import training_target

    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return noisy, timesteps, training_target(scheduler, latents, noise, timesteps)


@dataclass(frozen=True)
class StableDiffusion(Backbone):
    name: str = "sd"
    title: str = "Stable Diffusion 1.x/2.x"
    pipeline_classes: tuple[str, ...] = ("StableDiffusionPipeline",)
    components: tuple[str, ...] = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
    kohya_prefixes: dict[str, str] = field(default_factory=lambda: {"unet": "lora_unet", "text_encoder": "lora_te"})
    refusals: dict[str, str] = field(default_factory=lambda: {
        "StableDiffusionInpaintPipeline": "an inpainting model (9-channel UNet)",
        "StableDiffusionUpscalePipeline": "an upscaler", "StableDiffusionImg2ImgPipeline": "an image-to-image model",
        "StableDiffusionDepth2ImgPipeline": "a depth-to-image model"})
    single_file_base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"

    def load_parts(self, path: Path, use_safetensors: bool | None, index: dict) -> dict[str, Any]:
        st = use_safetensors
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(path / "tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=st),
            "vae": load_as_stored(AutoencoderKL, path / "vae", st),
            "unet": load_as_stored(UNet2DConditionModel, path / "unet", st),
            "scheduler": load_scheduler(path, index, "DDIMScheduler"),
        }

    def check_parts(self, parts: dict[str, Any], where: str) -> None:
        check_unet(parts["unet"], self.title, where)

    def from_single_file(self, path: Path, config: Path | None):
        return StableDiffusionPipeline.from_single_file(
            str(path), config=str(config) if config else None, torch_dtype=stored_dtype(path), safety_checker=None,
            requires_safety_checker=False)

    def pipeline(self, c: Components) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def encode_text(self, c: Components, prompts: list[str], text_encoders: list | None = None) -> Conditioning:
        encoder = (text_encoders or c.text_encoders)[0]
        return {"encoder_hidden_states": encode_prompts(c.tokenizer, encoder, prompts)}

    def call(self, net, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return net(x, t, **cond).sample

    def training_scheduler(self, c: Components):
        return DDPMScheduler.from_config(c.scheduler.config)

    def training_sample(self, scheduler, latents: torch.Tensor, generator: torch.Generator, cfg=None):
        return ddpm_training_sample(scheduler, latents, generator)

    def save_lora(self, run_dir: Path, layers: dict[str, dict], metadata: dict[str, dict]) -> None:
        StableDiffusionPipeline.save_lora_weights(
            run_dir, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers.get("text_encoder"),
            unet_lora_adapter_metadata=metadata["unet"],
            text_encoder_lora_adapter_metadata=metadata.get("text_encoder"), safe_serialization=True)
