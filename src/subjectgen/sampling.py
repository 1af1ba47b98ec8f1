"""The denoising loop, written out: classifier-free guidance over any diffusers scheduler."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from .models import Components
from .subjects import to_image


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """CLIP last hidden states (B, 77, D), as Stable Diffusion conditions on them."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def initial_latents(components: Components, seeds: list[int]) -> torch.Tensor:
    """One noise tensor per seed, drawn on the CPU so a seed gives the same image on any device."""
    size = components.unet.config.sample_size
    channels = components.unet.config.in_channels
    noise = [torch.randn((channels, size, size), generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise)


@dataclass
class EarlySteps:
    """The first `steps` sampling steps without the subject: on `prompts` (the subject phrase replaced by its
    class noun) and inside `base_weights()` (the subject's weights off). The base model lays out the scene
    that the prompt asks for, then the subject is drawn into it; A1111's prompt editing
    `[a dog:a sks dog:0.2]` with the LoRA switched on at the same step."""

    steps: int
    prompts: list[str]
    base_weights: Callable[[], AbstractContextManager] = nullcontext


def _guided_steps(components: Components, scheduler, timesteps, latents: torch.Tensor, cond: torch.Tensor,
                  uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    unet = components.unet  # looked up per phase: a base_weights() context may have swapped it
    context = torch.cat([uncond, cond]).to(unet.dtype)
    for t in timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        noise_uncond, noise_cond = unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
        noise = noise_uncond + guidance * (noise_cond - noise_uncond)
        latents = scheduler.step(noise, t, latents).prev_sample
    return latents


@torch.no_grad()
def denoise(components: Components, cond: torch.Tensor, uncond: torch.Tensor, latents: torch.Tensor,
            steps: int, guidance: float,
            early: tuple[int, torch.Tensor, torch.Tensor, Callable[[], AbstractContextManager]] | None = None
            ) -> torch.Tensor:
    """Run the scheduler from noise to clean latents with classifier-free guidance. `early` = (n, cond, uncond,
    base_weights): the first n steps use that conditioning inside base_weights()."""
    scheduler = type(components.scheduler).from_config(components.scheduler.config)
    scheduler.set_timesteps(steps)
    latents = latents.to(components.unet.device, components.unet.dtype) * scheduler.init_noise_sigma
    n = 0
    if early:
        n, cond_early, uncond_early, base_weights = early
        with base_weights():
            latents = _guided_steps(components, scheduler, scheduler.timesteps[:n], latents, cond_early,
                                    uncond_early, guidance)
    return _guided_steps(components, scheduler, scheduler.timesteps[n:], latents, cond, uncond, guidance)


@torch.no_grad()
def decode(components: Components, latents: torch.Tensor) -> list[Image.Image]:
    vae = components.vae
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return [to_image(p) for p in pixels]


@torch.no_grad()
def generate(components: Components, prompts: list[str], seeds: list[int], steps: int = 25,
             guidance: float = 7.5, negative_prompt: str = "", batch_size: int = 8,
             early: EarlySteps | None = None) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order; `early`: begin without the subject (EarlySteps)."""
    if len(prompts) != len(seeds) or (early and len(early.prompts) != len(prompts)):
        raise ValueError("generate() needs one seed (and one early prompt, if any) per prompt")
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        cond = encode_prompts(components.tokenizer, components.text_encoder, chunk)
        uncond = encode_prompts(components.tokenizer, components.text_encoder, [negative_prompt] * len(chunk))
        phase = None
        if early and early.steps:
            with early.base_weights():  # a trained text encoder is the subject's too
                cond_early = encode_prompts(components.tokenizer, components.text_encoder,
                                            early.prompts[start:start + batch_size])
                uncond_early = encode_prompts(components.tokenizer, components.text_encoder,
                                              [negative_prompt] * len(chunk))
            phase = (early.steps, cond_early, uncond_early, early.base_weights)
        latents = denoise(components, cond, uncond, initial_latents(components, seeds[start:start + len(chunk)]),
                          steps, guidance, phase)
        images += decode(components, latents)
    return images


def make_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile images into one picture, `columns` wide (default: a near-square grid)."""
    if not images:
        raise ValueError("make_grid() needs at least one image")
    columns = columns or max(1, int(len(images) ** 0.5 + 0.999))
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image.resize((w, h)), ((i % columns) * w, (i // columns) * h))
    return grid
