"""Settings of training, sampling and the benchmark: dataclasses serialisable to the manifests, with the allowed
range beside each number (settings.py), so the CLI and the Python API check them the same way."""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from .errors import UserError
from .methods import registry
from .settings import (ANY_FINITE, AT_LEAST_1, FRACTION_BELOW_1, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE,
                       SAMPLER_STEPS, SEED, Bound, bound_of, check_settings, choices_of, setting)

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
BASE_QUANTIZATIONS = ("int8", "nf4")
GENERATION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # generate --dtype: torch's names
# diffusers' FLUX scripts' timestep sampling (its --weighting_scheme): uniform, a density, or uniform with a loss weight
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")
MODE_SCALE = Bound(low=-1, high=2 / (math.pi - 2))  # where the mode map is monotone: a density (SD3 paper, eq. 20)
# The settings only flow matching has (FLUX.1, FLUX.2 [klein]): a family trained on ε or v refuses them changed
# The eval points' sampler steps on the small models: 10 DDIM steps score like 25 (likeness and prompt-following of
# the base model and trained runs alike) at well under half the cost (benchmarks/eval_steps.py, docs/RESULTS.md);
# eval inside training spends almost all its time sampling.
EVAL_SAMPLE_STEPS_SMALL = 10
FLOW_MATCHING_SETTINGS = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale")


