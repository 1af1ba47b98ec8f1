"""FLUX.2 [klein]: a flow-matching transformer conditioned on an LLM. The Qwen3 text encoder reads each prompt in
its chat template (no thinking) and three of its hidden layers (9, 18, 27), stacked per token, are the text; the
VAE's 32-channel latents are patchified 2x2 into 128 channels and normalised by the VAE's own batch-norm statistics,
then each latent pixel is one token, with (t, h, w, l) position ids (text: (0, 0, 0, l)). Training is FLUX.1's flow
matching (x_t = (1 - σ) x0 + σ ε, target ε - x0); sampling uses the pipeline's empirical shift. The base model
samples with real classifier-free guidance; a step-distilled one (`is_distilled` in model_index.json) takes one call
a step. Reference photos join the image tokens at later time ids (the pipeline's `image=[...]`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
from diffusers.utils import convert_unet_state_dict_to_peft
from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

from ..errors import UserError
from ..photos import fit
from ..subjects import to_tensor
from .base import Components, Conditioning, load_as_stored
from .flux import Flux

TEXT_LAYERS = (9, 18, 27)   # the Qwen3 hidden states the pipeline stacks (its text_encoder_out_layers default)
MAX_TEXT_TOKENS = 512       # the pipeline's max_sequence_length default
REFERENCE_TIME_STEP = 10    # reference image i sits at time id 10 * (i + 1) (the pipeline's _prepare_image_ids)


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) VAE latents -> (B, 4C, H/2, W/2): each 2x2 patch's values as channels (channel-major)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """The inverse of patchify."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return patches.reshape(b, c // 4, h * 2, w * 2)


def tokens(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C): each latent pixel one token, row-major."""
    return latents.flatten(2).transpose(1, 2)


def position_ids(time: int, height: int, width: int) -> torch.Tensor:
    """(height*width, 4) ids (time, row, column, 0) of an image's tokens, row-major."""
    return torch.cartesian_prod(torch.tensor([time]), torch.arange(height), torch.arange(width), torch.arange(1))


def text_ids(length: int) -> torch.Tensor:
    """(length, 4) ids (0, 0, 0, position) of the text tokens."""
    zero = torch.arange(1)
    return torch.cartesian_prod(zero, zero, zero, torch.arange(length))


