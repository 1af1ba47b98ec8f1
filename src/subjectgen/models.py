"""Load a base model from any reference into its components; the rest of the code never sees a path.

A reference is a built-in name, a local diffusers folder, a single-file checkpoint, or a hub id.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from . import assets
from .errors import UserError
from .safeio import PICKLE_SUFFIXES, check_safetensors, read_json

COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@contextmanager
def quiet_loading():
    """Inside: diffusers and transformers log errors only and show no bars (their load reports and
    notices, e.g. a DINO pooler we never use or a UNet-only LoRA, are not the user's concern); after:
    both libraries' settings as they were. Real failures still raise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


@dataclass
class Components:
    """The parts of a Stable Diffusion model, and where they came from."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: diffusers.SchedulerMixin
    ref: str

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The image size the UNet was trained for."""
        return self.unet.config.sample_size * self.vae_scale

    def to(self, device: str | torch.device) -> "Components":
        """Move the three networks (generation's device; training places them itself)."""
        for module in (self.text_encoder, self.vae, self.unet):
            module.to(device)
        return self

    def pipeline(self) -> StableDiffusionPipeline:
        """A plain diffusers pipeline over these same modules (shared, not copied)."""
        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=self.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )


def inference_device() -> torch.device:
    """Where generation runs: the GPU when there is one (the current one under a launcher), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_model(ref: str, allow_pickle: bool = False) -> Components:
    """Load the components of the model named by `ref` (see the module docstring)."""
    ref = str(ref)
    named = assets.builtin_path("model", ref)
    if named is not None:
        return _load_folder(named, ref, allow_pickle)
    path = Path(ref).expanduser()
    if path.is_dir():
        return _load_folder(path, ref, allow_pickle)
    if path.is_file():
        return _load_single_file(path, allow_pickle)
    if HUB_ID.match(ref) and not ref.startswith((".", "/")):
        return _load_folder(_download(ref, allow_pickle), ref, allow_pickle)
    names = ", ".join(assets.builtin_names("model"))
    raise UserError(f"model '{ref}': no such folder or file, and not a hub id; give a diffusers folder or one of: {names}")


def _load_folder(path: Path, ref: str, allow_pickle: bool) -> Components:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"model folder {path} has no model_index.json; give a Stable Diffusion pipeline in diffusers layout")
    index = read_json(index_file, "re-download or re-save the model")
    for name in COMPONENTS:
        if not (path / name).is_dir():
            raise UserError(f"model folder {path} is missing its '{name}' component; is it a complete SD pipeline?")
    for name in ("text_encoder", "vae", "unet"):
        _check_weights_format(path / name, allow_pickle)
    use_st = not allow_pickle or None
    try:
        scheduler_cls = getattr(diffusers, index.get("scheduler", [None, "DDIMScheduler"])[1])
        # fp32 in memory whatever the storage (the built-in model ships fp16); mixed precision casts later
        return Components(
            tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
            text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=use_st).float(),
            vae=AutoencoderKL.from_pretrained(path / "vae", use_safetensors=use_st).float(),
            unet=UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=use_st).float(),
            scheduler=scheduler_cls.from_pretrained(path / "scheduler"),
            ref=ref,
        )
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"could not load model folder {path}: {str(exc).splitlines()[0]}") from None


def _check_weights_format(folder: Path, allow_pickle: bool) -> None:
    files = [f for f in folder.iterdir() if f.is_file()]
    if any(f.suffix == ".safetensors" for f in files):
        for f in files:
            if f.suffix == ".safetensors":
                check_safetensors(f)
        return
    if any(f.suffix in PICKLE_SUFFIXES for f in files):
        if allow_pickle:
            return
        raise UserError(f"{folder} holds only pickled weights, which can run code when loaded; "
                        "convert them to safetensors or pass --allow-pickle if you trust the source")
    raise UserError(f"{folder} holds no weights file; is the model folder complete?")


def _load_single_file(path: Path, allow_pickle: bool) -> Components:
    """A single-file checkpoint (A1111/CivitAI style), converted by diffusers."""
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise UserError(f"{path} is a pickle checkpoint, which can run code when loaded; "
                        "use a .safetensors file or pass --allow-pickle if you trust its source")
    if path.suffix not in PICKLE_SUFFIXES | {".safetensors"}:
        raise UserError(f"model file {path}: expected a .safetensors checkpoint or a diffusers folder")
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), safety_checker=None, requires_safety_checker=False)
    except Exception as exc:  # diffusers raises many types for unrecognised checkpoints
        raise UserError(f"could not read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    return Components(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, pipe.scheduler, ref=str(path))


def _download(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    patterns = [f"{c}/{p}" for c in COMPONENTS for p in patterns] + ["model_index.json"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # hub errors: offline, gated, missing repo
        raise UserError(f"could not download model '{repo_id}' from the Hugging Face hub "
                        f"({type(exc).__name__}); check the id and your network, or give a local folder") from None


def freeze(*modules: torch.nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False)
        module.eval()