@dataclass
class TrainConfig:
    """Everything that decides a training run. `None` means: the method's default for this model. Which
    methods take which of these (and their defaults) is the method registry's (methods/registry.py)."""

    method: str
    subject_dir: str = setting(MISSING, help="folder of 1-5 photos of the subject", flag="--subject")
    class_noun: str = setting(MISSING, help="the subject's class noun, e.g. dog", flag="--class")
    out: str = setting(MISSING, help="run folder to write")
    model: str = setting("builtin", help="diffusers folder, .safetensors checkpoint (its configs from NAME.config/ "
                         "beside it, else the hub), hub id, or a built-in name: builtin, tiny (default: builtin)")
    token: str | None = setting(None, help="identifier")  # each method's spec says what it means there
    instance_prompt: str = setting("a {token} {class}", help="training prompt (default: 'a {token} {class}')")
    class_prompt: str = setting("a {class}", help="prompt for class images (default: 'a {class}')")
    steps: int | None = setting(None, AT_LEAST_1, help="training steps")
    lr: float | None = setting(None, POSITIVE, help="learning rate")
    batch_size: int | None = setting(None, AT_LEAST_1, help="samples per step")
    seed: int = setting(0, SEED, help="seed of the noise, timesteps and photo order (default: 0)")
    prior_preservation: bool | None = setting(None, help="class-specific prior preservation: also train on class "
                                              "images from the frozen model, keeping the class's variety")
    prior_weight: float = setting(1.0, NON_NEGATIVE, help="λ, the weight of the prior loss (default: 1)")
    num_class_images: int | None = setting(None, NON_NEGATIVE_INT, help="class images to generate and cache")
    snr_gamma: float | None = setting(None, POSITIVE, help="min-SNR loss weighting γ (e.g. 5): steadier training; "
                                      "off by default")
    weighting_scheme: str = setting("none", choices=WEIGHTING_SCHEMES, help="flow matching (FLUX) only: how "
                                    "training draws timesteps, as diffusers' FLUX scripts: none (uniform), "
                                    "logit_normal or mode (from that density, more of the middle noise levels), "
                                    "sigma_sqrt or cosmap (uniform, the loss weighted by 1/σ² or the cosmap density) "
                                    "(default: none)")
    logit_mean: float = setting(0.0, ANY_FINITE, help="the mean of --weighting-scheme logit_normal (default: 0)")
    logit_std: float = setting(1.0, POSITIVE, help="the std of --weighting-scheme logit_normal (default: 1)")
    mode_scale: float = setting(1.29, MODE_SCALE, help="the scale of --weighting-scheme mode, -1 to 1.75: higher "
                                "draws more of the middle noise levels (default: 1.29)")
    masked_loss: bool | None = setting(None, help="learn only the subject, not the photos' background: the loss "
                                       "counts the pixels of a mask per photo (SUBJECT/masks/NAME.png, white on the "
                                       "subject; else the photo's alpha); a method's default applies where every "
                                       "photo has a mask")
    rank: int = setting(4, AT_LEAST_1, help="LoRA rank: higher learns more detail, in larger files (default: 4)")
    lora_alpha: float | None = setting(None, POSITIVE, help="LoRA alpha; the update is scaled by alpha/rank "
                                       "(default: the rank)")
    train_text_encoder: bool = setting(False, help="also train the text encoder: stronger binding, more drift")
    num_vectors: int = setting(1, Bound(low=1, high=64, integer=True),  # a prompt holds 77 tokens in all
                               help="vectors in the learned embedding: more capacity, slower (default: 1)")
    init_word: str | None = setting(None, help="word the embedding starts from (default: the class)")
    photo: str | None = setting(None, help="the one photo (a file name in --subject) the encoder reads (default: "
                                "the first)", metavar="NAME")
    promptnet: str = setting("builtin", help="the pretrained PromptNet: a folder from 'subjectgen profusion "
                             "pretrain', or builtin (default: builtin)")
    image_encoder: str = setting("builtin", help="the image encoder PromptNet reads: a transformers CLIP vision "
                                 "model folder or hub id, or builtin (default: builtin; on SD 1.x e.g. "
                                 "openai/clip-vit-large-patch14)")
    apprentice: str = setting("builtin", help="the apprentice: a folder from 'subjectgen apprentice train', or builtin "
                              "(default: builtin)")
    images: str | None = None  # a dataset method's images: a folder, or 'world' (the built-in training world); a farm
    captions: bool = False     # profusion pretrain: S* in each world image's caption, not the template
    references: str = "self"   # profusion pretrain: each reference is the target itself, or "instance": an image of it
    noisy_input: bool = True   # profusion pretrain: PromptNet reads x_t beside the reference (the paper's), or not
    objective: str = "apprenticeship"  # apprentice train: expert images as targets, or "reconstruction" (IP-Adapter's)
    num_tokens: int = setting(16, Bound(low=1, high=64, integer=True))  # apprentice train: tokens per demonstration
    ip_values: str = "zero"  # apprentice train: to_v_ip's init, "zero" or "to_v" (IP-Adapter's; ip_adapter.new_state)
    lr_warmup_steps: int = setting(0, NON_NEGATIVE_INT, help="steps of linear learning-rate warm-up (default: 0)")
    max_grad_norm: float = setting(1.0, NON_NEGATIVE, help="gradient clipping norm; 0 turns it off (default: 1)")
    base_quantization: str | None = setting(None, choices=BASE_QUANTIZATIONS, metavar="int8|nf4",
                                            help="hold the frozen base's linear weights (the transformer's or "
                                            "UNet's) in 8 or 4 bits while LoRA trains on top: int8 through torchao, "
                                            "nf4 through bitsandbytes, each on a GPU or the CPU (default: none)")
    mixed_precision: str = setting("no", choices=MIXED_PRECISION, help="fp16/bf16 on a GPU: faster, less memory "
                                   "(default: no)")
    gradient_checkpointing: bool = setting(False, help="recompute activations: less memory, slower")
    aspect_buckets: bool = setting(False, help="keep each photo's aspect ratio: photos go to buckets of about the "
                                   "model's pixels (kohya's --enable_bucket), a step draws from one bucket (its "
                                   "class images cut to it); without it, a centre square")
    optimizer: str = setting("adamw", choices=OPTIMIZERS, help="adamw, or adamw8bit (bitsandbytes' 8-bit AdamW: its "
                             "state in a quarter of the memory) (default: adamw)")
    compile: bool = setting(False, help="torch.compile the UNet's forward and backward: after minutes of start-up, "
                            "steps may run faster, so only long runs can gain; on a 2-core CPU with the built-in "
                            "model 1.03x, never worth it (docs/RESULTS.md). Needs a C++ compiler on a CPU")
    checkpoint_every: int = setting(0, NON_NEGATIVE_INT, help="save a resumable checkpoint every N steps "
                                    "(default: 0, none)")
    captioning: str | None = setting(None, choices=("auto", "off"), flag="--captions",
                                     help="auto: before training, write a caption NAME.txt (with {subject}) beside "
                                     "each photo that has none, with --captioner, so the identifier learns the "
                                     "subject and the caption's words the photo's place; off: make none (photos "
                                     "without a NAME.txt train on the instance prompt)")
    captioner: str | None = setting(None, help="the captioner of --captions auto: a transformers image-to-text model "
                                    "folder or hub id (e.g. Salesforce/blip-image-captioning-base); default on the "
                                    "built-in model: builtin, a CLIP-interrogator over the world's scene words with "
                                    "the generator side's image encoder")
    validate_every: int = setting(0, NON_NEGATIVE_INT, help="write a validation grid every N steps (default: 0)")
    validation_prompts: list[str] = setting(help="prompt with {subject} for validation grids (repeatable; "
                                            "default: 'a {subject}', 'a {subject} on the beach')",
                                            flag="--validation-prompt",
                                            factory=lambda: ["a {subject}", "a {subject} on the beach"])
    eval_every: int | None = setting(None, NON_NEGATIVE_INT, help="score likeness (DINO, CLIP-I) and "
                                     "prompt-following (CLIP-T) every N steps on held-out prompts, beside the base "
                                     "model's: eval.csv")
    eval_prompts: list[str] = setting(help="a held-out prompt with {subject} for --eval-every (repeatable; default: "
                                      "one per DreamBench prompt type: 'a {subject} on the beach', 'a {subject} "
                                      "wearing a santa hat' for a dog or cat, 'a red {subject}')",
                                      flag="--eval-prompt", factory=list)
    eval_sample_steps: int | None = setting(None, SAMPLER_STEPS, help="sampler steps of the eval points' images: "
                                            "fewer than generation's keep --eval-every cheap (default: "
                                            f"{EVAL_SAMPLE_STEPS_SMALL} on the small models, the sampler's steps "
                                            "otherwise)")
    eval_dino: str | None = setting(None, help="DINO for --eval-every: a ViT folder or hub id (default: builtin on "
                                    "the built-in model, else facebook/dino-vits16)")
    eval_clip: str | None = setting(None, help="CLIP for --eval-every: a CLIPModel folder or hub id (default: builtin "
                                    "on the built-in model, else openai/clip-vit-base-patch32)")
    select: str | None = setting(None, choices=("last", "best"), help="the weights a run keeps: the last step's, or "
                                 "with --eval-every the eval point the rule in docs/BENCHMARK.md chooses")
    subject_start: float | None = setting(None, FRACTION_BELOW_1, help="the run's own generate --subject-start, "
                                          "which generate and the bench sample it with unless told otherwise: the "
                                          "fraction of the steps sampled without the subject, so the scene follows "
                                          "the prompt; eval points sample without it")
    sample_steps: int | None = setting(None, SAMPLER_STEPS)  # sampler steps for class images and validation
    guidance: float | None = setting(None, NON_NEGATIVE)  # class images, validation, eval; default: the family's
    allow_pickle: bool = setting(False, help="allow loading pickled weights (.ckpt/.bin): they can run code")

    def __post_init__(self) -> None:
        check_settings(self, registry.get(self.method).bounds if self.method in registry.names(True) else {})
        if self.select == "best" and self.eval_every == 0:
            raise UserError("--select best needs --eval-every N (the eval points it chooses among)")
        if self.captioner is not None and self.captioning != "auto":
            raise UserError("--captioner needs --captions auto (it writes the captions the photos lack)")
        self.check_flow_matching_settings()

    def check_flow_matching_settings(self) -> None:
        """--logit-mean/--logit-std/--mode-scale changed only with the --weighting-scheme that reads them."""
        for name, scheme in (("logit_mean", "logit_normal"), ("logit_std", "logit_normal"), ("mode_scale", "mode")):
            if self.changed(name) and self.weighting_scheme != scheme:
                raise UserError(f"--{name.replace('_', '-')} is read by --weighting-scheme {scheme} only; add it or "
                                "leave the value out")

    def changed_flow_matching_settings(self) -> list[str]:
        """The flow-matching settings set away from their defaults (what a family without flow matching refuses)."""
        return [name for name in FLOW_MATCHING_SETTINGS if self.changed(name)]

    def changed(self, name: str) -> bool:
        return getattr(self, name) != TrainConfig.__dataclass_fields__[name].default

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def identity(self) -> dict:
        """The settings that make two runs the same run (for --resume and --out checks)."""
        same = {k: v for k, v in self.to_dict().items()  # captions, once written, are the photo folder's
                if k not in ("out", "checkpoint_every", "validate_every", "compile", "captioning", "captioner",
                             "subject_start")}  # a sampling default: it changes no weight
        if self.captioning == "off":  # none made, where a method's default makes them (kept in the run, unwritten)
            same["captioning"] = "off"
        return same

    @property
    def alpha(self) -> float:
        """LoRA's alpha: the given one, else the rank (scale 1)."""
        return self.lora_alpha or self.rank


