"""The Backbone contract: everything that differs between model families, in one object per family.

The training loop, the sampler, run loading and the family-independent methods (DreamBooth, LoRA, Textual
Inversion) ask the backbone; they never name a network class or a pipeline class. A family is one module in
this package and one `register` call (registry.py); kohya puts the same hooks on its trainer's subclasses
(`get_noise_pred_and_target`, a tokenize strategy), diffusers writes one script per family.

Conditioning is a dict of batch-first tensors (`encoder_hidden_states`; SDXL adds `text_embeds` and
`time_ids`), so guidance concatenates and splits it key by key without knowing the family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

Conditioning = dict[str, torch.Tensor]


def stored_dtype(path: Path) -> torch.dtype:
    """The dtype a component folder's or a single file's weights are stored in (the safetensors header; fp32 for a
    pickle), to load a diffusers network as stored: diffusers' own default converts every weight to fp32."""
    from safetensors import safe_open

    path = Path(path)
    for file in [path] if path.suffix == ".safetensors" else sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                dtype = f.get_slice(key).get_dtype()
                if dtype in SAFETENSORS_FLOATS:
                    return SAFETENSORS_FLOATS[dtype]
    return torch.float32


SAFETENSORS_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_as_stored(cls, folder: Path, use_safetensors: bool | None):
    """A diffusers network (a UNet, a transformer, a VAE) in the dtype its weights are stored in."""
    return cls.from_pretrained(folder, use_safetensors=use_safetensors, torch_dtype=stored_dtype(folder))


@dataclass
class Components:
    """A loaded model: its family's backbone, its parts by their diffusers component names, its reference.
    `components.unet`, `.text_encoder`, `.tokenizer`, `.vae`, `.scheduler` (and `.text_encoder_2` on SDXL)
    read the parts; code that must serve every family goes through `backbone`."""

    backbone: "Backbone"
    parts: dict[str, Any]
    ref: str

    def __getattr__(self, name: str):
        parts = self.__dict__.get("parts") or {}
        if name in parts:
            return parts[name]
        raise AttributeError(f"a {self.__dict__.get('backbone').title if 'backbone' in self.__dict__ else ''} "
                             f"model has no component '{name}'")

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network that denoises latents (a UNet, or a transformer in the flow-matching families)."""
        return self.parts[self.backbone.denoiser]

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.parts[name] for name in self.backbone.text_encoders]

    @property
    def tokenizers(self) -> list:
        return [self.parts[name] for name in self.backbone.tokenizers]

    @property
    def networks(self) -> list[torch.nn.Module]:
        """Every network (text encoders, the VAE, the denoiser), the ones training and generation place."""
        return [*self.text_encoders, self.vae, self.denoiser]

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The image size the denoiser was trained for."""
        return self.backbone.resolution(self)

    def to(self, device: str | torch.device) -> "Components":
        """Move the networks (generation's device; training places them itself)."""
        for module in self.networks:
            module.to(device)
        return self

    def pipeline(self):
        """A plain diffusers pipeline of the family over these same modules (shared, not copied)."""
        return self.backbone.pipeline(self)


