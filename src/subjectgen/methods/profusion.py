"""ProFusion (Zhou et al. 2023, "Enhancing Detail Preservation for Customized Text-to-Image Generation: A
Regularization-Free Approach"): a PromptNet maps one reference photo to the word S*; a brief tune of PromptNet and
the UNet's attention q/k/v; Fusion Sampling at generation. No regularization of S* anywhere.

Two methods share this module: `profusion` (the per-subject tune; `--steps 0` is the encoder alone) and
`profusion-pretrain` (PromptNet trained on a dataset of images, `subjectgen profusion pretrain`). Both run in the
one training loop; a step draws views of reference images (their latents and image-encoder states), computes
S* = PromptNet(z_ref, t, states, x_t), splices it into the prompt at the placeholder and takes the plain ε-MSE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import assets
from ..config import FusionSettings
from ..errors import UserError
from ..safeio import atomic_save_image, atomic_save_safetensors, check_safetensors, read_json
from ..backbones.sd import encode_prompts
from ..sampling import FusionLoop
from ..subjects import to_image, to_tensor
from ..training.data import LatentCache
from ..adapters import Run
from .base import Batch, Method
from .promptnet import PromptNet
from .textual_inversion import add_new_words, placeholder_tokens

ATTENTION_WEIGHTS = "unet_attention.safetensors"
REFERENCE = "reference.png"
VIEWS = 32  # augmented views of the one photo a tune draws from
# Fusion Sampling on the small built-in models, where it differs from the reference notebook's (config.FusionSettings):
# chosen on the validation subjects by benchmarks/profusion.py's rule.
SMALL_MODEL_FUSION: dict = {}
# The timesteps whose S* are averaged into the Textual Inversion file (which has one S*, not one per step).
TI_TIMESTEPS = (100, 300, 500, 700, 900)


# --- S* in the prompt -------------------------------------------------------------------------------------------
class VectorSlots(nn.Module):
    """The text encoder's token embedding, where the placeholder tokens take per-sample vectors (B, N, D) set by
    SplicedText for one call; every other row is the base table's."""

    def __init__(self, base: nn.Embedding, first_id: int, count: int):
        super().__init__()
        self.base, self.first_id, self.count = base, first_id, count
        self.vectors: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids.clamp(max=self.first_id - 1))
        if self.vectors is None:
            return out
        slot = ids - self.first_id
        hit = (slot >= 0) & (slot < self.count)
        index = slot.clamp(0, self.count - 1).unsqueeze(-1).expand(-1, -1, out.shape[-1])
        picked = torch.gather(self.vectors.to(out.dtype), 1, index)
        return torch.where(hit.unsqueeze(-1), picked, out)


