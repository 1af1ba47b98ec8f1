"""Load a base model from any reference into its components; the rest of the code never sees a path.

A reference is a built-in name, a local diffusers folder, a single-file checkpoint, or a hub id.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch

from . import assets, backbones
from .backbones import Components
from .errors import UserError
from .safeio import PICKLE_SUFFIXES, check_safetensors, read_json

__all__ = ["Components", "load_model", "inference_device", "networks_in", "quiet_loading", "freeze"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_NETWORKS_DTYPE: ContextVar[torch.dtype] = ContextVar("networks_dtype", default=torch.float32)


@contextmanager
def networks_in(dtype: torch.dtype):
    """Inside: load_model gives the text encoders and the denoiser in `dtype` instead of fp32 (generate --dtype),
    cast from the weights as loaded, whatever loads them (a run's method loads its own base); the VAE stays fp32."""
    token = _NETWORKS_DTYPE.set(dtype)
    try:
        yield
    finally:
        _NETWORKS_DTYPE.reset(token)


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


def inference_device() -> torch.device:
    """Where generation runs: the GPU when there is one (the current one under a launcher), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_model(ref: str, allow_pickle: bool = False, keep_dtype: bool = False) -> Components:
    """Load the components of the model named by `ref` (see the module docstring), every network in fp32 whatever
    its storage (the built-in model ships fp16), as generation computes (or in networks_in's dtype). keep_dtype
    (training in mixed precision): the denoiser and text encoders stay as stored, and the trainer casts each weight once, frozen ones to the
    mixed-precision dtype and trainable ones to fp32, with no fp32 copy of a half-precision base in between."""
    ref = str(ref)
    named = assets.builtin_path("model", ref)
    if named is not None:
        return _in_fp32(_load_folder(named, ref, allow_pickle), keep_dtype)
    path = Path(ref).expanduser()
    if path.is_dir():
        return _in_fp32(_load_folder(path, ref, allow_pickle), keep_dtype)
    if path.is_file():
        return _in_fp32(_load_single_file(path, allow_pickle), keep_dtype)
    if HUB_ID.match(ref) and not assets.missing_local_path(ref):
        return _in_fp32(_load_folder(_download(ref, allow_pickle), ref, allow_pickle), keep_dtype)
    names = ", ".join(assets.builtin_names("model"))
    raise UserError(f"model '{ref}': no such folder or file, and not a hub id; give a diffusers folder or one of: {names}")


def _in_fp32(c: Components, keep_dtype: bool) -> Components:
    """The networks in fp32, or networks_in's dtype (see load_model); the VAE in fp32 always: it is small, encodes
    the photos before any cast, and SDXL's overflows in fp16."""
    c.vae.float()
    if keep_dtype:
        return c
    dtype = _NETWORKS_DTYPE.get()
    for module in [*c.text_encoders, c.denoiser]:
        kept = fp32_parameters(module, dtype)
        for name, p in module.named_parameters():
            p.data = p.data.to(torch.float32 if name in kept else dtype)
    return c


def fp32_parameters(module: torch.nn.Module, dtype: torch.dtype) -> set[str]:
    """The parameters of `module` its library keeps in fp32 when the rest is cast to `dtype`, as from_pretrained's
    torch_dtype does: transformers' _keep_in_fp32_modules in fp16 (T5's feed-forward output `wo`, which overflows
    there), and _keep_in_fp32_modules_strict in fp16 and bf16."""
    names = set(getattr(module, "_keep_in_fp32_modules", None) or ()) if dtype == torch.float16 else set()
    if dtype in (torch.float16, torch.bfloat16):
        names |= set(getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    return {name for name, _ in module.named_parameters() if names & set(name.split("."))}


def _load_folder(path: Path, ref: str, allow_pickle: bool) -> Components:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"model folder {path} has no model_index.json; give a pipeline in diffusers layout "
                        f"({backbones.supported()})")
    index = read_json(index_file, "re-download or re-save the model")
    family = backbones.for_pipeline_class(index.get("_class_name"), f"model folder {path}")
    for name in family.components:
        if not (path / name).is_dir():
            raise UserError(f"model folder {path} is missing its '{name}' component; is it a complete "
                            f"{family.title} pipeline?")
    for name in (*family.text_encoders, "vae", family.denoiser):
        _check_weights_format(path / name, allow_pickle)
    try:
        parts = family.load_parts(path, not allow_pickle or None, index)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"could not load model folder {path}: {str(exc).splitlines()[0]}") from None
    family.check_parts(parts, f"model folder {path}")
    return Components(family, parts, ref)


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
    """A single-file checkpoint (A1111/CivitAI style), converted by diffusers. The file holds weights only: the
    configs come from a diffusers folder beside it (single_file_config), else diffusers fetches those of the base
    model it recognises from the hub once (then its cache)."""
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise UserError(f"{path} is a pickle checkpoint, which can run code when loaded; "
                        "use a .safetensors file or pass --allow-pickle if you trust its source")
    if path.suffix not in PICKLE_SUFFIXES | {".safetensors"}:
        raise UserError(f"model file {path}: expected a .safetensors checkpoint or a diffusers folder")
    family = backbones.for_single_file(path)
    config = single_file_config(path)
    try:
        with quiet_loading():
            pipe = family.from_single_file(path, config if config.is_dir() else None)
    except Exception as exc:  # diffusers raises many types for unrecognised checkpoints
        if type(exc).__module__.startswith("huggingface_hub") and not config.is_dir():
            raise UserError(
                f"checkpoint {path}: diffusers could not fetch its configs from the Hugging Face hub (offline?); "
                f"put its base model's diffusers folder (e.g. {family.single_file_base}; the configs suffice, no "
                f"weights) at {config}, or connect once") from None
        raise UserError(f"could not read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    parts = family.parts_from_pipeline(pipe)
    family.check_parts(parts, f"checkpoint {path}")
    return Components(family, parts, ref=str(path))


def single_file_config(path: Path) -> Path:
    """Where a single-file checkpoint's configs are looked for: NAME.config/ beside NAME.safetensors (as A1111 reads
    NAME.yaml beside it), a diffusers folder of the model's architecture (model_index.json, every component's
    config, the tokenizers), passed to diffusers' `from_single_file(config=...)`; weights in it are not read."""
    return path.with_suffix(".config")


def _download(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    from .hub import offline

    offline()  # an unreachable hub: the cache only, at once, not five retries per file

    # *.jinja: a chat template beside its tokenizer (FLUX.2 [klein]'s Qwen tokenizer prompts through one)
    patterns = ["*.json", "*.txt", "*.jinja", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    patterns = [f"{c}/{p}" for c in sorted(backbones.every_component()) for p in patterns] + ["model_index.json"]
    try:
        # the full-precision files only: hub repos also hold fp16 and non-EMA copies of every network
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=["*.fp16.*", "*non_ema*"]))
    except Exception as exc:  # hub errors: offline, gated, missing repo
        raise UserError(f"could not download model '{repo_id}' from the Hugging Face hub "
                        f"({type(exc).__name__}); check the id and your network, or give a local folder") from None


def freeze(*modules: torch.nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False)
        module.eval()
