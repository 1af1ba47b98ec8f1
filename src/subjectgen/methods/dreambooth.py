"""DreamBooth (Ruiz et al. 2023): bind a rare identifier to the subject by fine-tuning, full or LoRA.

Prior preservation (class images from the frozen model, weighted by λ) lives in the shared loop and
loss; what is special here is which weights train and how they are saved.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from ..adapters import export_kohya_lora, lora_off
from ..models import load_model, quiet_loading
from ..subjects import rare_token
from .base import Method

UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class DreamBooth(Method):
    """Full fine-tune of the UNet (and optionally the text encoder); saves a whole diffusers pipeline."""

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
        return base.unet, base.text_encoder, nullcontext


class DreamBoothLoRA(DreamBooth):
    """DreamBooth with low-rank adapters (peft) on the UNet attention (and optionally the text encoder)."""

    scalable = True

    def lora_config(self, targets: list[str]) -> LoraConfig:
        return LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha, init_lora_weights="gaussian",
                          target_modules=targets)

    def setup(self) -> None:
        self.components.unet.add_adapter(self.lora_config(UNET_LORA_TARGETS))
        if self.cfg.train_text_encoder:
            # peft directly, not transformers' add_adapter: that one refuses peft releases older than the
            # transformers release expects (transformers 5.24 wants peft 0.22, which was not published yet)
            inject_adapter_in_model(self.lora_config(TEXT_LORA_TARGETS), self.components.text_encoder)
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
        layers = self.lora_layers()
        StableDiffusionPipeline.save_lora_weights(
            run_dir, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers.get("text_encoder"),
            unet_lora_adapter_metadata=self.lora_config(UNET_LORA_TARGETS).to_dict(),
            text_encoder_lora_adapter_metadata=(self.lora_config(TEXT_LORA_TARGETS).to_dict()
                                                if "text_encoder" in layers else None),
            safe_serialization=True,
        )
        export_kohya_lora(layers, self.cfg.alpha, run_dir / "kohya_lora.safetensors")
        return ["pytorch_lora_weights.safetensors", "kohya_lora.safetensors"]

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
        return c.unet, c.text_encoder, lambda: lora_off(c.unet, c.text_encoder)
