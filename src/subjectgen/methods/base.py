"""The interface every method implements; the one training loop calls only this."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import TrainConfig
from ..models import Components, freeze
from ..subjects import SubjectSet


class Method:
    """A personalization method: which modules train, which prompts teach the subject, what is saved."""

    name = "method"

    def __init__(self, cfg: TrainConfig, components: Components, subject: SubjectSet):
        self.cfg, self.components, self.subject = cfg, components, subject
        freeze(components.unet, components.text_encoder, components.vae)
        self.token = self.choose_token()
        self.setup()

    # --- what a method states -------------------------------------------------------------------
    def choose_token(self) -> str:
        raise NotImplementedError

    def setup(self) -> None:
        """Make the trainable parameters (LoRA layers, new embeddings, unfrozen weights)."""

    @property
    def subject_phrase(self) -> str:
        """What `{subject}` in a prompt becomes: 'sks dog', '<s*> dog'."""
        return f"{self.token} {self.subject.class_noun}"

    def instance_prompts(self) -> list[str]:
        return [self.cfg.instance_prompt.format(token=self.token, **{"class": self.subject.class_noun})]

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The modules holding trainable parameters, by component name ('unet', 'text_encoder')."""
        modules = {"unet": self.components.unet}
        if self.cfg.train_text_encoder:
            modules["text_encoder"] = self.components.text_encoder
        return modules

    def save(self, run_dir: Path) -> list[str]:
        """Write the final weights in the ecosystem's formats; return the file names written."""
        raise NotImplementedError

    def manifest(self) -> dict:
        return {"token": self.token, "subject": self.subject_phrase}

    def after_step(self) -> None:
        """Called after each optimizer step (a method that must restore something does it here)."""

    def prompt_for_model(self, prompt: str) -> str:
        """A prompt as the tokenizer must see it (TI expands a multi-vector placeholder)."""
        return prompt

    # --- shared by all methods ------------------------------------------------------------------
    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {f"{name}.{pname}": p for name, module in self.trainable_modules().items()
                for pname, p in module.named_parameters() if p.requires_grad}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.named_trainable().values())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.named_trainable().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        params = self.named_trainable()
        missing = set(params) - set(tensors)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(tensors[key])
