"""The one registry of method families: what the CLI, the bench, the report and run loading read.

A method is registered once, by a `MethodSpec`: its name, one line of help, which TrainConfig settings are
its own (the CLI's `train NAME` parser offers the common settings plus these), its defaults per model size,
and where its implementation lives (a `Method` subclass, imported only when a run needs it, so parsing a
command never imports torch). Registering a spec is all it takes for a new method to train, save, load,
generate and be benchmarked:

    register(MethodSpec("bitfit", "tune only the UNet's biases", "mypkg.bitfit:BitFit",
                        defaults={"steps": (500, 200), "lr": (1e-4, 1e-3)}))

Stdlib only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..settings import Bound

# The shared settings of class images and prior preservation, which a method without them drops.
PRIOR_SETTINGS = ("class_prompt", "prior_preservation", "prior_weight", "num_class_images")
# A frozen base under trained adapters: the methods that train the base's own weights or need them drop it.
NO_FROZEN_BASE = ("base_quantization",)
# Every shared setting of optimization: a method that trains nothing (the zero-shot apprentice) drops them all.
TRAINING_SETTINGS = (*PRIOR_SETTINGS, "token", "steps", "lr", "batch_size", "seed", "snr_gamma", "weighting_scheme",
                     "logit_mean", "logit_std", "mode_scale", "masked_loss",
                     "lr_warmup_steps", "max_grad_norm", "mixed_precision", "base_quantization",
                     "gradient_checkpointing", "optimizer",
                     "aspect_buckets", "compile",
                     "checkpoint_every", "validate_every", "validation_prompts", "eval_every", "eval_prompts",
                     "eval_sample_steps", "eval_dino", "eval_clip", "select", "captioning", "captioner")

# Evaluation inside training on by default on the built-in model (whose evaluators are built in): a method's
# builtin_eval, where the points cost at most EVAL_BUDGET of the training (benchmarks/eval_cost.py) or the fair
# comparison chose steps by rule (docs/RESULTS.md). EVAL_POINTS: the points eval_cost.py measures a method without
# its own at (every fifth of the steps).
EVAL_POINTS = 5
EVAL_BUDGET = 0.20

# The settings every method shares get these defaults unless the method says otherwise:
# (Stable Diffusion at 512 px, the small built-in/tiny models).
COMMON_DEFAULTS = {"batch_size": (1, 1), "prior_preservation": (False, False), "num_class_images": (100, 32),
                   "subject_start": (0.0, 0.0), "masked_loss": (False, False)}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    help: str
    implementation: Any                          # "package.module:Class", or the Method subclass itself
    own_settings: tuple[str, ...] = ()           # TrainConfig fields only this method takes
    defaults: dict[str, tuple] = field(default_factory=dict)  # field -> (SD 512 px, small models)
    token_help: str = "the word that names the subject in prompts"
    bounds: dict = field(default_factory=dict)   # a setting's range where this method's differs (settings.Bound)
    listed: bool = True                          # False: not a `train` method (a pretraining step has its own command)
    drops: tuple[str, ...] = ()                  # shared settings that do nothing for this method (no flag for them)
    photos_used: int | None = None               # how many of the subject's photos it uses, the first ones (None: all)
    families: tuple[str, ...] | None = None      # the model families it is built for (backbones/); None: every one
    builtin_eval: tuple[int, str] | None = None  # (eval points, the step --select keeps) by default on the built-in
                                                 # model, the points spread evenly over the steps; None: no points
    builtin_defaults: dict[str, Any] = field(default_factory=dict)  # defaults on the built-in model only, where
                                                 # they need what it alone ships (its captioner): field -> value

    def runs_on(self, family: str) -> bool:
        return self.families is None or family in self.families

    def check_family(self, family: str, titles: dict[str, str]) -> None:
        """A one-line error when this method cannot run on the model's family (ProFusion's PromptNet is built
        from an SD UNet's encoder); `titles`: every family's name -> title."""
        if not self.runs_on(family):
            others = [name for name, spec in REGISTRY.items() if spec.listed and spec.runs_on(family)]
            raise UserError(f"{self.name} is not built for {titles[family]}; it runs on "
                            f"{', '.join(titles[f] for f in self.families if f in titles)} (on this model use "
                            f"{', '.join(others)})")

    def load(self) -> type:
        """The Method subclass (imported on first use), which knows its spec."""
        cls = self.implementation
        if isinstance(cls, str):
            module, _, name = cls.partition(":")
            cls = getattr(importlib.import_module(module), name)
        cls.spec = self  # a class attribute of this very class: a subclass registered apart keeps its own
        return cls

    def default(self, name: str, small: bool):
        pair = self.defaults.get(name, COMMON_DEFAULTS.get(name))
        return None if pair is None else pair[int(small)]

    def defaults_text(self, name: str) -> str:
        if name in ("eval_every", "select") and self.builtin_eval:
            points, select = self.builtin_eval
            return (f"default: {points} points over the steps on the built-in model, else none" if name == "eval_every"
                    else f"default: {select} with eval points on the built-in model, else last")
        if name == "captioning" and self.builtin_defaults.get(name) == "auto":
            return "default on the built-in model: made as auto makes them, kept in the run (not written); else none"
        if name in self.builtin_defaults:
            return f"default: {_show(self.builtin_defaults[name])} on the built-in model, else none"
        pair = self.defaults.get(name, COMMON_DEFAULTS.get(name))
        if pair is None:
            return ""
        sd, small = (_show(v) for v in pair)
        where = " where every photo has a mask" if name == "masked_loss" else ""
        return (f"default: {sd}" if sd == small
                else f"default: {sd} on Stable Diffusion, {small} on the built-in model{where}")


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names(all_methods: bool = False) -> list[str]:
    """The methods `train` and the bench offer (with all_methods, also those only other commands run)."""
    return [name for name, spec in REGISTRY.items() if all_methods or spec.listed]


def default_names(name: str) -> list[str]:
    """The settings whose default the method's spec decides (its own, and the shared COMMON_DEFAULTS)."""
    return list(dict.fromkeys([*COMMON_DEFAULTS, *get(name).defaults, *get(name).builtin_defaults]))