class SplicedText:
    """Encodes prompts in which the placeholder ('<s*>', with N vectors '<s*> <s*>_1 ...') stands for S*."""

    def __init__(self, tokenizer, text_encoder, token: str, num_vectors: int):
        self.tokenizer, self.text_encoder, self.token = tokenizer, text_encoder, token
        self.tokens = placeholder_tokens(token, num_vectors)
        if isinstance(text_encoder.get_input_embeddings(), VectorSlots):  # spliced before: its words are ours
            tokenizer.add_tokens(self.tokens)
        else:
            add_new_words(tokenizer, self.tokens, token)
        self.first_id = tokenizer.convert_tokens_to_ids(self.tokens[0])
        if not isinstance(text_encoder.get_input_embeddings(), VectorSlots):
            text_encoder.set_input_embeddings(VectorSlots(text_encoder.get_input_embeddings(), self.first_id,
                                                          num_vectors))
        self.slots = text_encoder.get_input_embeddings()

    def expand(self, prompt: str) -> str:
        return prompt.replace(self.token, " ".join(self.tokens))

    def __call__(self, prompts: list[str], vectors: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Last hidden states (B, 77, D); `scale` multiplies the states at S*'s positions (the fusion stage's
        weaker S*, as the reference scales them)."""
        ids = self.tokenizer([self.expand(p) for p in prompts], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        ids = ids.to(self.text_encoder.device)
        self.slots.vectors = vectors
        try:
            hidden = self.text_encoder(ids)[0]
        finally:
            self.slots.vectors = None
        if scale != 1.0:
            hidden = torch.where((ids >= self.first_id).unsqueeze(-1), hidden * scale, hidden)
        return hidden


# --- what the steps draw from -----------------------------------------------------------------------------------
@dataclass
class ReferenceViews:
    """Views of reference images: their VAE posteriors and image-encoder states. A draw samples a latent, which is
    both the PromptNet's reference and the denoising target (reference = target, as in the paper)."""

    latents: LatentCache
    states: torch.Tensor            # (N, L, width), fp16
    reference: torch.Tensor | None = None   # the one photo of a tune, (1, 3, H, W) in [-1, 1]
    photo: str = ""
    prompts: list[str] | None = None  # each image's own prompt with '{token}' for S* (else the method's template)
    groups: torch.Tensor | None = None  # each image's identity (int): its reference is drawn from its own group

    def draw(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                    torch.Tensor]:
        """(target latents, reference latents, reference states, target indices). Without groups the reference is
        the target's own latent (reference = target, the paper's pretraining); with groups, another image of the
        target's group (the reference code's `ref_img` lists, less the target itself: seeing the target's clean
        latent and x_t, PromptNet could read off the noise), the target only when it is alone in its group."""
        index = torch.randint(len(self.states), (count,), generator=generator)
        target = self.latents.sample(index, generator)
        if self.groups is None:
            return target, target, self.states[index].float(), index
        reference = self.group_partners(index, generator)
        return target, self.latents.sample(reference, generator), self.states[reference].float(), index

    def group_partners(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """For each index, a uniformly drawn other member of its group (itself when it has none)."""
        if getattr(self, "_layout", (None,))[0] is not self.groups:  # once per set of groups, not every step
            order = torch.argsort(self.groups, stable=True)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order))
            sizes = torch.bincount(self.groups)
            self._layout = (self.groups, order, rank, sizes, torch.cumsum(sizes, 0) - sizes)
        _, order, rank, sizes, starts = self._layout
        group = self.groups[index]
        others = (sizes[group] - 1).clamp(min=1)
        offset = (torch.rand(len(index), generator=generator) * others).long().clamp(max=others - 1)
        own = rank[index] - starts[group]
        offset = torch.where((offset >= own) & (sizes[group] > 1), offset + 1, offset)
        return order[starts[group] + offset]


def encode_views(components, encoder, images: list, batch: int = 64, progress=None) -> ReferenceViews:
    from ..vision import image_states

    latents = LatentCache(components, images)
    states = [image_states(encoder, torch.stack([to_tensor(im) for im in images[i:i + batch]])).half().cpu()
              for i in range(0, len(images), batch)]
    return ReferenceViews(latents, torch.cat(states))


def photo_views(photo: torch.Tensor, count: int, seed: int) -> list:
    """The photo itself and count-1 augmentations: crops, shifts and scale (down to half the area) and flips,
    filled by reflecting the photo's own background (the reference code outpaints with an inpainting model)."""
    from ..augment import random_crops

    g = torch.Generator().manual_seed(seed)
    x = (photo.unsqueeze(0) + 1) / 2
    views = random_crops(x.expand(count - 1, -1, -1, -1), photo.shape[-1], (0.5, 1.0), g) * 2 - 1
    return [to_image(photo)] + [to_image(v) for v in views]


def choose_photo(subject, name: str | None) -> int:
    names = [p.name for p in subject.paths]
    if name is None:
        return 0
    if name not in names:
        raise UserError(f"--photo {name} is not in the subject folder; choose one of: {', '.join(names)}")
    return names.index(name)