def default_sample_steps(resolution: int) -> int:
    """Sampler steps when none are given: 50 for Stable Diffusion, 25 for the small models."""
    return 50 if resolution >= 256 else 25


def default_eval_sample_steps(resolution: int, sample_steps: int) -> int:
    """--eval-sample-steps when none is given: EVAL_SAMPLE_STEPS_SMALL on the small models (never more than the
    sampler's), else the sampler's own (a step-distilled model's few)."""
    return min(EVAL_SAMPLE_STEPS_SMALL, sample_steps) if resolution < 256 else sample_steps


def default_eval_every(cfg: TrainConfig, builtin: bool) -> int:
    """--eval-every when none is given: on the built-in model (whose evaluators are built in) the method's own points
    spread evenly over the steps (MethodSpec.builtin_eval; none with fewer steps than points), else 0."""
    own = own_eval(cfg, builtin)
    return cfg.steps // own[0] if own and cfg.steps >= own[0] else 0


def default_select(cfg: TrainConfig, builtin: bool) -> str:
    """--select when none is given: with eval points on the built-in model the method's own, else the last step."""
    own = own_eval(cfg, builtin)
    return own[1] if own and cfg.eval_every else "last"


def own_eval(cfg: TrainConfig, builtin: bool) -> tuple[int, str] | None:
    """The method's own (eval points, kept step), which apply on the built-in model only (MethodSpec.builtin_eval)."""
    return registry.get(cfg.method).builtin_eval if builtin else None


