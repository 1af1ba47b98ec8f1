"""Stable Diffusion XL: two CLIP text encoders (each one's penultimate hidden states, concatenated; the second
one's pooled projection), a UNet with SDXL's added conditioning (the pooled text and six time ids: original
size, crop top-left, target size), the same DDPM schedule as SD."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import UserError
from .base import Components, Conditioning, load_as_stored, stored_dtype
from .sd import StableDiffusion, check_unet, load_scheduler


def penultimate_states(tokenizer, text_encoder, prompts: list[str]):
    """(penultimate hidden states (B, 77, D), the encoder's first output: pooled or projected (B, D'))."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    out = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    return out.hidden_states[-2], out[0]


def upcast_vae(c: Components) -> None:
    """SDXL's VAE overflows in fp16 (its config says force_upcast, as diffusers' pipeline reads it): it encodes
    and decodes in fp32 whatever the mixed precision; it is small beside the UNet."""
    if c.vae.dtype == torch.float16 and c.vae.config.get("force_upcast", False):
        c.vae.to(torch.float32)


@dataclass(frozen=True)
class StableDiffusionXL(StableDiffusion):
    name: str = "sdxl"
    title: str = "Stable Diffusion XL"
    pipeline_classes: tuple[str, ...] = ("StableDiffusionXLPipeline",)
    components: tuple[str, ...] = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "unet",
                                   "scheduler")
    text_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    tokenizers: tuple[str, ...] = ("tokenizer", "tokenizer_2")
    kohya_prefixes: dict[str, str] = field(default_factory=lambda: {
        "unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"})
    refusals: dict[str, str] = field(default_factory=lambda: {
        "StableDiffusionXLImg2ImgPipeline": "the SDXL refiner (an image-to-image model)",
        "StableDiffusionXLInpaintPipeline": "an SDXL inpainting model (9-channel UNet)"})
    single_file_base: str = "stabilityai/stable-diffusion-xl-base-1.0"

    def load_parts(self, path: Path, use_safetensors: bool | None, index: dict) -> dict[str, Any]:
        st = use_safetensors
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(path / "tokenizer"),
            "tokenizer_2": CLIPTokenizer.from_pretrained(path / "tokenizer_2"),
            "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=st),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", use_safetensors=st),
            "vae": load_as_stored(AutoencoderKL, path / "vae", st),
            "unet": load_as_stored(UNet2DConditionModel, path / "unet", st),
            "scheduler": load_scheduler(path, index, "EulerDiscreteScheduler"),
            # diffusers' SDXL default: an empty negative prompt is zeros, not the encoded ""
            "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
        }

    def check_parts(self, parts: dict[str, Any], where: str) -> None:
        check_unet(parts["unet"], self.title, where)
        if parts["unet"].config.addition_embed_type != "text_time":
            raise UserError(f"{where}: its UNet has no SDXL time conditioning; is it a complete SDXL base model?")

    def from_single_file(self, path: Path, config: Path | None):
        return StableDiffusionXLPipeline.from_single_file(str(path), config=str(config) if config else None,
                                                          torch_dtype=stored_dtype(path))

    def parts_from_pipeline(self, pipe) -> dict[str, Any]:
        return {**super().parts_from_pipeline(pipe),
                "force_zeros_for_empty_prompt": bool(pipe.config.get("force_zeros_for_empty_prompt", True))}

    def pipeline(self, c: Components) -> StableDiffusionXLPipeline:
        return StableDiffusionXLPipeline(
            vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2, tokenizer=c.tokenizer,
            tokenizer_2=c.tokenizer_2, unet=c.unet, scheduler=c.scheduler,
            force_zeros_for_empty_prompt=c.force_zeros_for_empty_prompt)

    def encode_text(self, c: Components, prompts: list[str], text_encoders: list | None = None) -> Conditioning:
        hidden = []
        for tokenizer, encoder in zip(c.tokenizers, text_encoders or c.text_encoders):
            states, pooled = penultimate_states(tokenizer, encoder, prompts)
            hidden.append(states)
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}

    def negative_conditioning(self, c: Components, prompts: list[str],
                              text_encoders: list | None = None) -> Conditioning:
        cond = self.encode_text(c, prompts, text_encoders)
        if c.force_zeros_for_empty_prompt and not any(prompts):
            return {k: torch.zeros_like(v) for k, v in cond.items()}
        return cond

    def image_conditioning(self, sizes: list[tuple[int, int, int, int]], resolution: int) -> Conditioning:
        """SDXL's six time ids per image: original (height, width), crop (top, left), target (height, width)."""
        return {"time_ids": torch.tensor([[h, w, top, left, resolution, resolution] for h, w, top, left in sizes],
                                         dtype=torch.float32)}

    def call(self, net, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        return net(x, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=added).sample

    def posterior(self, c: Components, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        upcast_vae(c)
        return super().posterior(c, pixels)

    def decode(self, c: Components, latents: torch.Tensor) -> torch.Tensor:
        upcast_vae(c)
        return super().decode(c, latents)

    def save_lora(self, run_dir: Path, layers: dict[str, dict], metadata: dict[str, dict]) -> None:
        StableDiffusionXLPipeline.save_lora_weights(
            run_dir, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers.get("text_encoder"),
            text_encoder_2_lora_layers=layers.get("text_encoder_2"), unet_lora_adapter_metadata=metadata["unet"],
            text_encoder_lora_adapter_metadata=metadata.get("text_encoder"),
            text_encoder_2_lora_adapter_metadata=metadata.get("text_encoder_2"), safe_serialization=True)

    def embedding_names(self) -> dict[str, str]:
        return {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
