"""Training settings: one dataclass, serialisable to the run's manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

METHODS = ("lora", "dreambooth", "textual-inversion")


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
    steps: int | None = None
    lr: float | None = None
    batch_size: int = 1
    seed: int = 0
    prior_preservation: bool | None = None
    prior_weight: float = 1.0
    num_class_images: int | None = None
    snr_gamma: float | None = None
    masked_loss: bool = False           # learn only the subject's pixels (masks/ beside the photos, or alpha)
    rank: int = 4
    lora_alpha: float | None = None     # defaults to rank (scale 1)
    train_text_encoder: bool = False
    num_vectors: int = 1
    init_word: str | None = None        # TI: defaults to the class noun
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"         # "no", "fp16", "bf16" (GPU)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0
    validate_every: int = 0
    validation_prompts: list[str] = field(default_factory=lambda: ["a {subject}", "a {subject} on the beach"])
    sample_steps: int | None = None     # sampler steps for class images and validation
    guidance: float = 7.5
    allow_pickle: bool = False

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
    return TrainConfig.from_dict(data)
