"""Settings of training, sampling and the benchmark: dataclasses serialisable to the manifests, with the allowed
range beside each number (settings.py), so the CLI and the Python API check them the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import UserError
from .settings import (ANY_FINITE, AT_LEAST_1, FRACTION_BELOW_1, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE,
                       SAMPLER_STEPS, SEED, Bound, check_settings, ranged)

METHODS = ("lora", "dreambooth", "textual-inversion")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Everything that decides a training run. `None` means: the method's default for this model."""

    method: str
    subject_dir: str
    class_noun: str
    out: str
    model: str = "builtin"
    token: str | None = None            # DreamBooth identifier ('sks'-like) or TI placeholder ('<s*>')
    instance_prompt: str = "a {token} {class}"
    class_prompt: str = "a {class}"
    steps: int | None = ranged(None, AT_LEAST_1)
    lr: float | None = ranged(None, POSITIVE)
    batch_size: int = ranged(1, AT_LEAST_1)
    seed: int = ranged(0, SEED)
    prior_preservation: bool | None = None
    prior_weight: float = ranged(1.0, NON_NEGATIVE)
    num_class_images: int | None = ranged(None, NON_NEGATIVE_INT)
    snr_gamma: float | None = ranged(None, POSITIVE)
    masked_loss: bool = False           # learn only the subject's pixels (masks/ beside the photos, or alpha)
    rank: int = ranged(4, AT_LEAST_1)
    lora_alpha: float | None = ranged(None, POSITIVE)  # defaults to rank (scale 1)
    train_text_encoder: bool = False
    num_vectors: int = ranged(1, Bound(low=1, high=64, integer=True))  # a prompt holds 77 tokens in all
    init_word: str | None = None        # TI: defaults to the class noun
    lr_warmup_steps: int = ranged(0, NON_NEGATIVE_INT)
    max_grad_norm: float = ranged(1.0, NON_NEGATIVE)  # 0: no clipping
    mixed_precision: str = "no"         # "no", "fp16", "bf16" (GPU)
    gradient_checkpointing: bool = False
    checkpoint_every: int = ranged(0, NON_NEGATIVE_INT)
    validate_every: int = ranged(0, NON_NEGATIVE_INT)
    validation_prompts: list[str] = field(default_factory=lambda: ["a {subject}", "a {subject} on the beach"])
    sample_steps: int | None = ranged(None, SAMPLER_STEPS)  # sampler steps for class images and validation
    guidance: float = ranged(7.5, NON_NEGATIVE)
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        check_settings(self)
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, "
                            f"got {self.mixed_precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def identity(self) -> dict:
        """The settings that make two runs the same run (for --resume and --out checks)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("out", "checkpoint_every", "validate_every")}


# Defaults that work: (Stable Diffusion at 512 px, the small built-in/tiny models)
DEFAULTS = {
    "lora": {"steps": (500, 300), "lr": (1e-4, 1e-3), "prior_preservation": (False, False),
             "num_class_images": (100, 32)},
    "dreambooth": {"steps": (800, 300), "lr": (5e-6, 1e-4), "prior_preservation": (True, True),
                   "num_class_images": (100, 32)},
    "textual-inversion": {"steps": (3000, 500), "lr": (5e-4, 5e-3), "prior_preservation": (False, False),
                          "num_class_images": (0, 0)},
}


def resolve_defaults(cfg: TrainConfig, resolution: int) -> TrainConfig:
    """Fill every `None` setting with the method's default for a model of this resolution."""
    small = resolution < 256
    values = {name: pair[int(small)] for name, pair in DEFAULTS[cfg.method].items()}
    values["sample_steps"] = (50, 25)[int(small)]
    data = cfg.to_dict()
    for name, value in values.items():
        if data[name] is None:
            data[name] = value
    if data["prior_preservation"] and data["num_class_images"] < 1:
        raise UserError("--num-class-images must be at least 1 with prior preservation (or pass --no-prior-preservation)")
    return TrainConfig.from_dict(data)


@dataclass
class SampleSettings:
    """How `generate` samples: images per prompt, seeds, steps, guidance, and how much of the subject."""

    n: int = ranged(4, AT_LEAST_1)
    seed: int = ranged(0, SEED)
    steps: int | None = ranged(None, SAMPLER_STEPS)   # default: 50 for SD, 25 for small models
    guidance: float = ranged(7.5, NON_NEGATIVE)
    lora_scale: float = ranged(1.0, ANY_FINITE)
    subject_start: float = ranged(0.0, FRACTION_BELOW_1)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class BenchConfig:
    bench: str                      # a folder in DreamBench's layout, or "emoji"
    out: str
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    model: str = "builtin"
    subjects: list[str] | None = None
    prompts: int | None = ranged(None, AT_LEAST_1)      # the first N prompts of each list
    images_per_prompt: int = ranged(4, AT_LEAST_1)
    seed: int = ranged(0, SEED)
    sample_steps: int | None = ranged(None, SAMPLER_STEPS)  # default: 25 below 256 px, else 50
    guidance: float = ranged(7.5, NON_NEGATIVE)
    train_steps: int | None = ranged(None, AT_LEAST_1)  # default: each method's own
    masked_loss: bool = False       # train on the subject's masks only (SUBJECT/masks/, as EmojiBench ships)
    subject_start: float = ranged(0.0, FRACTION_BELOW_1)  # sample this fraction of the steps without the subject (generate --subject-start)
    dino: str | None = None         # default: built-in for EmojiBench, the real ones otherwise
    clip: str | None = None
    runs_from: str | None = None    # an earlier bench folder whose runs and baseline to reuse (reusable())
    # Content hashes of the model and evaluators (models.fingerprint), filled in by resolve_config: a folder
    # must not resume with other weights under the same name, as `builtin` gets after a retrain.
    model_hash: str | None = None
    dino_hash: str | None = None
    clip_hash: str | None = None

    def __post_init__(self) -> None:
        check_settings(self)

    def protocol(self) -> dict:
        """What decides the numbers; a rerun in the same folder must match it. The methods do not: a
        later run may add a method to a finished benchmark."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "methods", "runs_from")}
