"""SuTI's apprentice (Chen et al. 2023, "Subject-driven Text-to-Image Generation via Apprenticeship Learning") in
IP-Adapter Plus's architecture and file format (methods/ip_adapter.py).

Two methods share this module, both through the one training loop:
- `apprentice-train` (`subjectgen apprentice train FARM`): the adapter learns from (demonstrations, prompt,
  target) triples: a farm's expert images that passed the ΔCLIP filter (methods/farm.py), the base UNet frozen,
  text / image / both dropped now and then for guidance. `objective="reconstruction"` is IP-Adapter's own way
  (the target is a demonstration itself, the conditioning views of it): the ablation of what apprenticeship buys.
- `apprentice` (`subjectgen train apprentice`): zero-shot. The subject's 3-5 photos are encoded once and the run
  folder written; no step trains. Generation conditions on the photos' tokens, concatenated.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import assets
from ..adapters import Run
from ..config import ApprenticeSettings
from ..errors import UserError
from . import registry
from ..safeio import atomic_save_image, atomic_save_safetensors
from . import ip_adapter as ipa
from .base import Batch, ZeroShot

MIN_DEMOS, MAX_DEMOS = 3, registry.get("apprentice").photos_used
DEMOS = "demos"                      # the demonstrations as PNGs, for plain diffusers' ip_adapter_image
STATES = "demo_states.safetensors"   # their image-encoder states (and a zero image's: the negative)
DROP = 0.05                          # IP-Adapter's: drop the text, the image, or both, each this often


# --- the demonstrations -----------------------------------------------------------------------------------------
def image_processor(encoder):
    """The preprocessing diffusers' pipeline gives an IP-Adapter image encoder (load_ip_adapter's default)."""
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)


@torch.no_grad()
def demo_states(encoder, images: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate hidden states (n, L, width) of the images and of zero images, as the pipeline encodes an
    IP-Adapter Plus's images and its negative (encode_image with output_hidden_states)."""
    pixels = image_processor(encoder)(images, return_tensors="pt").pixel_values.to(encoder.device, encoder.dtype)
    states = encoder(pixels, output_hidden_states=True).hidden_states[-2]
    zero = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    return states.float().cpu(), zero.float().cpu()


def apprentice_folder(ref: str, components=None) -> Path:
    """The apprentice `ref` names (a folder from 'subjectgen apprentice train', or builtin), checked."""
    folder = Path(assets.resolve("apprentice", ref))
    if not (folder / ipa.WEIGHTS).is_file() or encoder_dir(folder) is None:
        raise UserError(f"--apprentice {ref}: no apprentice there ({ipa.WEIGHTS} and {ipa.IMAGE_ENCODER}/); train "
                        "one with 'subjectgen apprentice train'")
    if components is not None:
        ipa.check_fits(ipa.load_state(folder / ipa.WEIGHTS), components.unet)
    return folder


def encoder_dir(folder: Path) -> Path | None:
    """An apprentice's image encoder: its image_encoder/ (IP-Adapter's layout), or, for the shipped one, the
    built-in image encoder its record names (kept once in the package, not twice)."""
    if (folder / ipa.IMAGE_ENCODER).is_dir():
        return folder / ipa.IMAGE_ENCODER
    record = folder / "training.json"
    if record.is_file():
        ref = json.loads(record.read_text()).get("image_encoder")
        if ref in assets.builtin_names("image_encoder"):
            return Path(assets.resolve("image_encoder", ref))
    return None


def install(unet, state: dict) -> None:
    from ..models import quiet_loading

    with quiet_loading():
        ipa.install(unet, state)


def image_embeds(states: torch.Tensor, device, dtype) -> dict:
    """The UNet's added_cond_kwargs for a batch of demonstration sets (B, n, L, width)."""
    return {"image_embeds": [states.to(device, dtype)]}


# --- zero-shot: a subject's run -----------------------------------------------------------------------------------
@dataclass
class DemoSet:
    images: list
    names: list[str]
    states: torch.Tensor   # (n, L, width)
    zero: torch.Tensor     # (n, L, width), the zero images'
    folder: Path           # the apprentice
    encoder: object        # its image encoder