# --- the per-subject tune ---------------------------------------------------------------------------------------
class ProFusion(Method):
    """One photo -> S* by the pretrained PromptNet, then PromptNet and the UNet's attention q/k/v tuned briefly."""

    sample_options = FusionSettings
    run_file = ATTENTION_WEIGHTS

    @classmethod
    def data_source(cls, trainer) -> ReferenceViews:
        from ..vision import load_image_encoder

        cfg, subject = trainer.cfg, trainer.subject
        index = choose_photo(subject, cfg.photo)
        if trainer.progress:  # the manifest records it too ("photo")
            print(f"profusion: the reference photo is {subject.paths[index].name}", flush=True)
        photo = subject.tensor()[index]
        encoder = load_image_encoder(cfg.image_encoder, trainer.accelerator.device)
        views = encode_views(trainer.components, encoder, photo_views(photo, VIEWS, cfg.seed))
        views.reference, views.photo = photo.unsqueeze(0), subject.paths[index].name
        return views

    @classmethod
    def check_inputs(cls, cfg, components, subject) -> None:
        choose_photo(subject, cfg.photo)
        promptnet_folder(cfg.promptnet, cfg.model, components)

    def choose_token(self) -> str:
        return self.cfg.token or "<s*>"

    @property
    def subject_phrase(self) -> str:
        return self.token  # S* names the whole subject: 'a photo of <s*>'

    def setup(self) -> None:
        self.promptnet = self.load_promptnet()
        self.text = SplicedText(self.components.tokenizer, self.components.text_encoder, self.token,
                                self.promptnet.config.num_vectors)
        for name, p in self.components.unet.named_parameters():
            p.requires_grad_(is_attention_qkv(name))

    def load_promptnet(self) -> PromptNet:
        folder = promptnet_folder(self.cfg.promptnet, self.cfg.model, self.components)
        return PromptNet.from_pretrained(str(folder), use_safetensors=True, torch_dtype=torch.float32).train()

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"promptnet": self.promptnet, "unet": self.components.unet}

    def instance_prompts(self) -> list[str]:
        """The reference's 'a photo of S*'; on the small built-in models 'a S*', the world captions' wording."""
        return [("a {}" if self.components.resolution < 256 else "a photo of {}").format(self.token)]

    def cached_prompts(self, class_prompt: str) -> list[str] | None:
        return None  # the conditioning holds S*, computed each step

    def batch(self, data: ReferenceViews, generator: torch.Generator, batch_size: int) -> Batch:
        latents, reference, states, index = data.draw(batch_size, generator)
        if data.prompts is not None:
            chosen = [data.prompts[i].format(token=self.token) for i in index.tolist()]
        else:
            prompts = self.instance_prompts()
            chosen = [prompts[i] for i in torch.randint(len(prompts), (batch_size,), generator=generator).tolist()]
        return Batch(latents, chosen, batch_size, inputs={"reference": reference, "image_states": states})

    def predict(self, unet, noisy, timesteps, batch: Batch, encode) -> torch.Tensor:
        device = noisy.device
        vectors = self.promptnet(batch.inputs["reference"].to(device), timesteps.to(device),
                                 batch.inputs["image_states"].to(device), noisy)
        hidden = self.text(batch.prompts, vectors)
        return unet(noisy, timesteps.to(device), encoder_hidden_states=hidden.to(unet.dtype)).sample

    def validation_denoiser_for(self, guidance: float):
        """Plain guidance with the per-step S* of the PromptNet as it is now (Fusion Sampling is for the run)."""
        if self.data.reference is None:
            return None
        run = ProFusionRun({"token": self.token}, self.components, promptnet=self.promptnet, text=self.text,
                           reference=self.data.reference, states=self.data.states[:1].float())
        return lambda prompts: run.stepwise_denoiser(prompts, "", guidance, 0.0, None)

    # --- what is saved -------------------------------------------------------------------------------------
    def save(self, run_dir: Path) -> list[str]:
        self.promptnet.save_pretrained(run_dir / "promptnet", safe_serialization=True)
        unet = {k: p.detach().float().cpu().contiguous() for k, p in self.components.unet.named_parameters()
                if is_attention_qkv(k)}
        atomic_save_safetensors(run_dir / ATTENTION_WEIGHTS, unet)
        atomic_save_image(run_dir / REFERENCE, to_image(self.data.reference[0]))
        vectors = self.average_vectors().cpu()
        atomic_save_safetensors(run_dir / "learned_embeds.safetensors", {self.token: vectors})
        return ["promptnet/diffusion_pytorch_model.safetensors", ATTENTION_WEIGHTS, REFERENCE,
                "learned_embeds.safetensors"]

    @torch.no_grad()
    def average_vectors(self) -> torch.Tensor:
        """S* for a Textual Inversion file: PromptNet's S* for the reference photo, averaged over TI_TIMESTEPS
        (x_t: the reference noised with a fixed seed)."""
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(self.components.scheduler.config)
        vae, device = self.components.vae, next(self.promptnet.parameters()).device
        z = vae.encode(self.data.reference.to(vae.device, vae.dtype)).latent_dist.mean.float() \
            * vae.config.scaling_factor
        z = z.to(device)
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).to(device)
        states = self.data.states[:1].float().to(device)
        self.promptnet.eval()
        out = [self.promptnet(z, torch.tensor([t]), states, scheduler.add_noise(z, noise, torch.tensor([t])))
               for t in TI_TIMESTEPS]
        return torch.stack(out).mean(0)[0].float()

    def manifest(self) -> dict:
        return {**super().manifest(), "placeholder_tokens": self.text.tokens, "num_vectors": len(self.text.tokens),
                "photo": self.data.photo, "class_prompt_for_fusion": self.subject.class_noun}

    def asset_records(self) -> list[dict]:
        return [assets.record("promptnet", self.cfg.promptnet), assets.record("image_encoder", self.cfg.image_encoder)]

    # --- a finished run ------------------------------------------------------------------------------------
    @classmethod
    def prompt_for_run(cls, manifest: dict, prompt: str) -> str:
        return prompt  # SplicedText expands the placeholder itself

    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float):
        from safetensors.torch import load_file

        from ..models import load_model
        from ..photos import open_photo
        from ..vision import image_states, load_image_encoder

        components = load_model(manifest["model"], allow_pickle)
        state = load_file(str(run_dir / ATTENTION_WEIGHTS))
        unexpected = components.unet.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise UserError(f"{run_dir / ATTENTION_WEIGHTS} does not fit this run's base model ({unexpected[0]})")
        promptnet = PromptNet.from_pretrained(str(run_dir / "promptnet"), use_safetensors=True,
                                             torch_dtype=torch.float32).eval()
        settings = manifest["settings"]
        encoder = load_image_encoder(settings["image_encoder"])
        reference = to_tensor(open_photo(run_dir / REFERENCE)).unsqueeze(0)
        text = SplicedText(components.tokenizer, components.text_encoder, manifest["token"],
                           manifest["num_vectors"])
        return ProFusionRun(manifest, components, promptnet=promptnet, text=text, reference=reference,
                            states=image_states(encoder, reference).float())

    @classmethod
    def base_networks(cls, run):
        raise UserError("--subject-start is not available for profusion runs (Fusion Sampling already starts from "
                        "the prompt's layout); use it with lora, dreambooth or textual-inversion runs")

    @classmethod
    def denoiser(cls, run, prompts: list[str], negative_prompt: str, guidance: float):
        """Fusion Sampling (sampling.FusionLoop) by default; with run.options fusion=False, plain guidance on the
        prompt with the per-step S*."""
        small = run.components.resolution < 256
        fusion = FusionSettings(**{**(SMALL_MODEL_FUSION if small else {}), **run.options})
        refine = run.stepwise_denoiser(prompts, negative_prompt, guidance, fusion.ref_guidance if fusion.fusion
                                       else 0.0, run.manifest["class_prompt_for_fusion"])
        if not fusion.fusion:
            return refine
        fuse = run.stepwise_denoiser(prompts, negative_prompt, fusion.refine_guidance, 0.0, None,
                                     fusion.refine_emb_scale) if fusion.refine_steps else None
        return FusionLoop(refine, fuse, fusion.refine_steps, fusion.eta)


