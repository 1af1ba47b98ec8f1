"""DreamBooth (Ruiz et al. 2023): bind a rare identifier to the subject by fine-tuning, full or LoRA.

Prior preservation (class images from the frozen model, weighted by λ) lives in the shared loop and
loss; what is special here is which weights train and how they are saved.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from ..adapters import lora_off
from ..errors import UserError
from ..models import load_model, quiet_loading
from ..subjects import rare_token
from .base import Method

from ..backbones.sd import StableDiffusion

UNET_LORA_TARGETS = list(StableDiffusion.lora_targets)  # SD's, for benchmarks that build a LoRA'd UNet by hand


class DreamBooth(Method):
    """Full fine-tune of the denoiser (and optionally the text encoders); saves a whole diffusers pipeline of
    the model's family."""

    run_file = "pipeline/model_index.json"

    @classmethod
    def check_inputs(cls, cfg, components, subject) -> None:
        family = components.backbone
        if cfg.train_text_encoder and not family.text_encoders_to_train():
            raise UserError(f"--train-text-encoder: {family.title}'s text encoder does not train here (its "
                            "pipeline's LoRA loader takes the transformer alone); leave it out")

    def choose_token(self) -> str:
        return self.cfg.token or rare_token(self.components.tokenizer, avoid={self.subject.class_noun})

    def setup(self) -> None:
        for module in self.trainable_modules().values():
            module.requires_grad_(True)
            module.train()

    def save(self, run_dir: Path) -> list[str]:
        self.components.pipeline().save_pretrained(run_dir / "pipeline", safe_serialization=True)
        return ["pipeline/"]

    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float):
        from ..adapters import Run

        return Run(manifest, load_model(str(run_dir / "pipeline"), allow_pickle))

    @classmethod
    def base_networks(cls, run):
        """The base model's own UNet and text encoder, beside the fine-tuned ones (nothing swapped in place)."""
        base = run.base_model()
        return base.denoiser, base.text_encoders, nullcontext


class DreamBoothLoRA(DreamBooth):
    """DreamBooth with low-rank adapters (peft) on the denoiser's attention (and optionally the text encoders);
    which layers, and the files they are saved in, are the family's (its backbone)."""

    scalable = True
    run_file = "pytorch_lora_weights.safetensors"
    trains_from_caches = True  # it saves its LoRA layers only (the full fine-tune saves the whole pipeline)
    quantizable_base = True

    def lora_config(self, targets: list[str]) -> LoraConfig:
        return LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha, init_lora_weights="gaussian",
                          target_modules=targets)

    def targets(self, component: str) -> list[str]:
        return self.components.backbone.lora_target_modules(self.components, component)

    def setup(self) -> None:
        c = self.components
        c.denoiser.add_adapter(self.lora_config(self.targets(c.backbone.denoiser)))
        if self.cfg.train_text_encoder:
            # peft directly, not transformers' add_adapter: that one refuses peft releases older than the
            # transformers release expects (transformers 5.24 wants peft 0.22, which was not published yet)
            for name in c.backbone.text_encoders_to_train():
                inject_adapter_in_model(self.lora_config(self.targets(name)), c.parts[name])
        for module in self.trainable_modules().values():
            module.train()
            for p in module.parameters():  # LoRA weights train in fp32 even when the base runs in fp16
                if p.requires_grad:
                    p.data = p.data.float()

    def lora_layers(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each trained module's LoRA weights in diffusers' key format."""
        return {name: convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
                for name, module in self.trainable_modules().items()}

    def save(self, run_dir: Path) -> list[str]:
        layers, family = self.lora_layers(), self.components.backbone
        family.save_lora(run_dir, layers, {name: self.lora_config(self.targets(name)).to_dict() for name in layers})
        return ["pytorch_lora_weights.safetensors", *family.export_lora(layers, self.cfg.alpha, run_dir)]

    def manifest(self) -> dict:
        return {**super().manifest(), "rank": self.cfg.rank, "lora_alpha": self.cfg.alpha}

    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float):
        """The base model with the LoRA loaded by diffusers' own loader, weighted by `lora_scale`."""
        from ..adapters import Run

        components = load_model(manifest["model"], allow_pickle)
        pipe = components.pipeline()
        with quiet_loading():
            pipe.load_lora_weights(str(run_dir), weight_name="pytorch_lora_weights.safetensors",
                                   adapter_name="subject")
        if lora_scale != 1.0:
            pipe.set_adapters(["subject"], adapter_weights=[lora_scale])
        return Run(manifest, components)

    @classmethod
    def base_networks(cls, run):
        """The same networks, each call made with the LoRA switched off (peft's enable_adapters)."""
        c = run.components
        return c.denoiser, c.text_encoders, lambda: lora_off(c.denoiser, *c.text_encoders)
