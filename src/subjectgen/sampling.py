"""The denoising loop, written out: classifier-free guidance over any diffusers scheduler."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from tqdm.auto import tqdm

from .backbones import Components, Conditioning
from .subjects import to_image


def initial_latents(components: Components, seeds: list[int]) -> torch.Tensor:
    """One noise tensor per seed, drawn on the CPU so a seed gives the same image on any device."""
    shape = components.backbone.latent_shape(components)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x, t, step index) -> the raw prediction


def cfg_denoiser(net, cond: Conditioning, uncond: Conditioning, guidance: float,
                 context: Callable[[], AbstractContextManager] = nullcontext, call=None) -> Denoiser:
    """Classifier-free guidance over any conditioning (the family's, and whatever a method adds): one batched
    call on [uncond; cond], then uncond + guidance * (cond - uncond). `call(net, x, t, inputs)`: the family's
    model call (default: keyword arguments, a UNet's); `context` wraps each call (e.g. a LoRA switched off)."""
    inputs = {k: torch.cat([uncond[k], cond[k]]).to(net.device, net.dtype) for k in cond}
    call = call or (lambda net, x, t, inputs: net(x, t, **inputs).sample)

    def denoise(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        with context():
            noise_uncond, noise_cond = call(net, torch.cat([x, x]), t, inputs).chunk(2)
        return noise_uncond + guidance * (noise_cond - noise_uncond)

    return denoise


def switch_at(n: int, first: Denoiser, then: Denoiser) -> Denoiser:
    """`first` for the steps before index n, `then` from n on (A1111's prompt editing, for any denoiser)."""
    return lambda x, t, i: first(x, t, i) if i < n else then(x, t, i)


@torch.no_grad()
def sample(denoiser: Denoiser, scheduler, latents: torch.Tensor) -> torch.Tensor:
    """The denoising loop, written out: from noise at the scheduler's first timestep to clean latents."""
    latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # flow schedules start at pure noise
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
    for i, t in enumerate(scheduler.timesteps):
        noise = denoiser(scale(latents, t), t, i)
        latents = scheduler.step(noise, t, latents).prev_sample
    return latents


@dataclass
class FusionLoop:
    """ProFusion's Fusion Sampling, the second small loop beside `sample` (DDIM). At each step, first
    `refine_steps` times the *fusion* stage: a stochastic DDIM step t -> t-1 with `fuse`'s guidance, re-noised
    back to t (the paper's closed form: one update, one noise draw); then the *refinement* step with `refine`
    (ε_u + s₁(ε_c - ε_u) + s₂(ε_ref - ε_u)) and a DDIM step with η. With refine_steps 0 and η 0 it is `sample`
    with `refine`, bit for bit."""

    refine: Denoiser
    fuse: Denoiser | None
    refine_steps: int
    eta: float

    @torch.no_grad()
    def __call__(self, scheduler, latents: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        from diffusers import DDIMScheduler

        if not isinstance(scheduler, DDIMScheduler):  # the fusion stage's closed form is DDIM's
            steps = len(scheduler.timesteps)
            scheduler = DDIMScheduler.from_config(scheduler.config)
            scheduler.set_timesteps(steps)
        generators = [torch.Generator().manual_seed(s + 7_919) for s in seeds]  # the steps' noise, per image
        latents = latents * scheduler.init_noise_sigma
        stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        for i, t in enumerate(scheduler.timesteps):
            for _ in range(self.refine_steps if self.fuse else 0):
                latents = self.fusion_stage(scheduler, latents, t, int(t) - stride, i, generators)
            noise = self.refine(scheduler.scale_model_input(latents, t), t, i)
            latents = scheduler.step(noise, t, latents, eta=self.eta, generator=generators).prev_sample
        return latents

    def fusion_stage(self, scheduler, x: torch.Tensor, t, prev: int, i: int, generators) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        alphas = scheduler.alphas_cumprod
        a_t = alphas[int(t)].to(x.device, torch.float32)
        a_prev = alphas[prev].to(x.device, torch.float32) if prev >= 0 else scheduler.final_alpha_cumprod.to(x.device)
        sigma2 = self.eta ** 2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        eps = self.fuse(scheduler.scale_model_input(x, t), t, i).float()
        z = randn_tensor(x.shape, generator=generators, device=x.device, dtype=torch.float32)
        out = x.float() - eps * sigma2 * (1 - a_t).sqrt() / (1 - a_prev) \
            + sigma2.sqrt() * z * ((1 - a_t) * (2 - 2 * a_prev - sigma2)).sqrt() / (1 - a_prev)
        return out.to(x.dtype)


def fresh_scheduler(components: Components, steps: int):
    """A new scheduler of the model's own kind, set to `steps` (state is per sampling run; the family's)."""
    return components.backbone.sampling_scheduler(components, steps)


@dataclass
class EarlySteps:
    """The first `steps` sampling steps without the subject: on `prompts` (the subject phrase replaced by its
    class noun), with the base model's networks (`denoiser`, `text_encoders`, each called inside `context`):
    the base model lays out the scene that the prompt asks for, then the subject is drawn into it.
    A1111's prompt editing `[a dog:a sks dog:0.2]` with the LoRA switched on at the same step."""

    steps: int
    prompts: list[str]
    denoiser: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    context: Callable[[], AbstractContextManager] = nullcontext


@torch.no_grad()
def decode(components: Components, latents: torch.Tensor) -> list[Image.Image]:
    return [to_image(p) for p in components.backbone.decode(components, latents)]


@torch.no_grad()
def generate(components: Components, prompts: list[str], seeds: list[int], steps: int = 25,
             guidance: float = 7.5, negative_prompt: str = "", batch_size: int = 8,
             early: EarlySteps | None = None,
             denoiser_for: Callable[[list[str]], Denoiser] | None = None,
             progress: bool = False) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order; `early`: begin without the subject (EarlySteps);
    `denoiser_for(prompts)`: a method's own denoiser for a batch of prompts (default: guidance on the text)."""
    if len(prompts) != len(seeds) or (early and len(early.prompts) != len(prompts)):
        raise ValueError("generate() needs one seed (and one early prompt, if any) per prompt")
    denoiser_for = denoiser_for or (lambda batch: prompt_denoiser(
        components, components.denoiser, components.text_encoders, batch, negative_prompt, guidance))
    images: list[Image.Image] = []
    bar = tqdm(total=len(prompts), desc="generate", unit="image", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        denoiser = denoiser_for(prompts[chunk])
        if early and early.steps:
            with early.context():  # a trained text encoder is the subject's too
                base = prompt_denoiser(components, early.denoiser, early.text_encoders, early.prompts[chunk],
                                       negative_prompt, guidance, early.context)
            denoiser = switch_at(early.steps, base, denoiser)
        net = components.denoiser
        noise = initial_latents(components, seeds[chunk]).to(net.device, net.dtype)
        scheduler = fresh_scheduler(components, steps)
        if isinstance(denoiser, FusionLoop):  # a method's own loop (it draws each step's noise from the seeds)
            if early and early.steps:
                raise ValueError("early steps need a plain denoiser, not a FusionLoop")
            latents = denoiser(scheduler, noise, seeds[chunk])
        else:
            latents = sample(denoiser, scheduler, noise)
        images += decode(components, latents)
        bar.update(len(prompts[chunk]))
    bar.close()
    return images


def prompt_denoiser(components: Components, net, text_encoders: list, prompts: list[str], negative_prompt: str,
                    guidance: float, context: Callable[[], AbstractContextManager] = nullcontext,
                    references: Conditioning | None = None) -> Denoiser:
    """Guidance between the prompts and the negative prompt, on these networks (the model's own, a run's
    trained ones, or the base model's): the family's text conditioning and its per-image conditioning at the
    model's resolution; `references` (one sample's, Backbone.reference_conditioning) on both sides."""
    family, size = components.backbone, components.resolution
    image = {**family.image_conditioning([(size, size, 0, 0)] * len(prompts), size),
             **{k: v.expand(len(prompts), *v.shape[1:]) for k, v in (references or {}).items()}}
    cond = {**family.encode_text(components, prompts, text_encoders), **image}
    uncond = {**family.negative_conditioning(components, [negative_prompt] * len(prompts), text_encoders), **image}
    return family.guided_denoiser(components, net, cond, uncond, guidance, context)


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
