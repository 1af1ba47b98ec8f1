"""What personalization produces (a run folder), and how to load it back onto its base model.

A run folder holds `subject.json` (the manifest, written last: its presence marks a finished run)
beside weights in the ecosystem's formats:
  lora               pytorch_lora_weights.safetensors (diffusers) and kohya_lora.safetensors (kohya/A1111; on
                     FLUX.1 comfyui_lora.safetensors, ComfyUI's layout)
  textual-inversion  learned_embeds.safetensors (diffusers) and embedding_a1111.safetensors (A1111)
  dreambooth         pipeline/ (a whole diffusers pipeline)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .models import Components, load_model, networks_in
from .safeio import atomic_save_safetensors, check_safetensors, read_json
from .sampling import EarlySteps
from .subjects import expand_subject

MANIFEST = "subject.json"
LORA_SUFFIXES = {".lora.down.weight": "lora_down", ".lora.up.weight": "lora_up",
                 ".lora_linear_layer.down.weight": "lora_down", ".lora_linear_layer.up.weight": "lora_up",
                 ".lora_A.weight": "lora_down", ".lora_B.weight": "lora_up"}  # diffusers' names for a transformer


def kohya_key(component: str, key: str, prefixes: dict[str, str]) -> tuple[str, str]:
    """diffusers LoRA key -> (kohya module name, 'lora_down'/'lora_up'); `prefixes`: the family's, by component
    (SD: lora_unet, lora_te; SDXL: lora_unet, lora_te1, lora_te2)."""
    for suffix, kind in LORA_SUFFIXES.items():
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            if component.startswith("text_encoder") and not module.startswith("text_model."):
                module = "text_model." + module
            return f"{prefixes[component]}_{module.replace('.', '_')}", kind
    raise ValueError(f"not a LoRA weight key: {key}")


def lora_pairs(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A component's LoRA weights in diffusers' key format, by module: {module: {'lora_down': A, 'lora_up': B}}."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, weight in state.items():
        suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"not a LoRA weight key: {key}")
        pairs.setdefault(key[: -len(suffix)], {})[LORA_SUFFIXES[suffix]] = weight
    return pairs


def export_kohya_lora(layers: dict[str, dict[str, torch.Tensor]], alpha: float, path: Path,
                      prefixes: dict[str, str]) -> None:
    """Write LoRA weights with kohya sd-scripts / A1111 keys (lora_unet_..., lora_te_..., .alpha)."""
    out: dict[str, torch.Tensor] = {}
    for component, state in layers.items():
        for key, weight in state.items():
            name, kind = kohya_key(component, key, prefixes)
            out[f"{name}.{kind}.weight"] = weight.float()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    atomic_save_safetensors(path, out, metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha)})


@dataclass
class Run:
    """A finished run (or, with an empty subject, a plain base model): its manifest and its base model with
    the adapter applied. What is special about each method (its base networks for --subject-start, how a
    prompt reaches its tokenizer) is asked of the method's class, from the registry."""

    manifest: dict
    components: Components
    base: Components | None = None  # a DreamBooth run's base model, loaded when first needed
    options: dict = field(default_factory=dict)  # the method's own generation settings (Method.sample_options)
    reference_images: list | None = None  # photos its family's pipeline takes as references (FLUX.2's image=[...])
    references: dict | None = field(default=None, repr=False)  # their conditioning, encoded when first sampled
    networks_dtype: torch.dtype = torch.float32  # generate --dtype: its networks' (and a second base's)
    base_quantization: str | None = None  # generate --base-quantization: its denoiser's (and a second base's)

    @classmethod
    def of_model(cls, ref: str, allow_pickle: bool = False) -> "Run":
        """A plain model as a run with no subject: the baseline."""
        return cls({"subject": "", "model": ref}, load_model(ref, allow_pickle))

    @property
    def subject(self) -> str:
        return self.manifest["subject"]

    @property
    def method(self):
        """The Method class of this run (None for a plain model)."""
        from .methods import registry

        name = self.manifest.get("method")
        return registry.get(name).load() if name else None

    @property
    def subject_start(self) -> float:
        """The run's own --subject-start (train --subject-start, or its method's default for the model), which
        generate and the bench sample it with unless told otherwise: 0 for a plain model and for older runs."""
        return float(self.manifest.get("settings", {}).get("subject_start") or 0.0)

    def early_steps(self, prompts: list[str], fraction: float, steps: int) -> EarlySteps | None:
        """Sample the first round(fraction * steps) steps without the subject (sampling.EarlySteps): the
        prompts with {subject} as the plain class noun, on the base model's networks. None when there are none."""
        n = round(fraction * steps)
        if not n or not self.subject:
            return None
        denoiser, text_encoders, context = self.method.base_networks(self)
        return EarlySteps(n, [expand_subject(p, self.manifest["class"]) for p in prompts], denoiser, text_encoders,
                          context)

    def base_model(self) -> Components:
        """The run's base model, loaded once and held as the run's own networks are: on their device, in generate's
        --dtype, its denoiser quantized as --base-quantization says (each layer on its way to the device)."""
        if self.base is None:
            with networks_in(self.networks_dtype):
                base = load_model(self.manifest["model"])
            self.base = held(base, self.components.denoiser.device, self.networks_dtype, self.base_quantization)
        return self.base

    def place(self, device, dtype: torch.dtype = torch.float32, base_quantization: str | None = None) -> "Run":
        """On `device` for sampling (its networks loaded in `dtype`: models.networks_in), the denoiser quantized on
        the way as `base_quantization` says (each layer as it reaches the device), and the second base it may load
        (base_model) held the same way."""
        self.networks_dtype, self.base_quantization = dtype, base_quantization
        held(self.components, device, dtype, base_quantization)
        return self

    def denoiser_for(self, negative_prompt: str, guidance: float):
        """For sampling.generate: the method's denoiser for a batch of prompts (None: the plain one)."""
        if self.method is None and not self.reference_images:
            return None
        from .methods.base import Method

        method = self.method or Method  # a plain model with --references: the default denoiser, with them
        return lambda prompts: method.denoiser(self, prompts, negative_prompt, guidance)

    def reference_conditioning(self) -> dict | None:
        """The reference photos' conditioning (Backbone.reference_conditioning), encoded once; None without any."""
        if not self.reference_images:
            return None
        if self.references is None:
            with torch.no_grad():
                self.references = self.components.backbone.reference_conditioning(self.components,
                                                                                  self.reference_images)
        return self.references

    def add_references(self, folder: Path) -> None:
        """`generate --references DIR`: the photos in DIR, checked and cropped as a subject's, after the run's own
        (up to the family's number of references; the first ones)."""
        from .subjects import load_subject

        family, have = self.components.backbone, len(self.reference_images or [])
        family.check_references("--references")
        room = family.max_references - have
        if room < 1:
            raise UserError(f"--references: this run has {have} reference photos already, {family.title}'s most; "
                            "leave --references out")
        photos = load_subject(folder, self.manifest.get("class") or "subject", self.components.resolution,
                              uses=room).images[:room]
        self.reference_images, self.references = (self.reference_images or []) + photos, None

    def prompt_for_model(self, prompt: str) -> str:
        """`{subject}` expanded, and whatever else the method's tokenizer must see (TI's extra vectors)."""
        prompt = expand_subject(prompt, self.subject)
        return self.method.prompt_for_run(self.manifest, prompt) if self.method else prompt