def is_attention_qkv(name: str) -> bool:
    return ".attn" in name and any(f".{p}." in name for p in ("to_q", "to_k", "to_v"))


def promptnet_folder(ref: str, model: str, components) -> Path:
    """The PromptNet folder `ref` names, checked: it holds one, made for this base model."""
    folder = Path(assets.resolve("promptnet", ref))
    if not (folder / "config.json").is_file():
        raise UserError(f"--promptnet {ref}: no PromptNet there (config.json and weights); train one with "
                        "'subjectgen profusion pretrain'")
    check_promptnet_base(folder, ref, model, components)
    check_safetensors(folder / "diffusion_pytorch_model.safetensors", f"--promptnet {ref}: the PromptNet weights")
    return folder


def check_promptnet_base(folder: Path, ref: str, model: str, components) -> None:
    """A one-line error when the PromptNet was pretrained for another base model (its record's fingerprint), or
    does not fit this one's UNet and text encoder."""
    fix = "pretrain it again with 'subjectgen profusion pretrain'"
    config = read_json(folder / "config.json", fix)
    unet = components.unet.config
    try:
        fits = (list(config["unet_config"]["block_out_channels"]) == list(unet.block_out_channels)
                and config["unet_config"]["cross_attention_dim"] == unet.cross_attention_dim
                and config["text_width"] == components.text_encoder.config.hidden_size)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{folder / 'config.json'} is not a PromptNet's config (no {exc}); {fix}") from None
    record = next((folder / n for n in ("training.json", "subject.json") if (folder / n).is_file()), None)
    recorded = {}
    if record is not None:
        recorded = {e["kind"]: e for e in json.loads(record.read_text()).get("assets", [])}.get("model", {})
    now = assets.fingerprint("model", model)
    if not fits or (recorded.get("fingerprint") and now and recorded["fingerprint"] != now):
        made_for = recorded.get("ref", "another model")
        raise UserError(f"--promptnet {ref} was pretrained for {made_for} (fingerprint "
                        f"{recorded.get('fingerprint', '?')}), not for --model {model} ({now}); pretrain one for "
                        f"this model with 'subjectgen profusion pretrain --model {model}'")