def resolve_defaults(cfg: TrainConfig, resolution: int, builtin: bool = False) -> TrainConfig:
    """Fill every `None` setting with the method's default for a model of this resolution (`builtin`: the built-in
    model, whose evaluators and captioner are built in, where a method may score eval points and caption by
    default). A default masked loss applies where every photo has a mask; `--captions off` resolves to None."""
    from . import photos

    spec, small = registry.get(cfg.method), resolution < 256
    data = cfg.to_dict()
    for name, value in (spec.builtin_defaults if builtin else {}).items():
        if data[name] is None:
            data[name] = value
    for name in registry.default_names(cfg.method):
        if data[name] is None:
            data[name] = spec.default(name, small)
    if cfg.masked_loss is None and data["masked_loss"] and not photos.masks_beside(cfg.subject_dir):
        data["masked_loss"] = False  # a default needs the masks a user's photos may lack (the flag asks for them)
    if data["captioning"] == "off":
        data["captioning"] = None  # none made, as before the setting had a default
    if data["sample_steps"] is None:
        data["sample_steps"] = default_sample_steps(resolution)
    if data["prior_preservation"] and data["num_class_images"] < 1:
        raise UserError("--num-class-images must be at least 1 with prior preservation "
                        "(or pass --no-prior-preservation)")
    resolved = TrainConfig.from_dict(data)
    if resolved.eval_every is None:
        resolved.eval_every = default_eval_every(resolved, builtin)
    if resolved.select is None:
        resolved.select = default_select(resolved, builtin)
    return resolved