def held(c: Components, device, dtype: torch.dtype, base_quantization: str | None) -> Components:
    """`c` on `device` for sampling, its denoiser quantized on the way as `base_quantization` says (each layer as it
    reaches the device: quantize_frozen)."""
    if base_quantization:
        from .training.quantize import quantize_frozen

        quantize_frozen(c.denoiser, base_quantization, dtype, device)
    return c.to(device)


@contextmanager
def lora_off(*modules: torch.nn.Module):
    """Every LoRA layer in `modules` disabled inside the block (peft's enable_adapters), as it was after."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]
    trainable = {p: p.requires_grad for layer in layers for p in layer.parameters()}
    enabled = [not layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, on in zip(layers, enabled):
            layer.enable_adapters(on)
        for param, flag in trainable.items():  # enable_adapters(True) makes the adapter trainable
            param.requires_grad_(flag)


def check_assets(run_dir: Path, manifest: dict) -> None:
    """Refuse a run whose recorded assets (its base model, ...) now have other weights under the same name.
    Runs from before assets were recorded have none to check."""
    from .assets import check_recorded

    for entry in manifest.get("assets", []):
        check_recorded(entry, f"run {run_dir}")


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished run (no {MANIFEST}); train one with 'subjectgen train'")
    return read_json(path, "the run folder is damaged; train it again")


def load_run(run_dir: Path, allow_pickle: bool = False, lora_scale: float = 1.0) -> Run:
    """The base model of a finished run with its adapter applied, by the run's method (its `load_run`).

    `lora_scale` weights a LoRA's update (diffusers' `set_adapters` weight, kohya's network multiplier):
    below 1 trades likeness of the subject for following the prompt; 0 gives the base model.
    """
    from .methods import registry

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    method = manifest.get("method")
    if method not in registry.names(all_methods=True):
        raise UserError(f"{run_dir / MANIFEST} names an unknown method '{method}'")
    cls = registry.get(method).load()
    if lora_scale != 1.0 and not cls.scalable:
        raise UserError(f"--lora-scale applies to LoRA runs; {run_dir} is a {method} run")
    for name in manifest.get("files", []):  # before the base model loads: a damaged run fails in a second
        if name.endswith(".safetensors"):
            check_safetensors(run_dir / name, f"{method} weights")
    if cls.run_file and not (run_dir / cls.run_file).exists():  # a manifest naming another method's run
        raise UserError(f"{run_dir / MANIFEST} says the method is {method}, but {run_dir} has no {cls.run_file}; "
                        "the run folder is damaged: train it again")
    check_assets(run_dir, manifest)
    try:
        return cls.load_run(run_dir, manifest, allow_pickle, lora_scale)
    except KeyError as exc:  # a hand-edited or truncated-then-repaired manifest
        raise UserError(f"{run_dir / MANIFEST} lacks {exc} for a {method} run; the run folder is damaged: train it "
                        "again") from None
