"""Model families, one Backbone each (base.py has the contract): which family a model folder or a
single-file checkpoint is, and the registry a new family joins with one `register` call."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import Backbone, Components, Conditioning
from .sd import StableDiffusion
from .flux import Flux
from .flux2 import Flux2Klein
from .sdxl import StableDiffusionXL

__all__ = ["Backbone", "Components", "Conditioning", "FAMILIES", "register", "for_pipeline_class",
           "for_single_file", "every_component"]

FAMILIES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    FAMILIES[backbone.name] = backbone
    return backbone


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


register(StableDiffusion())
register(StableDiffusionXL())
register(Flux())
register(Flux2Klein())


def supported() -> str:
    return ", ".join(f"{b.title} ({' / '.join(b.pipeline_classes)})" for b in FAMILIES.values())


def for_pipeline_class(class_name: str | None, where: str) -> Backbone:
    """The family whose pipeline class a model_index.json names; a one-line error naming what is supported."""
    for backbone in FAMILIES.values():
        if class_name in backbone.pipeline_classes:
            return backbone
        if class_name in backbone.refusals:
            raise UserError(f"{where} is {backbone.refusals[class_name]} ({class_name}); subjectgen personalizes "
                            f"text-to-image base models: {supported()}")
    raise UserError(f"{where} is a {class_name or 'pipeline without a _class_name'}, a model family subjectgen "
                    f"does not support; supported: {supported()}")


# Key prefixes that tell single-file checkpoints apart (the original repositories' layouts).
SINGLE_FILE_KEYS = {"sdxl": "conditioner.embedders.1.", "sd": "cond_stage_model."}


def for_single_file(path: Path) -> Backbone:
    """The family of a single-file checkpoint (A1111/CivitAI style), told by its key names."""
    keys = checkpoint_keys(path)
    for name, prefix in SINGLE_FILE_KEYS.items():
        if name in FAMILIES and any(k.startswith(prefix) for k in keys):
            return FAMILIES[name]
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return FAMILIES["sd"]
    raise UserError(f"checkpoint {path}: not a Stable Diffusion or SDXL checkpoint (none of their key names); "
                    "give a diffusers folder of a supported family")


def checkpoint_keys(path: Path) -> list[str]:
    if path.suffix != ".safetensors":
        return ["model.diffusion_model."]  # a pickle (with --allow-pickle): diffusers' own detection decides
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise UserError(f"could not read checkpoint {path}: {str(exc).splitlines()[0]}") from None


def family_of(ref: str) -> Backbone | None:
    """A model's family, read from its model_index.json without loading it (None for a hub id or a single file,
    where no index is at hand, and for a folder of no supported family)."""
    import json

    from ..assets import resolve

    index = Path(resolve("model", str(ref))).expanduser() / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None
    return next((b for b in FAMILIES.values() if name in b.pipeline_classes), None)


def default_guidance_of(ref: str) -> float:
    """A model's family's guidance default, without loading it (the common default, 7.5, where the family is not
    known: a hub id or a single file)."""
    family = family_of(ref)
    return family.default_guidance if family else 7.5


def every_component() -> set[str]:
    """The component folders of every registered family (what a hub download fetches)."""
    return {name for backbone in FAMILIES.values() for name in backbone.components}