@dataclass(frozen=True)
class Flux2Klein(Flux):
    name: str = "flux2"
    title: str = "FLUX.2 [klein]"
    pipeline_classes: tuple[str, ...] = ("Flux2KleinPipeline",)
    components: tuple[str, ...] = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    # diffusers' klein script's default: the double blocks' image attention, the single blocks' fused projections
    # (their `to_out` is named per block: the double blocks' `to_out` is a ModuleList; see lora_target_modules)
    lora_targets: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj")
    refusals: dict[str, str] = field(default_factory=lambda: {
        "Flux2Pipeline": "FLUX.2 [dev] (a Mistral-conditioned model; subjectgen trains FLUX.2 [klein])",
        "Flux2KleinInpaintPipeline": "a FLUX.2 [klein] inpainting pipeline"})
    default_guidance: float = 4.0  # Flux2KleinPipeline's default (real CFG on the base model; distilled ignores it)
    max_references: int = 4        # BFL's limit for [klein] (4B and 9B) in multi-reference generation

    def load_parts(self, path: Path, use_safetensors: bool | None, index: dict) -> dict[str, Any]:
        st = use_safetensors
        return {
            "tokenizer": Qwen2TokenizerFast.from_pretrained(path / "tokenizer"),
            "text_encoder": Qwen3ForCausalLM.from_pretrained(path / "text_encoder", use_safetensors=st),
            "vae": load_as_stored(AutoencoderKLFlux2, path / "vae", st),
            "transformer": load_as_stored(Flux2Transformer2DModel, path / "transformer", st),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler"),
            "is_distilled": bool(index.get("is_distilled", False)),  # step-distilled: no classifier-free guidance
        }

    def check_parts(self, parts: dict[str, Any], where: str) -> None:
        vae, transformer, text = parts["vae"], parts["transformer"], parts["text_encoder"].config
        if transformer.config.in_channels != 4 * vae.config.latent_channels:
            raise UserError(f"{where}: its transformer takes {transformer.config.in_channels} input channels, not "
                            f"the {4 * vae.config.latent_channels} of its VAE's patchified latents; is it complete?")
        if text.num_hidden_layers < max(TEXT_LAYERS):
            raise UserError(f"{where}: its text encoder has {text.num_hidden_layers} layers; FLUX.2 [klein] reads "
                            f"hidden layers {', '.join(map(str, TEXT_LAYERS))}")
        if transformer.config.joint_attention_dim != len(TEXT_LAYERS) * text.hidden_size:
            raise UserError(f"{where}: its transformer takes {transformer.config.joint_attention_dim}-wide text, not "
                            f"{len(TEXT_LAYERS)} x its text encoder's {text.hidden_size}; is it a FLUX.2 [klein]?")

    def pipeline(self, c: Components) -> Flux2KleinPipeline:
        return Flux2KleinPipeline(scheduler=c.scheduler, vae=c.vae, text_encoder=c.text_encoder,
                                  tokenizer=c.tokenizer, transformer=c.transformer, is_distilled=c.is_distilled)

    def text_encoders_to_train(self) -> tuple[str, ...]:
        return ()  # diffusers' klein LoRA has the transformer only (Flux2LoraLoaderMixin loads nothing else)

    def latent_shape(self, c: Components) -> tuple[int, int, int]:
        size = self.resolution(c) // c.vae_scale // 2
        return (c.transformer.config.in_channels, size, size)

    def default_steps(self, c: Components) -> int:
        """The step-distilled model's 4; the base model's by resolution (50 at its size, the pipeline's default)."""
        return 4 if c.is_distilled else super().default_steps(c)

    # --- text ---------------------------------------------------------------------------------------------
    def encode_text(self, c: Components, prompts: list[str], text_encoders: list | None = None) -> Conditioning:
        encoder = (text_encoders or c.text_encoders)[0]
        chats = [c.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True, enable_thinking=False) for p in prompts]
        inputs = c.tokenizer(chats, return_tensors="pt", padding="max_length", truncation=True,
                             max_length=min(MAX_TEXT_TOKENS, c.tokenizer.model_max_length))
        model = getattr(encoder, "model", encoder)  # the decoder stack alone: the LM head's logits are never used
        out = model(input_ids=inputs.input_ids.to(encoder.device), attention_mask=inputs.attention_mask.to(
            encoder.device), output_hidden_states=True, use_cache=False)
        states = torch.stack([out.hidden_states[k] for k in TEXT_LAYERS], dim=2)  # (B, L, layers, D)
        return {"encoder_hidden_states": states.flatten(2)}

    def reference_conditioning(self, c: Components, images: list) -> Conditioning:
        """Each photo's latents as the pipeline encodes references (the VAE's mode, patchified and normalised),
        as tokens at time ids 10, 20, ... after the image's; a photo is cut to a multiple of 16 px. (The pipeline
        also shrinks photos over 1 MP; ours come at the model's resolution.)"""
        step = 2 * c.vae_scale
        latents = []
        for image in images:
            size = (image.width // step * step, image.height // step * step)
            pixels = to_tensor(image if size == image.size else fit(image, size))[None]
            latents.append(self.posterior(c, pixels)[0])
        ids = torch.cat([position_ids(REFERENCE_TIME_STEP * (i + 1), *z.shape[-2:]) for i, z in enumerate(latents)])
        return {"reference_tokens": torch.cat([tokens(z) for z in latents], dim=1), "reference_ids": ids[None]}

    # --- the denoiser ---------------------------------------------------------------------------------
    def call(self, net, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The transformer on x's tokens, followed by the reference images' tokens where there are any (their
        outputs dropped)."""
        b, channels, h, w = x.shape
        text = cond["encoder_hidden_states"]
        hidden, ids = tokens(x), position_ids(0, h, w)
        if "reference_tokens" in cond:
            hidden = torch.cat([hidden, cond["reference_tokens"].to(x.dtype)], dim=1)
            ids = torch.cat([ids, cond["reference_ids"][0].to(ids.dtype)])
        out = net(hidden_states=hidden, timestep=t.to(x.dtype).expand(b) / 1000, guidance=None,
                  encoder_hidden_states=text, txt_ids=text_ids(text.shape[1]).to(x.device),
                  img_ids=ids.to(x.device), return_dict=False)[0]
        return out[:, : h * w].transpose(1, 2).reshape(b, channels, h, w)

    def guided_denoiser(self, c: Components, net, cond: Conditioning, uncond: Conditioning, guidance: float,
                        context):
        """Classifier-free guidance on the base model (as the pipeline: when guidance > 1); one call a step on a
        step-distilled model."""
        if guidance > 1 and not c.is_distilled:
            from ..sampling import cfg_denoiser

            return cfg_denoiser(net, cond, uncond, guidance, context, self.call)
        inputs = {k: v.to(net.device, net.dtype) for k, v in cond.items()}

        def denoise(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            with context():
                return self.call(net, x, t, inputs)

        return denoise

    def sampling_scheduler(self, c: Components, steps: int):
        """Flux2KleinPipeline's schedule: sigmas from 1 to 1/steps, shifted by its empirical mu of the image's
        token count and the step count."""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(c.scheduler.config)
        size = self.latent_shape(c)[-1]
        mu = compute_empirical_mu(image_seq_len=size * size, num_steps=steps)
        if scheduler.config.get("use_flow_sigmas", False):
            scheduler.set_timesteps(steps, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return scheduler

    # --- latents ----------------------------------------------------------------------------------------
    def batch_norm(self, c: Components) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent statistics per patchified channel: (mean, std), shaped (1, 4C, 1, 1)."""
        bn = c.vae.bn
        std = torch.sqrt(bn.running_var + c.vae.config.batch_norm_eps)
        return bn.running_mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def posterior(self, c: Components, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior already as the denoiser sees latents: patchified and normalised (an affine map of a
        Gaussian is a Gaussian), so latent_scaling is the identity."""
        mean, std = super().posterior(c, pixels)
        bn_mean, bn_std = (s.to(mean.device, mean.dtype) for s in self.batch_norm(c))
        return (patchify(mean) - bn_mean) / bn_std, patchify(std) / bn_std

    def latent_scaling(self, c: Components) -> tuple[float, float]:
        return 1.0, 0.0

    def decode(self, c: Components, latents: torch.Tensor) -> torch.Tensor:
        bn_mean, bn_std = (s.to(latents.device, latents.dtype) for s in self.batch_norm(c))
        return c.vae.decode(unpatchify(latents * bn_std + bn_mean).to(c.vae.dtype)).sample

    # --- what a method saves ------------------------------------------------------------------------------
    def lora_target_modules(self, c: Components, component: str) -> list[str]:
        blocks = len(c.transformer.single_transformer_blocks)
        return [*self.lora_targets, *(f"single_transformer_blocks.{i}.attn.to_out" for i in range(blocks))]

    def export_lora(self, layers: dict[str, dict], alpha: float, run_dir: Path) -> list[str]:
        return []  # FLUX.1's ComfyUI layout is not FLUX.2's (its own BFL names); the diffusers file only

    def save_lora(self, run_dir: Path, layers: dict[str, dict], metadata: dict[str, dict]) -> None:
        """In peft's key names (lora_A/lora_B) throughout, as diffusers' klein script saves: diffusers' loader
        converts the older names ('to_q.lora.down') only when the file's first key has them, and the single blocks'
        names sort first, so a mixed file would load without the double blocks' layers."""
        Flux2KleinPipeline.save_lora_weights(run_dir, transformer_lora_layers=convert_unet_state_dict_to_peft(
                                                 layers["transformer"]),
                                             transformer_lora_adapter_metadata=metadata["transformer"],
                                             safe_serialization=True)