class Apprentice(ZeroShot):
    """A new subject from 3-5 photos in context: the photos are encoded, nothing trains."""

    sample_options = ApprenticeSettings
    run_file = STATES

    @classmethod
    def check_inputs(cls, cfg, components, subject) -> None:
        if len(subject.paths) < MIN_DEMOS:
            raise UserError(f"the apprentice needs at least {MIN_DEMOS} photos of the subject ({cfg.subject_dir} "
                            f"has {len(subject.paths)}); add photos, or use a method that learns from fewer")
        apprentice_folder(cfg.apprentice, components)

    @classmethod
    def data_source(cls, trainer) -> DemoSet:
        from ..vision import load_image_encoder

        folder = apprentice_folder(trainer.cfg.apprentice)
        encoder = load_image_encoder(str(encoder_dir(folder)), trainer.accelerator.device)
        subject = trainer.subject
        images, names = subject.images[:MAX_DEMOS], [p.name for p in subject.paths[:MAX_DEMOS]]
        if trainer.progress:
            print(f"apprentice: demonstrations {', '.join(names)}", flush=True)
        return DemoSet(images, names, *demo_states(encoder, images), folder, encoder)

    def setup(self) -> None:
        install(self.components.unet, ipa.load_state(self.data.folder / ipa.WEIGHTS))

    def cached_prompts(self, class_prompt: str) -> list[str] | None:
        return None  # no step runs

    def save(self, run_dir: Path) -> list[str]:
        ipa.save(run_dir, ipa.installed_state(self.components.unet), self.data.encoder)
        names = [f"{DEMOS}/{i:02d}.png" for i in range(len(self.data.images))]
        for name, image in zip(names, self.data.images):
            atomic_save_image(run_dir / name, image)
        atomic_save_safetensors(run_dir / STATES, {"states": self.data.states.contiguous(),
                                                   "zero": self.data.zero.contiguous()})
        return [ipa.WEIGHTS, STATES, *names]

    def manifest(self) -> dict:
        return {"token": "", "subject": self.subject_phrase, "demos": self.data.names}

    def asset_records(self) -> list[dict]:
        return [assets.record("apprentice", self.cfg.apprentice)]

    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float):
        from safetensors.torch import load_file

        from ..models import load_model

        components = load_model(manifest["model"], allow_pickle)
        install(components.unet, ipa.load_state(run_dir / ipa.WEIGHTS))
        demos = load_file(str(run_dir / STATES))
        return ApprenticeRun(manifest, components, states=demos["states"], zero=demos["zero"])

    @classmethod
    def base_networks(cls, run):
        base = run.base_model()  # the UNet without the adapter, beside the run's (nothing swapped in place)
        return base.unet, [base.text_encoder], nullcontext

    @classmethod
    def denoiser(cls, run, prompts: list[str], negative_prompt: str, guidance: float):
        """Guidance between (prompt, the demonstrations) and (negative prompt, zero images): the pipeline's."""
        from ..backbones.sd import encode_prompts

        c, n = run.components, len(prompts)
        unet = c.unet
        ipa.set_scale(unet, ApprenticeSettings(**run.options).ip_scale)
        text = torch.cat([encode_prompts(c.tokenizer, c.text_encoder, [negative_prompt] * n),
                          encode_prompts(c.tokenizer, c.text_encoder, prompts)]).to(unet.dtype)
        states = torch.cat([run.zero[None].expand(n, -1, -1, -1), run.states[None].expand(n, -1, -1, -1)])
        added = image_embeds(states, unet.device, unet.dtype)

        def denoise(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            eps = unet(torch.cat([x, x]), t, encoder_hidden_states=text, added_cond_kwargs=added).sample
            uncond, cond = eps.chunk(2)
            return uncond + guidance * (cond - uncond)

        return denoise


@dataclass
class ApprenticeRun(Run):
    states: torch.Tensor | None = None   # the demonstrations' (n, L, width)
    zero: torch.Tensor | None = None


# --- training the apprentice on a farm ---------------------------------------------------------------------------
@dataclass
class Triples:
    """What apprentice training draws from: target latents, each with its prompt and its demonstrations' states."""

    latents: object                  # training.data.LatentCache over the targets
    prompts: list[str]
    demos_of: list[int]              # target -> its demonstration set
    demo_sets: list[torch.Tensor]    # each (n_views, L, width), fp16
    zero: torch.Tensor               # (L, width): a zero image's states, the dropped image
    record: dict                     # what the manifest says about the data
    encoder: object = None           # the image encoder the states come from (saved beside the adapter)

    def draw(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """`count` triples, each with the same number (3-5, drawn) of demonstrations, picked from its set."""
        index = torch.randint(len(self.prompts), (count,), generator=generator)
        n = int(torch.randint(MIN_DEMOS, MAX_DEMOS + 1, (1,), generator=generator))
        states = []
        for i in index.tolist():
            demos = self.demo_sets[self.demos_of[i]]
            pick = torch.randint(len(demos), (n,), generator=generator) if len(demos) < n else \
                torch.randperm(len(demos), generator=generator)[:n]
            states.append(demos[pick].float())
        return self.latents.sample(index, generator), [self.prompts[i] for i in index.tolist()], torch.stack(states)


class ApprenticeTraining(Apprentice):
    """The adapter from scratch (IP-Adapter Plus's shape), trained on a farm's kept triples; the UNet frozen."""

    run_file = None  # not a subject's run: its load_run says what it is

    @classmethod
    def check_inputs(cls, cfg, components, subject) -> None:
        from .farm import read_farm

        read_farm(Path(cfg.images), need_filter=cfg.objective == "apprenticeship")

    @classmethod
    def data_source(cls, trainer) -> Triples:
        from ..vision import load_image_encoder
        from .farm import triples

        cfg = trainer.cfg
        encoder = load_image_encoder(cfg.image_encoder, trainer.accelerator.device)
        data = triples(Path(cfg.images), cfg.objective, trainer.components, encoder, cfg.seed, trainer.progress)
        data.encoder = encoder
        return data

    def setup(self) -> None:
        width = self.data.zero.shape[-1]
        install(self.components.unet, ipa.new_state(self.components.unet, width, self.cfg.num_tokens,
                                                    seed=self.cfg.seed, values=self.cfg.ip_values))

    def cached_prompts(self, class_prompt: str) -> list[str] | None:
        return sorted(set(self.data.prompts)) + [""]

    def batch(self, data: Triples, generator: torch.Generator, batch_size: int) -> Batch:
        latents, prompts, states = data.draw(batch_size, generator)
        roll = torch.rand(batch_size, generator=generator)
        drop_text = (roll < DROP) | (roll >= 1 - DROP)           # text only, or both
        drop_image = (roll >= DROP) & (roll < 2 * DROP) | (roll >= 1 - DROP)
        prompts = ["" if d else p for p, d in zip(prompts, drop_text.tolist())]
        states = torch.where(drop_image.view(-1, 1, 1, 1), data.zero.float().expand_as(states), states)
        return Batch(latents, prompts, batch_size, inputs={"image_states": states})

    def predict(self, unet, noisy, timesteps, batch: Batch, encode) -> torch.Tensor:
        device = noisy.device
        added = image_embeds(batch.inputs["image_states"], device, unet.dtype)
        text = encode(batch.prompts)["encoder_hidden_states"].to(device)
        return unet(noisy, timesteps.to(device), encoder_hidden_states=text,
                    added_cond_kwargs=added).sample

    def save(self, run_dir: Path) -> list[str]:
        ipa.save(run_dir, ipa.installed_state(self.components.unet), self.data.encoder)
        return [ipa.WEIGHTS]

    def manifest(self) -> dict:
        return {"token": "", "subject": "", **self.data.record, "num_tokens": self.cfg.num_tokens}

    def asset_records(self) -> list[dict]:
        return [assets.record("image_encoder", self.cfg.image_encoder)]

    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float):
        raise UserError(f"{run_dir} is an apprentice, not a subject's run; use it with 'subjectgen train apprentice "
                        f"--apprentice {run_dir}'")

