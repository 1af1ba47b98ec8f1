"""FLUX.1 (dev, schnell): a flow-matching transformer. CLIP-L's pooled embedding and T5's hidden states condition
it; latents (16 channels, shifted and scaled) are packed 2x2 into tokens with image and text position ids;
training noises x_t = (1 - σ) x0 + σ ε and regresses the velocity ε - x0; guidance-distilled checkpoints (dev)
take the guidance scale as an embedding instead of classifier-free guidance (`guidance_embeds` in the
transformer's config), schnell takes none."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from ..errors import UserError
from .base import Backbone, Components, Conditioning, load_as_stored

TRAIN_GUIDANCE = 3.5  # the guidance embedding's value at training (diffusers' FLUX script's --guidance_scale)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2x2 patch one token, as FluxPipeline packs."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of pack, to (B, C, height, width) latents."""
    b, _, channels = tokens.shape
    patches = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int) -> torch.Tensor:
    """Each token's (0, row, column) position id, for a latent of height x width (in latent pixels)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3)


def shift_mu(config, image_tokens: int) -> float:
    """The resolution-dependent shift of the sampling schedule (FluxPipeline's calculate_shift)."""
    base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    low, high = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (high - low) / (top - base)
    return image_tokens * slope + low - slope * base


def timestep_density(count: int, generator: torch.Generator, cfg=None) -> torch.Tensor:
    """`count` draws u in [0, 1] of the training timestep (its index over the schedule, σ falling from 1 to 0), by
    cfg's --weighting-scheme as diffusers' compute_density_for_timestep_sampling: logit_normal, the sigmoid of a
    normal (--logit-mean, --logit-std); mode, a uniform u mapped to 1 - u - s (cos²(πu/2) - 1 + u) (--mode-scale s,
    the SD3 paper's eq. 20); otherwise uniform (cfg None: uniform)."""
    scheme = cfg.weighting_scheme if cfg is not None else "none"
    if scheme == "logit_normal":
        return torch.sigmoid(torch.normal(cfg.logit_mean, cfg.logit_std, (count,), generator=generator))
    u = torch.rand(count, generator=generator)
    if scheme == "mode":
        return 1 - u - cfg.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


# The schemes that draw uniformly and weight the loss by σ instead (diffusers' compute_loss_weighting_for_sd3)
LOSS_WEIGHTINGS = {"sigma_sqrt": lambda sigma: sigma ** -2.0,
                   "cosmap": lambda sigma: 2 / (math.pi * (1 - 2 * sigma + 2 * sigma ** 2))}


# ComfyUI's FLUX.1 LoRA layout names the original (BFL) model's modules. Per block kind: its BFL name, diffusers'
# module in a block -> the BFL one, and the fused modules with their parts in the order of their output rows
# (diffusers' own converter reads the same table: lora_conversion_utils._convert_sd_scripts_to_ai_toolkit)
COMFY_LAYOUT = {
    "transformer_blocks": ("double_blocks", {
        "attn.to_out.0": "img_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
        "norm1.linear": "img_mod.lin", "attn.to_add_out": "txt_attn.proj", "ff_context.net.0.proj": "txt_mlp.0",
        "ff_context.net.2": "txt_mlp.2", "norm1_context.linear": "txt_mod.lin"}, {
        "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}),
    "single_transformer_blocks": ("single_blocks", {"proj_out": "linear2", "norm.linear": "modulation.lin"}, {
        "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}),
}
MLP_RATIO = 4  # a single block's proj_mlp width over its attention's (FluxSingleTransformerBlock's mlp_ratio)
COMFY_FILE = "comfyui_lora.safetensors"


def comfy_transformer_lora(pairs: dict[str, dict[str, torch.Tensor]], alpha: float) -> dict[str, torch.Tensor]:
    """The transformer's LoRA ({module: {'lora_down', 'lora_up'}}, diffusers' module names) in ComfyUI's layout:
    `diffusion_model.<BFL module>.lora_down.weight / .lora_up.weight / .alpha`, ComfyUI adding up @ down x alpha /
    rank. A fused module (q, k, v in one qkv) gets its parts' downs stacked and their ups block-diagonal, with the
    alpha that keeps each part's alpha / rank: the same update, exactly."""
    out, fused = {}, {}
    for module, pair in pairs.items():
        blocks, index, inner = (module.split(".", 2) + ["", ""])[:3]
        bfl, plain, groups = COMFY_LAYOUT.get(blocks, ("", {}, {}))
        group = next((name for name, parts in groups.items() if inner in parts), None)
        if group is not None:
            fused.setdefault((blocks, index, group), {})[inner] = pair
        elif inner in plain:
            out.update(comfy_entry(f"{bfl}.{index}.{plain[inner]}", pair["lora_down"], pair["lora_up"], alpha))
        else:
            raise ValueError(f"no ComfyUI name for FLUX.1 module {module}")
    for (blocks, index, group), parts in fused.items():
        bfl, _, groups = COMFY_LAYOUT[blocks]
        down, up, count = fuse(groups[group], parts)
        out.update(comfy_entry(f"{bfl}.{index}.{group}", down, up, alpha * count))
    return out


def fuse(order: tuple[str, ...], parts: dict[str, dict]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(down, up, parts present) of one LoRA on a fused module from its parts' LoRAs: the downs stacked, the ups on
    the block diagonal, a part without a LoRA (a single block's proj_mlp) zero rows of its width."""
    inner = next(p["lora_up"].shape[0] // (MLP_RATIO if n == "proj_mlp" else 1) for n, p in parts.items())
    sizes = [MLP_RATIO * inner if name == "proj_mlp" else inner for name in order]
    present = [name for name in order if name in parts]
    down = torch.cat([parts[name]["lora_down"].float() for name in present])
    up = torch.zeros(sum(sizes), len(down))
    row, column = 0, 0
    for name, size in zip(order, sizes):
        if name in parts:
            rank = parts[name]["lora_down"].shape[0]
            up[row: row + size, column: column + rank] = parts[name]["lora_up"].float()
            column += rank
        row += size
    return down, up, len(present)


def comfy_entry(name: str, down: torch.Tensor, up: torch.Tensor, alpha: float,
                prefix: str = "diffusion_model.") -> dict[str, torch.Tensor]:
    return {f"{prefix}{name}.lora_down.weight": down.float(), f"{prefix}{name}.lora_up.weight": up.float(),
            f"{prefix}{name}.alpha": torch.tensor(float(alpha))}


@dataclass(frozen=True)
class Flux(Backbone):
    name: str = "flux"
    title: str = "FLUX.1"
    pipeline_classes: tuple[str, ...] = ("FluxPipeline",)
    components: tuple[str, ...] = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae",
                                   "transformer", "scheduler")
    text_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    tokenizers: tuple[str, ...] = ("tokenizer", "tokenizer_2")
    trainable_text_encoders: tuple[str, ...] = ("text_encoder",)  # CLIP-L, as diffusers' script; never T5
    denoiser: str = "transformer"
    lora_targets: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj",
                                     "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                                     "ff_context.net.2")
    refusals: dict[str, str] = field(default_factory=lambda: {
        "FluxFillPipeline": "FLUX.1 Fill (an inpainting model)", "FluxKontextPipeline": "FLUX.1 Kontext (an image "
        "editing model)", "FluxPriorReduxPipeline": "FLUX.1 Redux (an image-variation adapter)",
        "FluxControlPipeline": "a FLUX.1 control model"})
    flow_matching: bool = True
    default_guidance: float = 3.5  # FLUX.1-dev's guidance embedding, FluxPipeline's own default

    def load_parts(self, path: Path, use_safetensors: bool | None, index: dict) -> dict[str, Any]:
        st = use_safetensors
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(path / "tokenizer"),
            "tokenizer_2": T5TokenizerFast.from_pretrained(path / "tokenizer_2"),
            "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=st),
            "text_encoder_2": T5EncoderModel.from_pretrained(path / "text_encoder_2", use_safetensors=st),
            "vae": load_as_stored(AutoencoderKL, path / "vae", st),
            "transformer": load_as_stored(FluxTransformer2DModel, path / "transformer", st),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler"),
        }

    def check_parts(self, parts: dict[str, Any], where: str) -> None:
        channels = parts["transformer"].config.in_channels
        if channels != 4 * parts["vae"].config.latent_channels:
            raise UserError(f"{where}: its transformer takes {channels} input channels, not the packed latents "
                            "alone (a Fill or control model); subjectgen trains FLUX.1 text-to-image models only")

    def pipeline(self, c: Components) -> FluxPipeline:
        return FluxPipeline(scheduler=c.scheduler, vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer,
                            text_encoder_2=c.text_encoder_2, tokenizer_2=c.tokenizer_2, transformer=c.transformer)

    def resolution(self, c: Components) -> int:
        return c.vae.config.sample_size  # FLUX.1's VAE says 1024

    def buckets(self, c: Components) -> list[tuple[int, int]]:
        from ..photos import bucket_sizes

        return bucket_sizes(self.resolution(c), 2 * c.vae_scale)  # 2x2 packing: multiples of 16 px

    def latent_shape(self, c: Components) -> tuple[int, int, int]:
        size = self.resolution(c) // c.vae_scale
        return (c.vae.config.latent_channels, size, size)

    # --- text ---------------------------------------------------------------------------------------------
    def encode_text(self, c: Components, prompts: list[str], text_encoders: list | None = None) -> Conditioning:
        clip, t5 = text_encoders or c.text_encoders
        ids = c.tokenizer(prompts, padding="max_length", max_length=c.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
        pooled = clip(ids.to(clip.device), output_hidden_states=False).pooler_output
        ids = c.tokenizer_2(prompts, padding="max_length", max_length=c.tokenizer_2.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
        return {"encoder_hidden_states": t5(ids.to(t5.device), output_hidden_states=False)[0], "pooled": pooled}

    # --- the denoiser ---------------------------------------------------------------------------------
    def call(self, net, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, _, h, w = x.shape
        text = cond["encoder_hidden_states"]
        guidance = cond.get("guidance")
        if net.config.guidance_embeds and guidance is None:
            guidance = torch.full((b,), TRAIN_GUIDANCE, device=x.device)
        out = net(hidden_states=pack(x), timestep=t.to(x.dtype).expand(b) / 1000, guidance=guidance,
                  pooled_projections=cond["pooled"], encoder_hidden_states=text,
                  txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype),
                  img_ids=image_ids(h, w).to(x.device, x.dtype), return_dict=False)[0]
        return unpack(out, h, w)

    def guided_denoiser(self, c: Components, net, cond: Conditioning, uncond: Conditioning, guidance: float,
                        context):
        """FLUX.1 is guidance-distilled (dev: the scale is an embedding) or needs none (schnell): one call a step,
        no negative prompt."""
        def denoise(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            inputs = {k: v.to(net.device, net.dtype) for k, v in cond.items()}
            if net.config.guidance_embeds:
                inputs["guidance"] = torch.full((len(x),), guidance, device=net.device, dtype=torch.float32)
            with context():
                return self.call(net, x, t, inputs)

        return denoise

    def sampling_scheduler(self, c: Components, steps: int):
        """FluxPipeline's schedule: sigmas from 1 to 1/steps, shifted by the image's token count."""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(c.scheduler.config)
        size = self.resolution(c) // c.vae_scale
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if scheduler.config.get("use_dynamic_shifting", False):
            scheduler.set_timesteps(sigmas=sigmas, mu=shift_mu(scheduler.config, (size // 2) ** 2))
        else:
            scheduler.set_timesteps(sigmas=sigmas)
        return scheduler

    def training_scheduler(self, c: Components):
        return FlowMatchEulerDiscreteScheduler.from_config(c.scheduler.config)

    def training_sample(self, scheduler, latents: torch.Tensor, generator: torch.Generator, cfg=None):
        """Flow matching: timesteps over the (statically shifted) training schedule, drawn as cfg's
        --weighting-scheme says (uniform by default, as diffusers' FLUX script); x_t = (1 - σ) x0 + σ ε, target
        ε - x0."""
        noise = torch.randn(latents.shape, generator=generator)
        count = scheduler.config.num_train_timesteps
        u = timestep_density(len(latents), generator, cfg)
        index = (u * count).long().clamp(0, count - 1)  # u = 1 (mode's at u = 0, a sigmoid's rounding) is the last
        sigmas = scheduler.sigmas[index].view(-1, 1, 1, 1).to(latents.dtype)
        noisy = (1 - sigmas) * latents + sigmas * noise
        return noisy, scheduler.timesteps[index], noise - latents

    def loss_weights(self, scheduler, timesteps: torch.Tensor, cfg) -> torch.Tensor | None:
        """--weighting-scheme sigma_sqrt / cosmap: each sample's loss weight from its σ (= t / 1000)."""
        if cfg.weighting_scheme not in LOSS_WEIGHTINGS:
            return None
        return LOSS_WEIGHTINGS[cfg.weighting_scheme](timesteps.float() / scheduler.config.num_train_timesteps)

    def export_lora(self, layers: dict[str, dict], alpha: float, run_dir: Path) -> list[str]:
        """The LoRA also in ComfyUI's layout (comfyui_lora.safetensors): the transformer's under `diffusion_model.`
        with the original model's module names, CLIP-L's under `text_encoders.clip_l.transformer.` (ComfyUI's
        generic names; diffusers' FluxPipeline.load_lora_weights reads the file too)."""
        from ..adapters import lora_pairs
        from ..safeio import atomic_save_safetensors

        out = comfy_transformer_lora(lora_pairs(layers["transformer"]), alpha)
        for module, pair in lora_pairs(layers.get("text_encoder", {})).items():
            module = module if module.startswith("text_model.") else "text_model." + module
            out.update(comfy_entry(module, pair["lora_down"], pair["lora_up"], alpha,
                                   prefix="text_encoders.clip_l.transformer."))
        atomic_save_safetensors(run_dir / COMFY_FILE, out)
        return [COMFY_FILE]

    def save_lora(self, run_dir: Path, layers: dict[str, dict], metadata: dict[str, dict]) -> None:
        """The transformer's layers in peft's key names throughout: diffusers' loader converts the older names
        ('to_q.lora.down') only when the file's first key has them, so a file mixing both loads only in part."""
        from diffusers.utils import convert_unet_state_dict_to_peft

        FluxPipeline.save_lora_weights(
            run_dir, transformer_lora_layers=convert_unet_state_dict_to_peft(layers["transformer"]),
            text_encoder_lora_layers=layers.get("text_encoder"),
            transformer_lora_adapter_metadata=metadata["transformer"],
            text_encoder_lora_adapter_metadata=metadata.get("text_encoder"), safe_serialization=True)