@dataclass(frozen=True)
class Backbone:
    """One model family. Subclasses fill in the hooks; the fields say what the family is made of."""

    name: str                                    # the family's short name: 'sd', 'sdxl'
    title: str                                   # for messages: 'Stable Diffusion 1.x/2.x'
    pipeline_classes: tuple[str, ...]            # model_index.json `_class_name`s this family loads
    components: tuple[str, ...]                  # the folders of a model in diffusers layout
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    denoiser: str = "unet"
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    text_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    kohya_prefixes: dict[str, str] = field(default_factory=dict)  # component -> kohya's key prefix
    refusals: dict[str, str] = field(default_factory=dict)        # a look-alike class -> why it is refused
    trainable_text_encoders: tuple[str, ...] = ()  # what --train-text-encoder trains (default: every encoder)
    flow_matching: bool = False                    # a velocity target on a flow schedule (no ᾱ, no min-SNR)
    default_guidance: float = 7.5                  # `generate`'s guidance scale when none is given
    max_references: int = 0                        # reference photos its pipeline conditions on (0: it takes none)
    single_file_base: str = ""                     # the hub model whose configs diffusers reads for a single file

    def text_encoders_to_train(self) -> tuple[str, ...]:
        return self.trainable_text_encoders or self.text_encoders

    # --- loading ------------------------------------------------------------------------------------
    def load_parts(self, path: Path, use_safetensors: bool | None, index: dict) -> dict[str, Any]:
        """The parts of a model folder, each network in the dtype it is stored in (stored_dtype); the loader
        decides what is upcast (models.py)."""
        raise NotImplementedError

    def from_single_file(self, path: Path, config: Path | None):
        """A diffusers pipeline of this family converted from a single-file checkpoint, in its stored dtype.
        config: a diffusers folder with the pipeline's configs (its weights are not read); None: diffusers fetches
        the configs of the base model it recognises from the hub (or its cache)."""
        raise NotImplementedError

    def parts_from_pipeline(self, pipe) -> dict[str, Any]:
        return {name: getattr(pipe, name) for name in self.components}

    def check_parts(self, parts: dict[str, Any], where: str) -> None:
        """A one-line UserError when the loaded networks are a variant this family cannot train (e.g. an
        inpainting UNet)."""

    def pipeline(self, c: Components):
        raise NotImplementedError

    def resolution(self, c: Components) -> int:
        return c.denoiser.config.sample_size * c.vae_scale

    def default_steps(self, c: Components) -> int:
        """Sampler steps when none are given (by resolution: 50 for SD-size models, 25 for the small ones)."""
        from ..config import default_sample_steps

        return default_sample_steps(self.resolution(c))

    def buckets(self, c: Components) -> list[tuple[int, int]]:
        """Aspect-ratio buckets of the model's pixel budget, in multiples of what the denoiser can take: the VAE's
        factor times the UNet's downsamplings (64 px on SD, 32 on SDXL)."""
        from ..photos import bucket_sizes

        step = c.vae_scale * 2 ** (len(c.denoiser.config.block_out_channels) - 1)
        return bucket_sizes(self.resolution(c), step)

    # --- text -----------------------------------------------------------------------------------------
    def encode_text(self, c: Components, prompts: list[str], text_encoders: list | None = None) -> Conditioning:
        """Every text encoder's contribution for these prompts, as one conditioning value.
        `text_encoders`: stand-ins for the model's own (a trained copy, the base's at --subject-start)."""
        raise NotImplementedError

    def negative_conditioning(self, c: Components, prompts: list[str],
                              text_encoders: list | None = None) -> Conditioning:
        """The unconditional side of guidance (the negative prompts)."""
        return self.encode_text(c, prompts, text_encoders)

    def image_conditioning(self, sizes: list[tuple[int, int, int, int]], resolution: int) -> Conditioning:
        """Per-image conditioning from each image's (original height, width, crop top, crop left), beside the
        text's: SDXL's time ids. None for most families."""
        return {}

    def check_references(self, what: str) -> None:
        """A one-line UserError when this family's pipeline takes no reference images (`what`: the flag or method
        that asked for them)."""
        if not self.max_references:
            from . import FAMILIES

            takers = " or ".join(b.title for b in FAMILIES.values() if b.max_references)
            raise UserError(f"{what}: {self.title} takes no reference images; use a {takers} model")

    def reference_conditioning(self, c: Components, images: list) -> Conditioning:
        """The conditioning reference photos (PIL images) add to every denoiser call, for one sample: the same on
        the prompt's side of guidance and the negative's (FLUX.2's reference tokens)."""
        raise NotImplementedError

    # --- the denoiser ---------------------------------------------------------------------------------
    def call(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's raw prediction (ε, v or flow velocity) for noisy latents x at timesteps t."""
        raise NotImplementedError

    def training_scheduler(self, c: Components):
        """The noise schedule training draws from (a fresh copy of the model's)."""
        raise NotImplementedError

    def sampling_scheduler(self, c: Components, steps: int):
        """A new scheduler of the model's own kind, set to `steps` (its state is per sampling run)."""
        scheduler = type(c.scheduler).from_config(c.scheduler.config)
        scheduler.set_timesteps(steps)
        return scheduler

    def guided_denoiser(self, c: Components, net, cond: Conditioning, uncond: Conditioning, guidance: float,
                        context):
        """The sampling step's prediction from the prompts' and the negative prompts' conditioning: classifier-
        free guidance (a guidance-distilled family takes the scale as an input instead)."""
        from ..sampling import cfg_denoiser

        return cfg_denoiser(net, cond, uncond, guidance, context, self.call)

    def training_sample(self, scheduler, latents: torch.Tensor, generator: torch.Generator, cfg=None):
        """(noisy latents, timesteps, target) for one step: the family's noise schedule and prediction target.
        cfg: the run's TrainConfig, for a family whose timestep sampling has settings (flow matching's
        --weighting-scheme); None: its defaults."""
        raise NotImplementedError

    def loss_weights(self, scheduler, timesteps: torch.Tensor, cfg) -> torch.Tensor | None:
        """Each sample's loss weight from its timestep, where the family's settings ask for one (None: equal)."""
        return None

    # --- latents ----------------------------------------------------------------------------------------
    def latent_shape(self, c: Components) -> tuple[int, int, int]:
        size = c.denoiser.config.sample_size
        return (c.denoiser.config.in_channels, size, size)

    def posterior(self, c: Components, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior (mean, std) of images in [-1, 1], unscaled."""
        dist = c.vae.encode(pixels.to(c.vae.device, c.vae.dtype)).latent_dist
        return dist.mean, dist.std

    def latent_scaling(self, c: Components) -> tuple[float, float]:
        """(scale, shift): the denoiser sees (z - shift) * scale."""
        return c.vae.config.scaling_factor, c.vae.config.get("shift_factor") or 0.0

    def decode(self, c: Components, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the denoiser sees them -> pixels in [-1, 1]."""
        scale, shift = self.latent_scaling(c)
        z = latents.to(c.vae.dtype) / scale
        return c.vae.decode(z + shift if shift else z).sample

    # --- what a method saves ------------------------------------------------------------------------------
    def lora_target_modules(self, c: Components, component: str) -> list[str]:
        """The module names LoRA adapts in a component (peft's target_modules): the family's lists by default; a
        family whose names depend on the model's size builds them here."""
        return list(self.lora_targets if component == self.denoiser else self.text_lora_targets)

    def save_lora(self, run_dir: Path, layers: dict[str, dict], metadata: dict[str, dict]) -> None:
        """Write LoRA layers (by component) in diffusers' file for this family's pipeline."""
        raise NotImplementedError

    def export_lora(self, layers: dict[str, dict], alpha: float, run_dir: Path) -> list[str]:
        """The LoRA also in the community's format, where the family has one here (kohya's keys, which A1111 and
        ComfyUI read, for SD and SDXL); the file names written."""
        if not self.kohya_prefixes:
            return []
        from ..adapters import export_kohya_lora

        export_kohya_lora(layers, alpha, run_dir / "kohya_lora.safetensors", self.kohya_prefixes)
        return ["kohya_lora.safetensors"]

    def embedding_names(self) -> dict[str, str]:
        """Text encoder -> the key of its vectors in A1111's/ComfyUI's embedding file (SD's 'emb_params';
        SDXL's 'clip_l' and 'clip_g')."""
        return {self.text_encoders[0]: "emb_params"}
