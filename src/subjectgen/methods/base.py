"""The interface every method implements; the one training loop, run loading and the sampler call only this.

A method owns its family: which parameters train (`setup`, `trainable_modules`), what a batch is (`batch`),
the UNet's inputs for a step (`predict`), the loss (`loss`), which text embeddings may be cached
(`cached_prompts`), what is saved (`save`), how its run folder loads (`load_run`) and what its base
networks are at generation (`base_networks`, for --subject-start). The defaults are DreamBooth's shape;
a method overrides what is special about it. kohya's NetworkTrainer hooks are the model.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import TrainConfig
from ..training.losses import diffusion_loss
from ..models import Components, freeze
from ..subjects import SubjectSet


@dataclass
class Batch:
    """One training step's samples: [instance; class] latents, their prompts, how many are instances, and the
    instance samples' latent masks (with a masked loss)."""

    latents: torch.Tensor
    prompts: list[str]
    n_instance: int
    masks: torch.Tensor | None = None
    inputs: dict = field(default_factory=dict)  # whatever else a method's `predict` needs (ProFusion's reference)
    conditioning: dict = field(default_factory=dict)  # the family's per-sample conditioning (SDXL's time ids)


class Method:
    """A personalization method: which modules train, which prompts teach the subject, what is saved."""

    spec = None          # its MethodSpec, set by the registry
    scalable = False     # whether --lora-scale weights its update
    run_file = None      # a file every finished run of the method holds (a run folder without it is not its run)
    sample_options = None  # a dataclass of the method's own generation settings (ProFusion's Fusion Sampling)
    # its steps and `save` read only the cached latents and prompts and its trainable modules: the loop may free
    # the frozen VAE and text encoders once their caches are made (when nothing samples images during the run)
    trains_from_caches = False
    quantizable_base = False  # it trains on a frozen base, which --base-quantization may quantize (LoRA)

    def __init__(self, cfg: TrainConfig, components: Components, subject: SubjectSet | None, data=None):
        self.cfg, self.components, self.subject, self.data = cfg, components, subject, data
        freeze(*components.networks)
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

    def caption_prompt(self, caption: str | None) -> str | None:
        """A photo's caption with the subject phrase where it says {subject}, as the tokenizer must see it."""
        return None if caption is None else self.prompt_for_model(caption.replace("{subject}", self.subject_phrase))

    def instance_prompts(self) -> list[str]:
        return [self.cfg.instance_prompt.format(token=self.token, **{"class": self.subject.class_noun})]

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The modules holding trainable parameters, by component name ('unet', 'text_encoder', ...): the
        denoiser, and with --train-text-encoder every text encoder of the family."""
        c = self.components
        modules = {c.backbone.denoiser: c.denoiser}
        if self.cfg.train_text_encoder:
            modules.update({name: c.parts[name] for name in c.backbone.text_encoders_to_train()})
        return modules

    def save(self, run_dir: Path) -> list[str]:
        """Write the final weights in the ecosystem's formats; return the file names written."""
        raise NotImplementedError

    def manifest(self) -> dict:
        return {"token": self.token, "subject": self.subject_phrase}

    def asset_records(self) -> list[dict]:
        """The pretrained things this run used besides its base model (assets.record each), for the manifest."""
        return []

    def after_step(self) -> None:
        """Called after each optimizer step (a method that must restore something does it here)."""

    def prompt_for_model(self, prompt: str) -> str:
        """A prompt as the tokenizer must see it (TI expands a multi-vector placeholder)."""
        return self.prompt_for_run(self.manifest(), prompt)

    # --- the training step's hooks (the loop calls these) ----------------------------------------------
    @classmethod
    def check_inputs(cls, cfg: TrainConfig, components: Components, subject: SubjectSet | None) -> None:
        """A one-line UserError for a bad input of this method's own (a flag naming a missing file), raised before
        the run folder appears."""

    @classmethod
    def data_source(cls, trainer):
        """What the steps draw from, built before the method is set up. Default: the subject's photos and class
        images (training.data.SubjectData); a method trained on a dataset returns its own source, which its
        `batch` turns into a Batch."""
        return trainer.subject_data()

    @functools.cached_property
    def model_prompts(self) -> list[str]:
        """The instance prompts as the tokenizer sees them, expanded once (not every step)."""
        return [self.prompt_for_model(p) for p in self.instance_prompts()]

    def cached_prompts(self, class_prompt: str) -> list[str] | None:
        """The prompts whose text embeddings the loop may compute once; None: encode every step (the text
        encoder trains, or the conditioning depends on the step)."""
        if set(self.trainable_modules()) & set(self.components.backbone.text_encoders):
            return None
        captions = [self.caption_prompt(c) for c in (self.subject.captions or [])] if self.subject else []
        return list(dict.fromkeys(self.model_prompts + [c for c in captions if c] + [class_prompt]))

    def batch(self, data, generator: torch.Generator, batch_size: int) -> Batch:
        """Instance samples with prompts drawn from instance_prompts(); then class samples, if any."""
        drawn = data.instance.draw(batch_size, generator)
        latents, conditioning = drawn.latents, drawn.conditioning
        prompts = self.model_prompts
        chosen = [prompts[i] for i in torch.randint(len(prompts), (batch_size,), generator=generator).tolist()]
        if self.subject is not None and self.subject.captions:  # a photo's NAME.txt: its own prompt
            chosen = [self.caption_prompt(self.subject.captions[i]) or prompt
                      for i, prompt in zip(drawn.images, chosen)]
        if data.classes is not None:
            classes = data.classes.draw(batch_size, generator, bucket=drawn.bucket)
            latents = torch.cat([latents, classes.latents])
            conditioning = {k: torch.cat([v, classes.conditioning[k]]) for k, v in conditioning.items()}
            chosen += [data.class_prompt] * batch_size
        return Batch(latents, chosen, batch_size, drawn.masks, conditioning=conditioning)

    def predict(self, net, noisy: torch.Tensor, timesteps: torch.Tensor, batch: Batch,
                encode: Callable[[list[str]], dict]) -> torch.Tensor:
        """The denoiser's prediction for a step: conditioned on the batch's prompts (and the family's per-sample
        conditioning), through the family's model call."""
        device = noisy.device
        cond = {k: v.to(device) for k, v in {**encode(batch.prompts), **batch.conditioning}.items()}
        return self.components.backbone.call(net, noisy, timesteps.to(device), cond)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, batch: Batch,
             scheduler) -> tuple[torch.Tensor, dict]:
        """The denoising loss with the prior-preservation split, min-SNR or the family's per-timestep weights, and a
        mask (losses.diffusion_loss)."""
        return diffusion_loss(pred, target, timesteps, getattr(scheduler, "alphas_cumprod", None),
                              scheduler.config.get("prediction_type", "flow"),
                              batch.n_instance, self.cfg.prior_weight, self.cfg.snr_gamma, batch.masks,
                              self.components.backbone.loss_weights(scheduler, timesteps, self.cfg))

    def validation_denoiser_for(self, guidance: float):
        """For the loop's validation grids: a denoiser for a batch of prompts from the training state, or None for
        plain guidance on the prompts (right for every method whose subject lives in the weights)."""
        return None

    # --- a finished run (class methods: no training state) ---------------------------------------------
    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float):
        """The run's base model with the method's weights applied (adapters.Run)."""
        raise NotImplementedError

    @classmethod
    def base_networks(cls, run) -> tuple[torch.nn.Module, list[torch.nn.Module],
                                         Callable[[], AbstractContextManager]]:
        """(denoiser, text encoders, context) that sample as the base model would, for --subject-start. By
        default the run's own networks (a method that changes no weights, such as Textual Inversion)."""
        return run.components.denoiser, run.components.text_encoders, nullcontext

    @classmethod
    def denoiser(cls, run, prompts: list[str], negative_prompt: str, guidance: float):
        """The denoiser that samples this run's images (sampling.Denoiser): by default classifier-free
        guidance on the prompts' text embeddings. A method with other UNet inputs (image embeddings, a
        per-step S*) returns its own."""
        from ..sampling import prompt_denoiser

        c = run.components
        return prompt_denoiser(c, c.denoiser, c.text_encoders, prompts, negative_prompt, guidance,
                               references=run.reference_conditioning())

    @classmethod
    def prompt_for_run(cls, manifest: dict, prompt: str) -> str:
        """A prompt (with the subject phrase in it) as the run's tokenizer must see it."""
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


class ZeroShot(Method):
    """A method that sees the subject in images (demonstrations, reference photos), not in a learned word: no
    identifier, and `{subject}` is the class noun ('a dog on the beach')."""

    def choose_token(self) -> str:
        return ""

    @property
    def subject_phrase(self) -> str:
        return self.subject.class_noun