def defaults_changed(record: dict | None, cfg: TrainConfig) -> list[str]:
    """The defaults a finished run's manifest (`record`; None: no run yet) got that `cfg` would give it now, as
    'name old -> new': a folder of runs (a bench's pairs, a farm's experts) must not go on at a version's other
    defaults. The run's own photos decide a default masked loss; a setting newer than the run is not compared."""
    from dataclasses import replace

    from .assets import builtin_path

    if record is None:
        return []
    builtin = builtin_path("model", cfg.model) is not None
    saved = record.get("settings", {})
    now = resolve_defaults(replace(cfg, subject_dir=saved.get("subject_dir", cfg.subject_dir)), record["resolution"],
                           builtin).to_dict()
    return [f"{k} {saved[k]} -> {now[k]}" for k in (*registry.default_names(cfg.method), "eval_every", "select")
            if k in saved and saved[k] != now[k]]


@dataclass
class SampleSettings:
    """How `generate` samples: images per prompt, seeds, steps, guidance, and how much of the subject."""

    n: int = setting(4, AT_LEAST_1)
    seed: int = setting(0, SEED)
    steps: int | None = setting(None, SAMPLER_STEPS)   # default: 50 for SD, 25 for small models
    guidance: float | None = setting(None, NON_NEGATIVE)  # default: the family's (7.5; FLUX.1's embedding 3.5)
    lora_scale: float = setting(1.0, ANY_FINITE)
    subject_start: float | None = setting(None, FRACTION_BELOW_1)  # default: the run's own (train --subject-start)
    batch_size: int = setting(8, AT_LEAST_1)  # images sampled at once (the pipeline's num_images_per_prompt)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class FusionSettings:
    """ProFusion's Fusion Sampling at generation (its `generate` flags). The defaults are the reference notebook's
    (ref cfg 5, one fusion stage, emb scale 0.6, refine cfg 7, η 1); --guidance is s₁."""

    fusion: bool = setting(True, help="Fusion Sampling (--no-fusion: plain guidance with S*)")
    refine_steps: int = setting(1, NON_NEGATIVE_INT, help="fusion stages per step (default: 1)")
    refine_emb_scale: float = setting(0.6, NON_NEGATIVE, help="S*'s weight in the fusion stage's prompt (default: 0.6)")
    ref_guidance: float = setting(5.0, NON_NEGATIVE, help="s₂: guidance toward the prompt with the class noun in S*'s "
                                  "place (default: 5)")
    refine_guidance: float = setting(7.0, NON_NEGATIVE, help="the fusion stage's guidance (default: 7)")
    eta: float = setting(1.0, Bound(low=0, high=1), help="DDIM η of the steps (default: 1)")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class ApprenticeSettings:
    """The apprentice's generation setting (its `generate` flag)."""

    ip_scale: float = setting(1.0, NON_NEGATIVE, help="the demonstrations' weight in every cross-attention layer "
                              "(IP-Adapter's scale): lower follows the prompt more and the subject less (default: 1)")

    def __post_init__(self) -> None:
        check_settings(self)


# A method's own generation settings, by method (Method.sample_options): the flags of generate and bench.
SAMPLE_OPTIONS = {"profusion": FusionSettings, "apprentice": ApprenticeSettings}


def options_for(settings_class, options: dict) -> dict:
    """The given generation options that belong to `settings_class` (None: a method with none)."""
    own = {f.name for f in fields(settings_class)} if settings_class else set()
    return {k: v for k, v in options.items() if k in own}