def get(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(names())}")
    return REGISTRY[name]


register(MethodSpec(
    "lora", "DreamBooth with LoRA adapters on the UNet attention (small files, fast)",
    "subjectgen.methods.dreambooth:DreamBoothLoRA",
    own_settings=("instance_prompt", "rank", "lora_alpha", "train_text_encoder"),
    # On the built-in model the fair comparison's choice on the validation subjects (docs/RESULTS.md, "The fair
    # comparison"): 400 steps, eight eval points, the step the rule keeps, the first 0.4 of the steps sampled without
    # the subject (before it: 300 steps, the last kept, the subject throughout).
    defaults={"steps": (500, 400), "lr": (1e-4, 1e-3), "subject_start": (0.0, 0.4)},
    builtin_eval=(8, "best"),
    token_help="identifier (default: a rare token from the tokenizer, 'sks'-like)"))
register(MethodSpec(
    "dreambooth", "DreamBooth full fine-tune of the UNet, with class prior preservation",
    "subjectgen.methods.dreambooth:DreamBooth",
    own_settings=("instance_prompt", "train_text_encoder"), drops=NO_FROZEN_BASE,
    # On the built-in model the fair comparison's choice on the validation subjects (docs/RESULTS.md): lr 1e-5, 400
    # steps, eight eval points, the step the rule keeps, a masked loss, captions by the built-in captioner, kept in the
    # run (before it: lr 1e-4, 300 steps, five eval points, the last kept, neither).
    defaults={"steps": (800, 400), "lr": (5e-6, 1e-5), "prior_preservation": (True, True),
              "masked_loss": (False, True)},
    builtin_eval=(8, "best"), builtin_defaults={"captioning": "auto"},
    token_help="identifier (default: a rare token from the tokenizer, 'sks'-like)"))
