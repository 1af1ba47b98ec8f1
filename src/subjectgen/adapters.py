"""What personalization produces (a run folder), and how to load it back onto its base model.

A run folder holds `subject.json` (the manifest, written last: its presence marks a finished run)
beside weights in the ecosystem's formats:
  lora               pytorch_lora_weights.safetensors (diffusers) and kohya_lora.safetensors (kohya/A1111)
  textual-inversion  learned_embeds.safetensors (diffusers) and embedding_a1111.safetensors (A1111)
  dreambooth         pipeline/ (a whole diffusers pipeline)
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .models import Components, load_model, quiet_loading
from .safeio import atomic_save_safetensors, check_safetensors
from .sampling import EarlySteps
from .subjects import expand_subject

MANIFEST = "subject.json"
KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te"}
LORA_SUFFIXES = {".lora.down.weight": "lora_down", ".lora.up.weight": "lora_up",
                 ".lora_linear_layer.down.weight": "lora_down", ".lora_linear_layer.up.weight": "lora_up"}


def kohya_key(component: str, key: str) -> tuple[str, str]:
    """diffusers LoRA key -> (kohya module name, 'lora_down'/'lora_up')."""
    for suffix, kind in LORA_SUFFIXES.items():
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            if component == "text_encoder" and not module.startswith("text_model."):
                module = "text_model." + module
            return f"{KOHYA_PREFIX[component]}_{module.replace('.', '_')}", kind
    raise ValueError(f"not a LoRA weight key: {key}")


def export_kohya_lora(layers: dict[str, dict[str, torch.Tensor]], alpha: float, path: Path) -> None:
    """Write LoRA weights with kohya sd-scripts / A1111 keys (lora_unet_..., lora_te_..., .alpha)."""
    out: dict[str, torch.Tensor] = {}
    for component, state in layers.items():
        for key, weight in state.items():
            name, kind = kohya_key(component, key)
            out[f"{name}.{kind}.weight"] = weight.float()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    atomic_save_safetensors(path, out, metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha)})


@dataclass
class Run:
    """A finished run: its manifest and its base model with the adapter applied."""

    manifest: dict
    components: Components
    base: Components | None = None  # a DreamBooth run's base model, loaded when first needed

    @property
    def subject(self) -> str:
        return self.manifest["subject"]

    def early_steps(self, prompts: list[str], fraction: float, steps: int) -> EarlySteps | None:
        """Sample the first round(fraction * steps) steps without the subject (sampling.EarlySteps): the
        prompts with {subject} as the plain class noun, on the base model's weights. None when there are none."""
        n = round(fraction * steps)
        if not n or not self.subject:
            return None
        return EarlySteps(n, [expand_subject(p, self.manifest["class"]) for p in prompts], self.base_weights)

    def base_weights(self) -> AbstractContextManager:
        """A context in which the run's own weights are off: a LoRA disabled, a DreamBooth run's fine-tuned
        networks swapped for its base model's. Textual Inversion changes no weights (a prompt without its
        token is the base model's prompt)."""
        method = self.manifest.get("method")
        if method == "lora":
            return lora_off(self.components.unet, self.components.text_encoder)
        if method == "dreambooth":
            return self._base_networks()
        return nullcontext()

    @contextmanager
    def _base_networks(self):
        c = self.components
        if self.base is None:
            self.base = load_model(self.manifest["model"]).to(c.unet.device)
        tuned = c.unet, c.text_encoder
        c.unet, c.text_encoder = self.base.unet.to(c.unet.dtype), self.base.text_encoder.to(c.text_encoder.dtype)
        try:
            yield
        finally:
            c.unet, c.text_encoder = tuned

    def prompt_for_model(self, prompt: str) -> str:
        """Expand `{subject}` and a multi-vector TI placeholder into what the tokenizer must see."""
        prompt = expand_subject(prompt, self.subject)
        tokens = self.manifest.get("placeholder_tokens")
        return prompt.replace(tokens[0], " ".join(tokens)) if tokens else prompt


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


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished run (no {MANIFEST}); train one with 'subjectgen train'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}); the run folder is damaged") from None


def load_run(run_dir: Path, allow_pickle: bool = False, lora_scale: float = 1.0) -> Run:
    """The base model of a finished run with its adapter applied, through diffusers' own loaders.

    `lora_scale` weights a LoRA's update (diffusers' `set_adapters` weight, kohya's network multiplier):
    below 1 trades likeness of the subject for following the prompt; 0 gives the base model.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    method = manifest.get("method")
    if lora_scale != 1.0 and method != "lora":
        raise UserError(f"--lora-scale applies to LoRA runs; {run_dir} is a {method} run")
    if method == "dreambooth":
        return Run(manifest, load_model(str(run_dir / "pipeline"), allow_pickle))
    for name in manifest.get("files", []):  # before the base model loads: a damaged run fails in a second
        if name.endswith(".safetensors"):
            check_safetensors(run_dir / name, f"{method} weights")
    components = load_model(manifest["model"], allow_pickle)
    pipe = components.pipeline()
    if method == "lora":
        with quiet_loading():
            pipe.load_lora_weights(str(run_dir), weight_name="pytorch_lora_weights.safetensors",
                                   adapter_name="subject")
        if lora_scale != 1.0:
            pipe.set_adapters(["subject"], adapter_weights=[lora_scale])
    elif method == "textual-inversion":
        pipe.load_textual_inversion(str(run_dir / "learned_embeds.safetensors"))
    else:
        raise UserError(f"{run_dir / MANIFEST} names an unknown method '{method}'")
    return Run(manifest, components)