@dataclass
class ProFusionRun(Run):
    """A ProFusion run: the base model with the tuned attention, the tuned PromptNet and the reference photo."""

    promptnet: PromptNet | None = None
    text: SplicedText | None = None
    reference: torch.Tensor | None = None   # (1, 3, H, W) in [-1, 1]
    states: torch.Tensor | None = None      # the reference's image-encoder states

    @torch.no_grad()
    def stepwise_denoiser(self, prompts: list[str], negative_prompt: str, guidance: float, ref_guidance: float,
                          class_noun: str | None, emb_scale: float = 1.0):
        """x, t, i -> ε̂ = ε_u + s₁(ε_c - ε_u) [+ s₂(ε_ref - ε_u)], where ε_c's prompt holds this step's
        S* = PromptNet(z_ref, t, states, x_t) (its states scaled by emb_scale) and ε_ref's has the class noun in
        S*'s place. With s₂ = 0 the reference prompt is not run at all: plain guidance."""
        c = self.components
        unet, vae = c.unet, c.vae
        device, n = unet.device, len(prompts)
        self.promptnet.to(device)
        z_ref = vae.encode(self.reference.to(device, vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor
        z_ref, states = z_ref.expand(n, -1, -1, -1), self.states.to(device).expand(n, -1, -1)
        fixed = [encode_prompts(c.tokenizer, c.text_encoder, [negative_prompt] * n)]
        if ref_guidance:
            token = self.manifest["token"]
            fixed.append(encode_prompts(c.tokenizer, c.text_encoder, [p.replace(token, class_noun) for p in prompts]))

        def denoise(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            vectors = self.promptnet(z_ref, t, states, x)
            cond = self.text(prompts, vectors, emb_scale)
            hidden = torch.cat([fixed[0], cond, *fixed[1:]]).to(unet.dtype)
            k = len(hidden) // n  # [uncond; cond] or [uncond; cond; ref], one batched call
            eps = unet(torch.cat([x] * k), t, encoder_hidden_states=hidden).sample.chunk(k)
            out = eps[0] + guidance * (eps[1] - eps[0])
            return out + ref_guidance * (eps[2] - eps[0]) if ref_guidance else out

        return denoise