register(MethodSpec(
    "textual-inversion", "learn a new word embedding; the model stays frozen",
    "subjectgen.methods.textual_inversion:TextualInversion",
    own_settings=("num_vectors", "init_word"), drops=NO_FROZEN_BASE,
    # On the built-in model the fair comparison's choice on the validation subjects (docs/RESULTS.md): lr 1.5e-3, 600
    # steps, twelve eval points, the step the rule keeps, a masked loss (before it: lr 5e-3, 500 steps, the last kept)
    defaults={"steps": (3000, 600), "lr": (5e-4, 1.5e-3), "num_class_images": (0, 0), "masked_loss": (False, True)},
    builtin_eval=(12, "best"),
    token_help="placeholder token (default: <s*>)",
    families=("sd", "sdxl")))
register(MethodSpec(
    "profusion", "ProFusion: a pretrained encoder maps one photo to S*, a brief tune, Fusion Sampling at generation",
    "subjectgen.methods.profusion:ProFusion",
    own_settings=("photo", "promptnet", "image_encoder"),
    # On the built-in model the encoder alone (steps 0) was chosen on the validation subjects (benchmarks/profusion.py;
    # in stop 18 with the template PromptNet, the paper's pretraining, shipped again: the only one whose S* reads
    # its reference)
    defaults={"steps": (100, 0), "lr": (2e-5, 2e-5), "batch_size": (4, 4), "num_class_images": (0, 0)},
    bounds={"steps": Bound(low=0, integer=True)},  # --steps 0: the encoder alone, no tuning
    drops=(*PRIOR_SETTINGS, *NO_FROZEN_BASE, "masked_loss", "aspect_buckets", "captioning", "captioner"),  # S*: 1 photo
    token_help="placeholder token for S* (default: <s*>)",
    families=("sd",)))
register(MethodSpec(
    "profusion-pretrain", "pretrain ProFusion's PromptNet on a dataset of images (subjectgen profusion pretrain)",
    "subjectgen.methods.profusion_pretrain:PromptNetPretraining",
    defaults={"steps": (20000, 1200), "lr": (1e-5, 2e-4), "batch_size": (8, 32), "num_class_images": (0, 0)},
    listed=False,
    families=("sd",)))
register(MethodSpec(
    "apprentice", "SuTI's apprentice: a new subject from its 3-5 photos in context, zero-shot (nothing trains; "
    "IP-Adapter format)",
    "subjectgen.methods.apprentice:Apprentice",
    own_settings=("apprentice",), photos_used=5,
    defaults={"steps": (0, 0), "num_class_images": (0, 0)},
    bounds={"steps": Bound(low=0, high=0, integer=True)},
    drops=TRAINING_SETTINGS,
    families=("sd",)))
register(MethodSpec(
    "reference", "the model's own reference images: the subject's photos given to its pipeline (FLUX.2 [klein]'s "
    "multi-reference generation), zero-shot (nothing trains)",
    "subjectgen.methods.reference:References",
    photos_used=4,  # FLUX.2 [klein]'s most (Backbone.max_references)
    defaults={"steps": (0, 0), "num_class_images": (0, 0)},
    bounds={"steps": Bound(low=0, high=0, integer=True)},
    drops=TRAINING_SETTINGS,
    families=("flux2",)))
register(MethodSpec(
    "apprentice-train", "train the apprentice on an expert farm (subjectgen apprentice train)",
    "subjectgen.methods.apprentice:ApprenticeTraining",
    # IP-Adapter's lr 1e-4 and batch 8 on SD; the small models at 10x the lr, as the other methods' are, and
    # 600 steps at batch 32 (about 20 minutes at one thread here: the compute a session's farm and scaling allow)
    defaults={"steps": (20000, 600), "lr": (1e-4, 1e-3), "batch_size": (8, 32), "num_class_images": (0, 0)},
    listed=False,
    families=("sd",)))


def eval_on_builtin() -> list[str]:
    """The methods that score eval points by default on the built-in model (MethodSpec.builtin_eval)."""
    return [name for name, spec in REGISTRY.items() if spec.listed and spec.builtin_eval]