def check_sample_options(options: dict) -> None:
    """Each option within its range (a one-line error), and each one some method's."""
    for settings_class in SAMPLE_OPTIONS.values():
        settings_class(**options_for(settings_class, options))
    known = {f.name for c in SAMPLE_OPTIONS.values() for f in fields(c)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown generation option {unknown[0]}")


@dataclass
class FarmSettings:
    """The apprentice's expert farm (`subjectgen apprentice experts`, methods/farm.py)."""

    model: str = "builtin"
    clusters: str = "world"          # the built-in world's, or a folder in DreamBench's layout
    count: int = setting(64, AT_LEAST_1)   # the world's clusters (a folder's are all its subjects)
    seed: int = setting(0, SEED)
    expert_steps: int | None = setting(None, AT_LEAST_1)  # each expert's LoRA steps (default: the LoRA method's)
    images: int = setting(8, AT_LEAST_1)   # prompts each expert draws, one image each
    sample_steps: int | None = setting(None, SAMPLER_STEPS)
    guidance: float = setting(7.5, NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_settings(self)


# The ΔCLIP filter's thresholds on the built-in model (methods/farm.py), chosen on the validation subjects by
# benchmarks/apprentice.py's rule (--only thresholds): each the cut that best separates the world's own renders of
# a subject in a scene from renders that are not that (tau_s: another instance of its class in the same scene;
# tau_t: a new photo of the subject in its own places, which follows no prompt).
FILTER_TAU_T, FILTER_TAU_S = 0.257, 0.012


# A method's own training settings the bench passes on (train's flags): each reaches the bench's methods that take it.
BENCH_TRAIN_OPTIONS = ("rank", "lora_alpha", "prior_preservation", "prior_weight", "num_class_images", "num_vectors",
                       # what a big model needs on a GPU (the bench samples in --mixed-precision's dtype and holds
                       # the base as --base-quantization says: eval.bench.sampling_precision)
                       "mixed_precision", "gradient_checkpointing", "base_quantization", "optimizer")


def method_takes(method: str, name: str) -> bool:
    """Whether `train METHOD` has a flag for the TrainConfig setting `name`: its own, or a shared one (a setting
    with help that no method owns) it does not drop."""
    spec = registry.get(method)
    if not any(f.name == name and "help" in f.metadata for f in fields(TrainConfig)):
        return False
    owned = {n for other in registry.REGISTRY.values() for n in other.own_settings}
    return name in spec.own_settings or (name not in owned and name not in spec.drops)


def option_users(name: str) -> list[str]:
    """The `train` methods that take the setting `name`."""
    return [m for m in registry.names() if method_takes(m, name)]


def method_bound(method: str, name: str) -> Bound | None:
    """A setting's range for one method (its own where it differs from the declaration's)."""
    return registry.get(method).bounds.get(name, bound_of(TrainConfig, name))


def train_options_for(method: str, options: dict) -> dict:
    """The bench's training options that `method` takes."""
    return {k: v for k, v in options.items() if method_takes(method, k)}


def check_train_options(options: dict, methods: list[str]) -> None:
    """Each option one of BENCH_TRAIN_OPTIONS, taken by one of the bench's methods at least, and within the range
    of each method that takes it: a one-line error naming the flag (how they combine with each method's defaults,
    eval.bench.check_pair_settings)."""
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name not in BENCH_TRAIN_OPTIONS:
            raise UserError(f"{flag} is not a training setting the bench passes on "
                            f"({', '.join(BENCH_TRAIN_OPTIONS)})")
        takers = [m for m in methods if m in registry.names() and method_takes(m, name)]
        if not takers:
            raise UserError(f"{flag}: none of the bench's methods ({', '.join(methods)}) takes it; it is for "
                            f"{', '.join(option_users(name))} (a folder started with it keeps it: name such a "
                            "method again, its finished pairs are reused)")
        choices = choices_of(TrainConfig, name)
        if choices is not None:
            if value not in choices:
                raise UserError(f"{flag} {value}: choose one of {', '.join(choices)}")
            continue
        for method in takers:
            bound = method_bound(method, name)
            if bound is None and not isinstance(value, bool):
                raise UserError(f"{flag} takes no value: give {flag} or --no-{flag[2:]}")
            if bound is not None and (isinstance(value, bool) or not bound.allows(value)):
                raise UserError(f"{flag} {value}: {method} needs {bound.describe()}")


# bench.json's version. 2: None for `subject_start`, `eval_every` and `select` is each run's own, as `train` and
# `generate` do by default (eval.report.read_protocol reads a version-1 folder's 0, 0 and "last" as None: the same
# images, as no eval point changes the weights a run keeps last). 3: None for `masked_loss` and `captioning` is each
# method's own (a version-2 folder reads as what its pairs trained at: its masked_loss, captioning "off"; resuming it
# takes --no-masked-loss --captions off, which the error names). 4: `train_options` (BENCH_TRAIN_OPTIONS), {} in an
# older folder.
BENCH_PROTOCOL_VERSION = 4


@dataclass
class BenchConfig:
    bench: str                      # a folder in DreamBench's layout, or "emoji"
    out: str
    methods: list[str] = field(default_factory=lambda: registry.names())  # default: every registered method
    model: str = "builtin"
    subjects: list[str] | None = None
    prompts: int | None = setting(None, AT_LEAST_1)      # the first N prompts of each list
    images_per_prompt: int = setting(4, AT_LEAST_1)
    pres_images: int = setting(4, NON_NEGATIVE_INT)  # PRES: images of the class prompt alone per subject (0: none)
    seed: int = setting(0, SEED)
    sample_steps: int | None = setting(None, SAMPLER_STEPS)  # default: 25 below 256 px, else 50
    guidance: float | None = setting(None, NON_NEGATIVE)  # default: the model family's (7.5; FLUX.1's 3.5)
    train_steps: int | None = setting(None, NON_NEGATIVE_INT)  # default: each method's own (0: profusion's encoder)
    train_lr: float | None = setting(None, POSITIVE)  # default: each method's own
    promptnet: str = "builtin"      # ProFusion's pretrained PromptNet (train profusion --promptnet)
    apprentice: str = "builtin"     # the apprentice (train apprentice --apprentice)
    # train on the subject's masks only (SUBJECT/masks/, as EmojiBench ships); None: each method's own, where masks are
    masked_loss: bool | None = None
    captioning: str | None = setting(None, choices=("off",))  # off: no captions made; None: each method's own
    # each trained run's eval points (train --eval-every; 0: none) and the step it keeps (train --select); None:
    # each method's own, as `train` does by default on the model
    eval_every: int | None = setting(None, NON_NEGATIVE_INT)
    select: str | None = setting(None, choices=("last", "best"))
    eval_sample_steps: int | None = setting(None, SAMPLER_STEPS)  # the eval points' sampler steps (train's flag)
    # steps sampled without the subject (generate's flag); None: each run's own (train --subject-start)
    subject_start: float | None = setting(None, FRACTION_BELOW_1)
    sample_options: dict = field(default_factory=dict)  # a method's own generation settings (FusionSettings' flags)
    train_options: dict = field(default_factory=dict)  # a method's own training settings (BENCH_TRAIN_OPTIONS)
    dino: str | None = None         # default: built-in for EmojiBench, the real ones otherwise
    clip: str | None = None
    runs_from: str | None = None    # an earlier bench folder whose runs and baseline to reuse (reusable())
    # Content hashes of the model and evaluators (assets.fingerprint), filled in by resolve_config: a folder
    # must not resume with other weights under the same name, as `builtin` gets after a retrain.
    model_hash: str | None = None
    dino_hash: str | None = None
    clip_hash: str | None = None

    def __post_init__(self) -> None:
        check_settings(self)
        check_sample_options(self.sample_options)
        check_train_options(self.train_options, self.methods)
        if self.select not in (None, "last", "best"):
            raise UserError(f"--select must be last or best, got {self.select!r}")
        if self.select == "best" and not self.eval_every:
            raise UserError("--select best needs --eval-every N (the eval points each run chooses among)")
        for name in self.methods:  # --train-steps within each method's own range (0 only where it means something)
            if name in registry.names() and self.train_steps is not None and "steps" not in registry.get(name).drops:
                bound = method_bound(name, "steps")
                if not bound.allows(self.train_steps):
                    raise UserError(f"--train-steps {self.train_steps}: {name} needs {bound.describe()}")

    def protocol(self) -> dict:
        """What decides the numbers; a rerun in the same folder must match it. The methods do not: a
        later run may add a method to a finished benchmark. `version`: how to read it (eval.report.read_protocol
        reads an older one as this version's)."""
        return {**{k: v for k, v in asdict(self).items() if k not in ("out", "methods", "runs_from")},
                "version": BENCH_PROTOCOL_VERSION}
