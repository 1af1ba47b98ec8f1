"""The command line: parse, call the Python API, print. `subjectgen --help` lists the commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import MISSING, fields
from pathlib import Path

# Quiet the libraries' import-time chatter (e.g. transformers on a missing torchvision) for CLI users; torchao, where
# installed (--base-quantization int8), is imported by transformers, diffusers and peft and lists the GPU kernels a CPU
# build lacks; bitsandbytes, where installed (nf4, adamw8bit), is imported by peft and names a hub kernel it cannot
# fetch.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
for _name in ("torchao", "torch.utils._pytree", "bitsandbytes"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from .config import (BASE_QUANTIZATIONS, BENCH_TRAIN_OPTIONS, FILTER_TAU_S, FILTER_TAU_T,  # noqa: E402
                     GENERATION_DTYPES, SAMPLE_OPTIONS,
                     ApprenticeSettings, BenchConfig, FarmSettings, FusionSettings, SampleSettings, TrainConfig,
                     method_takes, option_users)
from .errors import UserError  # noqa: E402
from .methods import registry  # noqa: E402
from .settings import ANY_FINITE, AT_LEAST_1, POSITIVE, SEED, arg_type, flag_of, number_type  # noqa: E402
from .workers import default_workers, workers_type  # noqa: E402
from .world.config import EvaluatorTrainConfig, VaeTuneConfig, WorldTrainConfig  # noqa: E402


def train_type(name: str):
    return arg_type(TrainConfig, name)


def sample_type(name: str):
    return arg_type(SampleSettings, name)


def bench_type(name: str):
    return arg_type(BenchConfig, name)


def world_type(name: str):
    return arg_type(WorldTrainConfig, name)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage block is one --help away); a misspelt flag is named, with the
    nearest flag of the command it was given to ("did you mean --steps?"), even where argparse would first
    complain of a required flag it hid (--subjet for --subject)."""

    words: list[str] = []   # what is being parsed (parse() sets it)
    top_flags: set = set()  # the flags the top-level parser takes (--threads)

    def error(self, message: str):
        unknown = self.unknown_flags()
        if unknown and (message.startswith("the following arguments are required")
                        or message.startswith("unrecognized arguments")):
            message = self.suggestion(unknown[0])
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")

    def unknown_flags(self) -> list[str]:
        known = set(self._option_string_actions) | Parser.top_flags
        return [w.split("=", 1)[0] for w in Parser.words if w.startswith("--") and w.split("=", 1)[0] not in known]

    def suggestion(self, flag: str) -> str:
        import difflib

        flags = {f[2:]: f for f in self._option_string_actions if f.startswith("--")}  # the dashes match anything
        near = difflib.get_close_matches(flag[2:], list(flags), n=1, cutoff=0.6)
        return f"unknown flag {flag}" + (f"; did you mean {flags[near[0]]}?" if near else "")


def add_train_parser(sub) -> None:
    """`train METHOD`: one parser per registered method, offering the shared settings and its own, built from
    the settings' declarations (config.TrainConfig) and the method's spec (methods/registry.py)."""
    train = sub.add_parser("train", help="personalize a model on photos of one subject")
    methods = train.add_subparsers(dest="method", metavar="METHOD", required=True, parser_class=Parser)
    for spec in map(registry.get, registry.names()):
        p = methods.add_parser(spec.name, help=spec.help, description=spec.help)
        for f in fields(TrainConfig):
            if method_takes(spec.name, f.name):
                add_setting(p, f, spec)
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                       "(it may lower --lr, e.g. after a diverged run)")
        p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
        p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_setting(parser, f, spec) -> None:
    """One flag from a setting's declaration: its name, type and range, choices, help with its default."""
    meta, name = f.metadata, flag_of(f)
    text = spec.token_help if f.name == "token" else meta["help"]
    per_size = spec.defaults_text(f.name)
    text = f"{text} ({per_size})" if per_size else text
    kwargs = {"dest": f.name, "help": text}
    if (str(f.type).startswith("str") and "choices" not in meta) or f.default_factory is not MISSING:
        kwargs["metavar"] = meta.get("metavar", name.lstrip("-").split("-")[-1].upper())
    if f.default is MISSING and f.default_factory is MISSING:
        kwargs["required"] = True
    elif f.type in ("bool | None",):  # a method's default decides unless --X or --no-X (prior preservation)
        kwargs.update(action=argparse.BooleanOptionalAction, default=None)
    elif f.type in ("bool", bool):
        kwargs["action"] = "store_true"
    elif f.default_factory is not MISSING:
        kwargs["action"] = "append"
        kwargs["metavar"] = "PROMPT"
    else:
        kwargs["default"] = None if f.default is None else f.default
        bound = spec.bounds.get(f.name, meta.get("bound"))
        if bound is not None:
            kwargs["type"] = number_type(bound)
            kwargs["metavar"] = "N" if bound.integer else "X"
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
    parser.add_argument(name, **kwargs)


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate images from a trained run (or a plain model)")
    p.add_argument("run", help="run folder from 'subjectgen train' (or a model reference for baselines)")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompts; {subject} becomes the learned subject")
    p.add_argument("-n", type=sample_type("n"), default=4, help="images per prompt")
    p.add_argument("--seed", type=sample_type("seed"), default=0, metavar="N",
                   help="image k of each prompt uses seed N+k, so a seed gives the same image again (default: 0)")
    p.add_argument("--steps", type=sample_type("steps"),
                   help="sampler steps (default 50 for SD, 25 for small models)")
    p.add_argument("--guidance", type=sample_type("guidance"), default=None, metavar="X",
                   help="guidance: higher follows the prompt more, with less variety (default: 7.5; on FLUX.1-dev, "
                   "whose guidance is an embedding, 3.5)")
    p.add_argument("--negative-prompt", default="", metavar="TEXT", help="what to steer away from (default: none)")
    p.add_argument("--lora-scale", type=sample_type("lora_scale"), default=1.0,
                   help="weight of a LoRA run's update (kohya's network multiplier): below 1 follows the prompt "
                        "more and the subject less; 0 is the base model")
    p.add_argument("--subject-start", type=sample_type("subject_start"), default=None, metavar="FRACTION",
                   help="sample this fraction of the steps without the subject (the class noun on the base "
                        "weights) before it comes in, so the scene follows the prompt; like A1111's "
                        "[a dog:a sks dog:0.2] with the LoRA switched on at the same step (default: the run's own, "
                        "train --subject-start: 0 unless its method's default on the model says otherwise)")
    p.add_argument("--batch-size", type=sample_type("batch_size"), default=8, metavar="N",
                   help="images sampled at once: larger is faster per image while memory lasts; a seed gives the "
                        "same image at any batch size, up to float rounding (default: 8)")
    p.add_argument("--references", metavar="DIR", help="photos of the subject the model's pipeline takes as "
                   "reference images, beside a run's own (FLUX.2 [klein]: up to 4)")
    p.add_argument("--dtype", choices=list(GENERATION_DTYPES), default="fp32",
                   help="the text encoders' and denoiser's precision: bf16 or fp16 halve their memory, for a big "
                        "model on a GPU (the VAE stays fp32; default: fp32)")
    p.add_argument("--base-quantization", choices=BASE_QUANTIZATIONS, metavar="int8|nf4",
                   help="the denoiser's linear layers (a LoRA's own aside) in 8 or 4 bits, as train "
                        "--base-quantization holds them: a 12 B FLUX.1 in 12 or 6 GB (default: none)")
    p.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled weights (.ckpt/.bin): they "
                   "can run code")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_method_sample_flags(p)


def add_method_sample_flags(parser) -> None:
    """The methods' own generation flags (config.SAMPLE_OPTIONS: Fusion Sampling's, the apprentice's), for
    generate and bench; unset ones keep the defaults."""
    groups = {FusionSettings: "profusion runs (Fusion Sampling)", ApprenticeSettings: "apprentice runs"}
    for settings_class in SAMPLE_OPTIONS.values():
        group = parser.add_argument_group(groups[settings_class])
        for f in fields(settings_class):
            if f.name == "fusion":
                group.add_argument("--no-fusion", dest="fusion", action="store_false", default=None,
                                   help="sample plainly with S*, without Fusion Sampling")
            else:
                group.add_argument(flag_of(f), dest=f.name, type=arg_type(settings_class, f.name), metavar="N" if
                                   f.metadata["bound"].integer else "X", help=f.metadata["help"])


def add_method_train_flags(parser) -> None:
    """The methods' own training flags the bench passes on (config.BENCH_TRAIN_OPTIONS), as train declares them;
    each reaches the methods that take it, unset ones keep each method's default."""
    group = parser.add_argument_group("the methods' own training settings, for the methods that take them "
                                      "(default: each method's)")
    declared = {f.name: f for f in fields(TrainConfig)}
    for name in BENCH_TRAIN_OPTIONS:
        f = declared[name]
        needs = " with --prior-preservation" if name in ("prior_weight", "num_class_images") else ""
        kwargs = {"dest": f"train_{name}", "default": None,
                  "help": f"{f.metadata['help']} [{', '.join(option_users(name))}{needs}]"}
        if f.metadata.get("choices"):
            kwargs.update(choices=f.metadata["choices"], metavar=f.metadata.get("metavar"))
        elif f.metadata.get("bound") is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=arg_type(TrainConfig, name), metavar="N" if f.metadata["bound"].integer else "X")
        group.add_argument(flag_of(f), **kwargs)


def train_options(args) -> dict:
    """The methods' own training settings given on the bench's command line (only those given)."""
    return {name: getattr(args, f"train_{name}") for name in BENCH_TRAIN_OPTIONS
            if getattr(args, f"train_{name}", None) is not None}


def sample_options(args) -> dict:
    """The methods' own generation settings given on the command line (only those given)."""
    return {f.name: getattr(args, f.name) for c in SAMPLE_OPTIONS.values() for f in fields(c)
            if getattr(args, f.name, None) is not None}


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="personalize the built-in model on its sample subject (CPU, under a minute)")
    p.add_argument("--out", default="demo", help="folder for the report (replaced if it exists)")
    p.add_argument("--subject", help="an EmojiBench subject to personalize on instead of the demo's own (a validation "
                   "subject chosen, with its prompts, on the validation set: benchmarks/demo_choice.py)")
    p.add_argument("--model", default="builtin", help="base model to personalize (default: builtin)")
    p.add_argument("--steps", type=train_type("steps"), help="LoRA training steps (default: the method's)")
    p.add_argument("--quiet", action="store_true", help="no phases and progress bars")


def add_world_train_parser(world) -> None:
    t = world.add_parser("train", help="train the built-in model from a seed, or continue a model on World v3 "
                         "(--init, in resumable slices); writes a diffusers folder")
    t.add_argument("--out", required=True, help="folder for the pipeline (copy it to assets/builtin to ship it)")
    t.add_argument("--init", help="continue this model's UNet and text encoder (a built-in name or a diffusers "
                   "folder) on World v3's training split instead of training from a seed; slices with "
                   "--max-minutes, --resume (default schedule: 10000 steps of batch 64)")
    t.add_argument("--seed", type=world_type("seed"), help="seed of the weights and data order (default: 0; with "
                   "--init 5)")
    t.add_argument("--vae-steps", type=world_type("vae_steps"), help="VAE steps (default: 3000)")
    t.add_argument("--unet-steps", type=world_type("unet_steps"),
                   help="UNet steps: the length of its learning-rate schedule (default: 12000; with --init 10000)")
    t.add_argument("--vae-batch", type=world_type("vae_batch"), help="VAE batch (default: 128)")
    t.add_argument("--unet-batch", type=world_type("unet_batch"), help="UNet batch (default: 256; with --init 64)")
    t.add_argument("--stop-step", type=world_type("unet_stop_step"), help="stop UNet training after this step; the "
                   "learning-rate schedule still spans --unet-steps (how a run cut by --max-seconds is reproduced; "
                   "with --init: where this slice ends)")
    t.add_argument("--max-seconds", type=world_type("unet_max_seconds"), help="stop UNet training after this long; the "
                   "record's unet_stop_step says where, so the run can be reproduced with --stop-step")
    t.add_argument("--max-minutes", type=number_type(POSITIVE), help="with --init: end this slice after about this "
                   "long, its state saved and the model folder written; --resume continues it")
    t.add_argument("--resume", action="store_true", help="with --init: continue the run whose state is in --state")
    t.add_argument("--state", help="with --init: folder for the slice state (default: under the cache folder, "
                   "~/.cache/subjectgen/world-train/, named by --out)")
    t.add_argument("--workers", type=number_type(AT_LEAST_1), default=2, help="processes rendering the world")
    t.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    add_overwrite(t)


def add_train_vae_parser(world) -> None:
    v = world.add_parser("train-vae", help="continue a model's VAE on World v3's images, in resumable slices (CPU)")
    v.add_argument("--out", required=True, help="folder for the model: --init's folder with the continued VAE, "
                   "written at the end of every slice")
    for f in fields(VaeTuneConfig):
        if "help" not in f.metadata:
            continue
        kwargs = {"dest": f.name, "default": f.default, "help": f"{f.metadata['help']} (default: {f.default})"}
        if "bound" in f.metadata:
            kwargs["type"] = number_type(f.metadata["bound"])
        kwargs.update({"choices": f.metadata["choices"]} if "choices" in f.metadata else {})
        v.add_argument(flag_of(f), **kwargs)
    v.add_argument("--max-minutes", type=number_type(POSITIVE), help="end this slice after about this long, with "
                   "its state saved and the model folder written; --resume continues it")
    v.add_argument("--stop-step", type=number_type(AT_LEAST_1), help="end this slice after this step")
    v.add_argument("--resume", action="store_true", help="continue the run whose state is in --state")
    v.add_argument("--state", help="folder for the slice state (default: under the cache folder, "
                   "~/.cache/subjectgen/world-train/, named by --out)")
    v.add_argument("--workers", type=number_type(AT_LEAST_1), default=1, help="processes rendering the world")
    add_overwrite(v)


def add_world_parser(sub) -> None:
    p = sub.add_parser("world", help="rebuild the built-in emoji world and its models (needs the emoji sources)")
    world = p.add_subparsers(dest="world_command", metavar="STEP", required=True, parser_class=Parser)
    b = world.add_parser("build", help="render EmojiBench (and optionally the training set) from the emoji sources")
    b.add_argument("--out", default=None, help="subjects folder (default: EmojiBench's, shipped in the package)")
    b.add_argument("--training-set", help="also render the training set into this folder")
    b.add_argument("--set", choices=("emojibench", "validation"), default="emojibench",
                   help="which subjects to render: EmojiBench (the test set) or the validation subjects, which are "
                        "neither in training nor in EmojiBench and are where settings get chosen (needs --out)")
    b.add_argument("--seeds", type=arg_type(WorldTrainConfig, "render_seeds"), default=6,
                   help="renders per (instance, context) for plain captions (default: 6)")
    r = world.add_parser("reserved", help="sample fresh held-out subjects from the reserved region (instances no "
                         "training or evaluator set renders) and write them as a bench folder")
    r.add_argument("--count", type=number_type(AT_LEAST_1), default=15, help="how many subjects (default: 15)")
    r.add_argument("--seed", type=number_type(SEED), default=0, help="which sample (default: 0)")
    r.add_argument("--classes", help="comma-separated class nouns to cycle through (default: DreamBench's 15)")
    r.add_argument("--out", help="bench folder to write (DreamBench's layout, with subjects.json); without it, the "
                   "sample is only listed")
    for step in (b, r):
        add_overwrite(step)
    add_world_train_parser(world)
    add_train_vae_parser(world)
    i = world.add_parser("train-image-encoder", help="train the generator side's CLIP image tower (ProFusion's "
                         "PromptNet reads it) against the built-in model's frozen text encoder (CPU)")
    i.add_argument("--out", required=True, help="folder for the transformers model (copy it to assets/image_encoder "
                   "to ship it)")
    add_overwrite(i)
    i.add_argument("--model", default="builtin", help="the base model whose text encoder it learns to match")
    i.add_argument("--steps", type=number_type(AT_LEAST_1), default=800, help="training steps (default: 800)")
    i.add_argument("--workers", type=number_type(AT_LEAST_1), default=1, help="processes rendering the world")
    e = world.add_parser("train-evaluators", help="train the built-in CLIP and DINO evaluators (CPU)")
    e.add_argument("--out", required=True, help="folder for clip/ and dino/ (copy it to assets/evaluators to ship it)")
    add_overwrite(e)
    e.add_argument("--seed", type=arg_type(EvaluatorTrainConfig, "seed"), default=7,
                   help="the evaluators' own seed, not the generator's (default: 7)")
    e.add_argument("--clip-steps", type=arg_type(EvaluatorTrainConfig, "clip_steps"), default=1500,
                   help="CLIP steps (default: 1500)")
    e.add_argument("--dino-steps", type=arg_type(EvaluatorTrainConfig, "dino_steps"), default=2000,
                   help="DINO steps (default: 2000)")
    e.add_argument("--workers", type=number_type(AT_LEAST_1), default=2, help="processes rendering the world")
    e.add_argument("--dino-instance-views", action=argparse.BooleanOptionalAction, default=True,
                   help="DINO's two global views from two renders of one instance (another scene or place); "
                   "--no-dino-instance-views: one image's crops, as DINO on ImageNet (default: on)")
    e.add_argument("--dino-instance-nce", type=arg_type(EvaluatorTrainConfig, "dino_instance_nce"), default=1.0,
                   metavar="X", help="with instance views: the weight of an InfoNCE term on the two global views "
                   "(each finds its partner render in the batch; 0: DINO's loss alone; default: 1)")
    e.add_argument("--keep-clip", metavar="DIR", help="reuse the CLIP of an earlier run on the same data (DIR/clip, "
                   "DIR/training.json) and train DINO only")


def add_overwrite(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace a folder subjectgen wrote before (a folder "
                        "of other files is never replaced)")


def add_profusion_parser(sub) -> None:
    p = sub.add_parser("profusion", help="ProFusion's own steps: pretrain a PromptNet for a base model")
    steps = p.add_subparsers(dest="profusion_command", metavar="STEP", required=True, parser_class=Parser)
    spec = registry.get("profusion-pretrain")
    t = steps.add_parser("pretrain", help="pretrain a PromptNet (the encoder from a photo to S*) for any SD model",
                         description="PromptNet from the base UNet's encoder half, trained on images with everything "
                         "else frozen; the plain denoising loss on 'a photo of S*', no regularization. Writes a "
                         "PromptNet folder for 'train profusion --promptnet'.")
    t.add_argument("--images", default=None, help="folder of images to pretrain on, or 'world': the built-in world's "
                   "training split (default: world on the built-in model)")
    for f in fields(TrainConfig):
        if f.name in ("out", "model", "steps", "lr", "batch_size", "seed", "num_vectors", "image_encoder",
                      "mixed_precision", "checkpoint_every", "lr_warmup_steps", "max_grad_norm"):
            add_setting(t, f, spec)
    t.add_argument("--captions", action="store_true", help="splice S* into each image's own caption in place of its "
                   "class noun ('a striped S* on the beach'), not into the template 'a photo of S*', so S* learns the "
                   "subject and the words the scene (needs --images world)")
    t.add_argument("--references", choices=("self", "instance"), default="self",
                   help="what PromptNet reads for each training image: 'self', the image itself (the paper's "
                   "pretraining), or 'instance', another image of the same identity (the world's instance; for "
                   "--images DIR, its subfolder), meant to make S* carry what stays the same across scenes; on the "
                   "built-in world PromptNet learned to ignore such a reference (docs/RESULTS.md) (default: self)")
    t.add_argument("--no-noisy-input", dest="noisy_input", action="store_false", default=True,
                   help="PromptNet reads the reference alone, not also the noisy latent x_t (the paper's PromptNet "
                   "reads both; x_t lets S* carry the sample being denoised rather than the reference's subject)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def run_profusion(args) -> None:
    from .training import train

    if args.images is None and args.model != "builtin":
        raise UserError("--images is needed for a model other than the built-in one (a folder of photos)")
    options = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    cfg = TrainConfig(method="profusion-pretrain", subject_dir=None, class_noun=None, **options)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if result.manifest:
        print(f"pretrained a PromptNet in {result.seconds:.1f}s, final loss {result.final_loss:.4f}: {result.run_dir} "
              f"(use it with 'subjectgen train profusion --promptnet {result.run_dir}')")


def add_apprentice_parser(sub) -> None:
    p = sub.add_parser("apprentice", help="SuTI's steps: an expert farm, its ΔCLIP filter, the apprentice's training")
    steps = p.add_subparsers(dest="apprentice_command", metavar="STEP", required=True, parser_class=Parser)
    e = steps.add_parser("experts", help="train one DreamBooth-LoRA expert per cluster and let each draw its subject "
                         "in new scenes (resumable; split across 'accelerate launch' processes)")
    e.add_argument("--out", required=True, metavar="FARM", help="the farm's folder")
    e.add_argument("--model", default="builtin", help="the base model the experts and the apprentice stand on")
    e.add_argument("--clusters", default="world", metavar="world|DIR",
                   help="'world' (the built-in world's subjects outside its reserved "
                   "region) or a folder in DreamBench's layout, one subject folder of 3+ photos each")
    for name, text in (("count", "experts, on the world (default: 64)"), ("seed", "which clusters and seeds "
                       "(default: 0)"), ("expert_steps", "each expert's LoRA steps (default: the lora method's)"),
                       ("images", "prompts each expert draws, one image each (default: 8)"),
                       ("sample_steps", "sampler steps (default: 25 on the small models, 50 on SD)"),
                       ("guidance", "classifier-free guidance (default: 7.5)")):
        e.add_argument("--" + name.replace("_", "-"), type=arg_type(FarmSettings, name), help=text,
                       metavar="X" if name == "guidance" else "N")
    e.add_argument("--workers", type=workers_type, default=default_workers(), metavar="N|auto",
                   help="train the experts in N local processes, the clusters split among them (as under accelerate "
                        "launch); auto (the default): as bench --workers, one process per core at one thread each on "
                        "a CPU with a small model, else one (on 2 cores a farm of 4: 1.51x faster than one process "
                        "at two threads)")
    e.add_argument("--quiet", action="store_true", help="no progress lines")
    f = steps.add_parser("filter", help="keep the expert images that follow their prompt better than the "
                         "demonstrations and are still the subject (SuTI's ΔCLIP rule); writes filter.json and sheets")
    f.add_argument("farm", help="the farm's folder")
    f.add_argument("--tau-t", type=number_type(ANY_FINITE), default=FILTER_TAU_T, metavar="X", help="the least CLIP-T(image, prompt) "
                   f"- CLIP-T(demos, prompt) kept (default: {FILTER_TAU_T:g}, chosen on the validation subjects)")
    f.add_argument("--tau-s", type=number_type(ANY_FINITE), default=FILTER_TAU_S, metavar="X", help="the least image similarity to "
                   f"the demonstrations kept (default: {FILTER_TAU_S:g}, chosen on the validation subjects)")
    f.add_argument("--image-encoder", default="builtin", help="the generator side's image encoder, with its "
                   "text_projection.safetensors (default: builtin)")
    t = steps.add_parser("train", help="train the apprentice (IP-Adapter Plus's architecture) on a farm's kept "
                         "images; writes an IP-Adapter folder for 'train apprentice --apprentice' and diffusers")
    t.add_argument("farm", help="the farm's folder (filtered)")
    t.add_argument("--objective", choices=("apprenticeship", "reconstruction"), default="apprenticeship",
                   help="apprenticeship: the experts' images are the targets (SuTI); reconstruction: each photo is its "
                        "own target, conditioned on views of itself (IP-Adapter's way, the ablation)")
    t.add_argument("--num-tokens", type=train_type("num_tokens"), default=16, metavar="N",
                   help="tokens per demonstration (default: 16, IP-Adapter Plus's)")
    t.add_argument("--ip-values", choices=("zero", "to_v"), default="zero",
                   help="to_v_ip's start: zero (the image branch starts as a no-op and grows; default) or to_v "
                        "(IP-Adapter's own init, a copy of the text's values)")
    spec = registry.get("apprentice-train")
    for fld in fields(TrainConfig):
        if fld.name in ("out", "steps", "lr", "batch_size", "seed", "image_encoder", "mixed_precision",
                        "checkpoint_every", "lr_warmup_steps", "max_grad_norm"):
            add_setting(t, fld, spec)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def run_apprentice(args) -> None:
    if args.apprentice_command == "experts":
        from .methods.farm import check_farm_settings, clusters_of, run_farm, throughput
        from .workers import choose_workers, launch_local

        given = {k: getattr(args, k) for k in FarmSettings.__dataclass_fields__ if getattr(args, k, None) is not None}
        settings = FarmSettings(**given)
        choice = choose_workers(args.workers, len(clusters_of(settings)), settings.model, args.threads)
        if choice.workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            check_farm_settings(Path(args.out), settings)  # once, here: a refusal stops the farm before it starts
            print(f"farm: {choice.workers} worker processes ({choice.why})", flush=True)  # --quiet too: one line
            argv = sys.argv[1:] if args.argv is None else args.argv
            launch_local(without_flag(argv, "--workers"), choice.workers, "farm")
            made = throughput(Path(args.out))
        else:
            made = run_farm(Path(args.out), settings, progress=not args.quiet)
        print(f"farm {args.out}: {made['experts']} experts, {made['images']} images "
              f"({made['experts_per_hour']} experts/h, {made['images_per_hour']} images/h in one process)")
    elif args.apprentice_command == "filter":
        from .methods.farm import filter_farm

        kept = filter_farm(Path(args.farm), args.tau_t, args.tau_s, args.image_encoder)
        print(f"kept {kept['kept']} of {kept['total']} expert images ({kept['kept_fraction']:.0%}); "
              f"{args.farm}/filter.json, kept.png, dropped.png")
    else:
        from .methods.farm import read_farm
        from .training import train

        farm = read_farm(Path(args.farm), need_filter=args.objective == "apprenticeship")
        options = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
        cfg = TrainConfig(method="apprentice-train", subject_dir=None, class_noun=None, model=farm["model"],
                          images=args.farm, **options)
        result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
        if result.manifest:
            print(f"trained the apprentice in {result.seconds:.1f}s, final loss {result.final_loss:.4f}: "
                  f"{result.run_dir} (use it with 'subjectgen train apprentice --apprentice {result.run_dir}')")


def add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="DINO, CLIP-I and CLIP-T of a folder of images against a subject (JSON)")
    p.add_argument("images", help="folder of generated images")
    p.add_argument("--subject", required=True, help="folder of the subject's real photos")
    p.add_argument("--prompt", required=True, help="the prompt without the identifier, e.g. 'a dog on the beach'")
    p.add_argument("--dino", default="builtin", help="DINO ViT folder or hub id (facebook/dino-vits16 on real "
                   "photos); default: the built-in world's")
    p.add_argument("--clip", default="builtin", help="CLIP folder or hub id (openai/clip-vit-base-patch32 on real "
                   "photos); default: the built-in world's")


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="DreamBench protocol: train, generate and score methods over subjects",
                       description="Train each method on each subject, generate K images per prompt with fixed "
                       "seeds, score DINO / CLIP-I / CLIP-T. Rerun the same command to resume. With "
                       "'accelerate launch' the subjects are split across processes.")
    p.add_argument("--bench", default="emoji", help="folder in DreamBench's layout, or 'emoji' (the built-in "
                   "EmojiBench; default)")
    p.add_argument("--out", required=True, help="folder for results.json, table.md, report.html, plots, images")
    p.add_argument("--methods", help=f"comma-separated methods (default: every one, {','.join(registry.names())}; "
                   "a later run may add methods to the same --out)")
    p.add_argument("--model", default="builtin", help="base model (default: builtin)")
    p.add_argument("--quick", action="store_true", help="subjects dog,backpack, 4 prompts, 2 images per prompt")
    p.add_argument("--subjects", help="comma-separated subject names (default: all)")
    p.add_argument("--prompts", type=bench_type("prompts"),
                   help="use the first N prompts of each list (default: all 25)")
    p.add_argument("--images-per-prompt", type=bench_type("images_per_prompt"),
                   help="images per prompt (default: 4)")
    p.add_argument("--pres-images", type=bench_type("pres_images"), default=4,
                   help="images of the class prompt alone ('a dog') per subject and method, for PRES, the language "
                        "drift check (seeds seed+k; default: 4; 0: no PRES)")
    p.add_argument("--train-steps", type=bench_type("train_steps"), help="training steps (default: each method's)")
    p.add_argument("--train-lr", type=bench_type("train_lr"), help="learning rate (default: each method's)")
    p.add_argument("--promptnet", default="builtin", help="ProFusion's pretrained PromptNet (default: builtin)")
    p.add_argument("--apprentice", default="builtin", help="the apprentice of apprentice runs (default: builtin)")
    p.add_argument("--masked-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="train every method with a masked loss, from each subject's masks/ folder (EmojiBench ships "
                        "them) (default: each method's own, where every photo has a mask)")
    p.add_argument("--captions", choices=("off",), default=None, dest="captioning",
                   help="off: no method makes captions (default: each method's own, as train does: DreamBooth's "
                        "on the built-in model, kept in its run)")
    p.add_argument("--eval-every", type=bench_type("eval_every"), default=None, metavar="N",
                   help="each trained run scores eval points every N steps with the bench's evaluators (train "
                        "--eval-every): its curve goes to the trade-off figure (default: each method's own, as train "
                        "scores them on the model; 0: none)")
    p.add_argument("--select", choices=("last", "best"), default=None,
                   help="the step each trained run keeps: the last, or with --eval-every the one the rule in "
                        "docs/BENCHMARK.md chooses (train --select; default: each method's own, as train keeps it)")
    p.add_argument("--eval-sample-steps", type=bench_type("eval_sample_steps"), metavar="N",
                   help="sampler steps of the eval points' images (train --eval-sample-steps; default: train's)")
    p.add_argument("--sample-steps", type=bench_type("sample_steps"),
                   help="sampler steps (default: 25 below 256 px, else 50)")
    p.add_argument("--subject-start", type=bench_type("subject_start"), default=None, metavar="FRACTION",
                   help="sample this fraction of the steps without the subject, as generate --subject-start "
                        "(default: each run's own, as generate samples it)")
    p.add_argument("--guidance", type=bench_type("guidance"), default=None,
                   help="guidance (default: the model family's: 7.5; FLUX.1-dev's embedding 3.5)")
    p.add_argument("--seed", type=bench_type("seed"), default=0, help="training seed; image k of each prompt uses "
                   "seed+k (default: 0)")
    p.add_argument("--dino", help="DINO ViT folder or hub id (default: built-in for emoji, facebook/dino-vits16)")
    p.add_argument("--clip", help="CLIP folder or hub id (default: built-in for emoji, openai/clip-vit-base-patch32)")
    p.add_argument("--runs-from", metavar="DIR",
                   help="copy from an earlier bench folder what it made the same way: its trained runs (same model, "
                        "subjects, seed and training settings) and its baseline (same settings but the methods' "
                        "own), to sweep a setting without retraining; when only --dino or --clip differ, every "
                        "pair's images, scored again by the new evaluators (nothing is trained or sampled)")
    add_method_train_flags(p)
    add_method_sample_flags(p)
    p.add_argument("--workers", type=workers_type, default=default_workers(), metavar="N|auto",
                   help="run the bench as N local processes, the subjects split among them, each with its share of "
                        "the cores; the scores are the same. auto (the default): on a CPU with a small model (the "
                        "built-in one) as many processes as the cores, at one thread each (or --threads), capped by "
                        "the subjects and the free memory, since a small model uses cores better this way than as "
                        "threads of one process (on 2 cores the quick bench ran 1.26x faster than one process at two "
                        "threads, docs/RESULTS.md); one process on a "
                        "GPU or with a Stable Diffusion model, whose large matmuls use threads well "
                        "(default: SUBJECTGEN_WORKERS, else auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    r = sub.add_parser("report", help="rebuild results.json, table.md, plots and report.html of a bench folder")
    r.add_argument("out", help="a folder written by 'subjectgen bench'")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="subjectgen", description="Subject-driven text-to-image generation.")
    parser.add_argument("--threads", type=number_type(AT_LEAST_1), metavar="N",
                        help="CPU threads for torch (default: the cores this process may use, shared among the "
                             "processes of one launch; or SUBJECTGEN_THREADS / OMP_NUM_THREADS). On a busy "
                             "machine, fewer threads than cores avoid threads waiting on each other")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    add_train_parser(sub)
    add_generate_parser(sub)
    add_demo_parser(sub)
    add_world_parser(sub)
    add_profusion_parser(sub)
    add_apprentice_parser(sub)
    add_score_parser(sub)
    add_bench_parser(sub)
    return parser


def run_train(args) -> None:
    from .training import train

    options = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    cfg = TrainConfig(**options)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if result.manifest:
        zero_shot = "steps" in registry.get(cfg.method).drops
        trained = (f"trained {cfg.method} in {result.seconds:.1f}s, final loss {result.final_loss:.4f}" if result.steps
                   else f"{cfg.method}: zero-shot, ready in "
                   f"{result.manifest['metrics']['time_to_subject_seconds']:.1f}s"
                   if zero_shot else f"{cfg.method} with no training steps (--steps 0)")
        print(f"{trained}; run: {result.run_dir}; prompts use {{subject}} = '{result.manifest['subject']}'")
        if result.manifest.get("captions_written"):
            print(f"--captions auto wrote {', '.join(result.manifest['captions_written'])} beside the photos (edit "
                  "them and train again to change what the identifier learns)")


def run_generate(args) -> None:
    from .generation import generate_to_folder

    started = time.perf_counter()
    result = generate_to_folder(args.run, args.prompts, args.out, args.n, args.seed, args.steps, args.guidance,
                                args.negative_prompt, args.allow_pickle, args.lora_scale, args.subject_start,
                                progress=not args.quiet, options=sample_options(args), batch_size=args.batch_size,
                                references=args.references, dtype=args.dtype,
                                base_quantization=args.base_quantization)
    print(f"wrote {len(result.files)} images and {result.grid} in {time.perf_counter() - started:.1f}s")


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' per-file bars only add noise."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def run_demo(args) -> None:
    from .demo import run_demo

    import json

    started = time.perf_counter()
    out = run_demo(args.out, args.subject, args.model, args.steps, progress=not args.quiet)
    scores = json.loads((out / "scores.json").read_text())
    for name in ("base", "personalized"):
        means = scores[name]["mean"].items()
        print(f"{name:>12}: " + ", ".join(f"{k.upper().replace('_', '-')} {v:.3f}" for k, v in means))
    print("\n".join(scores["summary"][1:]))  # what the scores say happened, in plain words
    print(f"report: {out / 'report.html'}\ngrid:   {out / 'grid.png'}\ndemo finished in "
          f"{time.perf_counter() - started:.0f} s")


def run_reserved(args) -> None:
    from .world.catalog import CLASSES, held_out_set

    classes = name_list(args.classes, "--classes")
    unknown = [c for c in classes or [] if c not in CLASSES]
    if unknown:
        raise UserError(f"--classes: unknown {', '.join(unknown)}; the world's classes are {', '.join(CLASSES)}")
    if args.out:
        from .safeio import check_output_dir
        from .world.build import BENCH_MANIFEST

        check_output_dir(Path(args.out), BENCH_MANIFEST, args.overwrite)
    subjects = held_out_set(args.count, args.seed, classes)
    for name, (noun, inst) in subjects.items():
        attributes = ", ".join(f"{k} {v}" for k, v in inst.attributes().items())
        print(f"{name}: {noun}, {inst.emoji} ({inst.style}) {attributes}")
    if args.out:
        from .world.build import write_emojibench

        print(f"held-out subjects: {write_emojibench(Path(args.out), subjects, args.overwrite)}")


def run_train_vae(args) -> None:
    from .world.vae_tune import tune_vae

    cfg = VaeTuneConfig(**{f.name: getattr(args, f.name) for f in fields(VaeTuneConfig) if "help" in f.metadata})
    run_slice(args, "VAE", tune_vae, cfg)


def run_slice(args, what: str, train, cfg) -> None:
    """One slice of a continued training (world train-vae, world train --init): its state folder, then where the
    run stands."""
    from .world.slices import default_state_dir

    state = Path(args.state) if args.state else default_state_dir(Path(args.out))
    record = train(Path(args.out), cfg, state, args.resume, args.max_minutes, args.stop_step, args.workers,
                   overwrite=args.overwrite)
    done = record["step"] >= cfg.steps
    print(f"{what} at step {record['step']}/{cfg.steps} ({'done' if done else 'resume with --resume'}); "
          f"model: {args.out}; state: {state}")


def run_world(args) -> None:
    if args.world_command == "build":
        return run_build(args)
    if args.world_command == "reserved":
        return run_reserved(args)
    if args.world_command == "train-image-encoder":
        from .world.image_encoder import ImageEncoderConfig, train_image_encoder

        record = train_image_encoder(Path(args.out), args.model, ImageEncoderConfig(steps=args.steps), args.workers,
                                     args.overwrite)
        print(f"trained in {record['seconds']:.0f}s, final loss {record['loss']:.3f}; image encoder: {args.out}")
        return
    if args.world_command == "train-vae":
        return run_train_vae(args)
    if args.world_command == "train-evaluators":
        from .world.evaluators import train_evaluators

        cfg = EvaluatorTrainConfig(seed=args.seed, clip_steps=args.clip_steps, dino_steps=args.dino_steps,
                                   dino_instance_views=args.dino_instance_views,
                                   dino_instance_nce=args.dino_instance_nce)
        record = train_evaluators(Path(args.out), cfg, args.workers, args.keep_clip, args.overwrite)
        print(f"trained in {record['seconds']:.0f}s; evaluators: {args.out}/clip, {args.out}/dino")
        return
    if args.init:
        return run_continue_unet(args)
    for flag in ("max_minutes", "resume", "state"):
        if getattr(args, flag):
            raise UserError(f"--{flag.replace('_', '-')} goes with --init (slices of a continued model); training "
                            "from a seed is one run")
    from .world.pretrain import train_world

    given = {"seed": args.seed, "vae_steps": args.vae_steps, "unet_steps": args.unet_steps,
             "vae_batch": args.vae_batch, "unet_batch": args.unet_batch}
    cfg = WorldTrainConfig(**{k: v for k, v in given.items() if v is not None}, unet_stop_step=args.stop_step,
                           unet_max_seconds=args.max_seconds)
    if cfg.unet_stop_step is not None and cfg.unet_stop_step > cfg.unet_steps:
        raise UserError(f"--stop-step {cfg.unet_stop_step} is past --unet-steps {cfg.unet_steps}; "
                        "give a step inside the schedule")
    record = train_world(Path(args.out), cfg, args.workers, args.device, args.overwrite)
    print(f"trained in {record['seconds']:.0f}s on {record['device']}; pipeline: {args.out}")


def run_continue_unet(args) -> None:
    from .world.config import UnetContinueConfig
    from .world.continue_unet import continue_unet

    for flag in ("vae_steps", "vae_batch", "max_seconds", "device"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')} is not a setting of a continued model (--init): it keeps "
                            "its VAE and trains on the CPU in slices (--max-minutes)")
    given = {"seed": args.seed, "steps": args.unet_steps, "batch": args.unet_batch}
    cfg = UnetContinueConfig(init=args.init, **{k: v for k, v in given.items() if v is not None})
    run_slice(args, "UNet and text encoder", continue_unet, cfg)


def run_build(args) -> None:
    """`world build`: EmojiBench (into the package unless --out says where) or the validation subjects, and the
    training set; both folders checked before either is written."""
    from .safeio import check_output_dir
    from .world.build import BENCH_MANIFEST, EMOJIBENCH, TRAINING_SET_MANIFEST, write_emojibench, write_training_set

    if args.set == "validation" and not args.out:
        raise UserError("--set validation needs --out DIR (the package ships only EmojiBench)")
    overwrite = args.overwrite or not args.out  # the package's own EmojiBench is always ours to re-render
    check_output_dir(Path(args.out or EMOJIBENCH), BENCH_MANIFEST, overwrite)
    if args.training_set:
        check_output_dir(Path(args.training_set), TRAINING_SET_MANIFEST, args.overwrite, "--training-set")
    if args.set == "validation":
        from .world.catalog import VALIDATION

        print(f"validation subjects: {write_emojibench(Path(args.out), VALIDATION, overwrite)}")
    else:
        print(f"EmojiBench: {write_emojibench(Path(args.out or EMOJIBENCH), None, overwrite)}")
    if args.training_set:
        info = write_training_set(Path(args.training_set), args.seeds, overwrite=args.overwrite)
        print(f"training set: {args.training_set} ({info['count']} images, hash {info['hash']})")


def run_score(args) -> None:
    import json

    from .eval.metrics import load_evaluators, score_images
    from .photos import open_photo, photo_paths

    def photos(folder: str, what: str) -> list:
        if not Path(folder).is_dir():
            raise UserError(f"{what} folder {folder} does not exist")
        paths = [p for p in photo_paths(Path(folder)) if p.name != "grid.png"]
        if not paths:
            raise UserError(f"{what} folder {folder} holds no images")
        return [open_photo(p) for p in paths]

    images, refs = photos(args.images, "images"), photos(args.subject, "subject")
    scores = score_images(load_evaluators(args.dino, args.clip), images, refs, args.prompt)
    print(json.dumps({k: scores[k] for k in ("dino", "clip_i", "clip_t")} | {"images": len(images)}))


def name_list(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated flag's names (None when the flag is not given); an empty list is refused, not taken as
    'none' or 'all'."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError(f"{flag} {text!r} names nothing; give comma-separated names, or leave {flag} out for the "
                        "default")
    return names


def bench_config(args):
    from .eval.bench import QUICK

    chosen = {"subjects": name_list(args.subjects, "--subjects"), "prompts": args.prompts,
              "images_per_prompt": args.images_per_prompt}
    if args.quick:  # the quick subset, where a flag does not say otherwise
        chosen = {k: v if v is not None else QUICK[k] for k, v in chosen.items()}
    chosen["images_per_prompt"] = chosen["images_per_prompt"] or 4
    methods = default_bench_methods(args) if args.methods is None else name_list(args.methods, "--methods")
    return BenchConfig(bench=args.bench, out=args.out, methods=methods, model=args.model, **chosen,
                       pres_images=args.pres_images, seed=args.seed,
                       sample_steps=args.sample_steps, guidance=args.guidance, train_steps=args.train_steps,
                       train_lr=args.train_lr, promptnet=args.promptnet, apprentice=args.apprentice,
                       masked_loss=args.masked_loss, captioning=args.captioning, eval_every=args.eval_every,
                       select=args.select,
                       eval_sample_steps=args.eval_sample_steps, subject_start=args.subject_start, dino=args.dino,
                       clip=args.clip, runs_from=args.runs_from, sample_options=sample_options(args),
                       train_options=train_options(args))


def default_bench_methods(args) -> list[str]:
    """Every registered method that can run on --model: one not built for its family is left out (FLUX.2's
    reference row on SD), and one whose pretrained network was made for another model (the built-in PromptNet or
    apprentice on a Stable Diffusion model), with a warning."""
    from .assets import unfit_pretrained
    from .backbones import family_of

    family = family_of(args.model)
    methods = []
    for method in registry.names():
        if family is not None and not registry.get(method).runs_on(family.name):
            continue
        reason = unfit_pretrained(method, args, args.model)
        if reason:
            warnings.warn(f"leaving {method} out of the bench: {reason} (name it in --methods with one that fits)")
        else:
            methods.append(method)
    return methods


def run_bench(args) -> None:
    from .eval.bench import resolve_config, run_bench
    from .eval.metrics import evaluator_refs
    from .eval.prompts import read_benchmark, resolve_bench
    from .workers import choose_workers, launch_local

    cfg = bench_config(args)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        bench = read_benchmark(resolve_bench(cfg.bench))
        resolve_config(cfg, bench)  # a bad flag fails here, once, not in every worker
        evaluator_refs(cfg.dino, cfg.clip)  # a missing path or an offline hub: one line here, not one per worker
        choice = choose_workers(args.workers, len(cfg.subjects or bench.classes), cfg.model, args.threads)
        if choice.workers > 1:
            print(f"bench: {choice.workers} worker processes ({choice.why})", flush=True)  # --quiet too: one line
            argv = sys.argv[1:] if args.argv is None else args.argv
            launch_local(without_flag(argv, "--workers"), choice.workers, "bench")
            return
    results = run_bench(cfg, progress=not args.quiet)
    if results is not None:
        print((Path(args.out) / "table.md").read_text(), end="")
        print(f"report: {Path(args.out) / 'report.html'}")


def run_report(args) -> None:
    from .eval.report import write_outputs

    write_outputs(Path(args.out))
    print((Path(args.out) / "table.md").read_text(), end="")
    print(f"report: {Path(args.out) / 'report.html'}")


def without_flag(argv: list[str], flag: str) -> list[str]:
    """argv with `flag` and its value removed (either spelling: '--flag N' or '--flag=N')."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        elif not word.startswith(flag + "="):
            out.append(word)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse; an unknown flag that belongs to another method says so ("--rank is a flag of lora")."""
    parser = build_parser()
    Parser.words = list(sys.argv[1:] if argv is None else argv)
    Parser.top_flags = set(parser._option_string_actions)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if not extra:
        return args
    if getattr(args, "command", None) == "train":
        own_flags = {spec.name: {flag_of(f) for f in fields(TrainConfig) if f.name in spec.own_settings}
                     for spec in registry.REGISTRY.values()}
        dropped = {flag_of(f) for f in fields(TrainConfig) if f.name in registry.get(args.method).drops}
        for word in extra:
            flag = word.split("=", 1)[0]
            if flag in dropped:
                command_parser(parser, args).error(f"{flag} does not apply to {args.method} (it is not a setting "
                                                   "of that method)")
            owners = [name for name, flags in own_flags.items() if flag in flags]
            if owners:
                command_parser(parser, args).error(f"{flag} is a flag of {' and '.join(owners)}, not of "
                                                   f"{args.method}")
    command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was given ('train lora', 'world reserved'), for its flags and --help."""
    while parser._subparsers is not None:
        action = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
        chosen = getattr(args, action.dest, None)
        if chosen not in action.choices:
            break
        parser = action.choices[chosen]
    return parser


def check_before_imports(args) -> None:
    """What a user most often gets wrong — a path, a photo, a benchmark folder — checked before torch and
    diffusers load (seconds on a busy machine), so the one-line error comes at once. The API checks again."""
    if args.command == "train":
        from .photos import check_subject_folder, open_mask

        from .assets import builtin_names, missing_local_path

        if missing_local_path(args.model):

            raise UserError(f"--model {args.model}: no such folder or file, and not a built-in name "
                            f"({', '.join(builtin_names('model'))}); check the path (a hub id is owner/name)")
        with warnings.catch_warnings():  # its warnings (photo count, skipped files) come once, from the API's check
            warnings.simplefilter("ignore")
            paths, photos = check_subject_folder(Path(args.subject_dir), args.class_noun,
                                                 registry.get(args.method).photos_used)
        if getattr(args, "masked_loss", False):
            for path, photo in zip(paths, photos):
                open_mask(path, photo.size)
    elif args.command == "generate":
        from .assets import missing_local_path

        if missing_local_path(args.run):
            raise UserError(f"no run folder at {args.run} (a folder written by 'subjectgen train'), and no model of "
                            "that name; check the path")
    elif args.command == "profusion" and args.images not in (None, "world") and not Path(args.images).is_dir():
        raise UserError(f"--images {args.images} is not a folder; give a folder of photos, or 'world'")
    elif args.command == "apprentice" and args.apprentice_command == "experts" and args.clusters != "world":
        from .eval.prompts import read_benchmark

        read_benchmark(Path(args.clusters))
    elif args.command == "bench":
        from .eval.prompts import read_benchmark, resolve_bench

        read_benchmark(resolve_bench(args.bench))
    elif args.command == "score":
        for folder, what in ((args.images, "images"), (args.subject, "subject")):
            if not Path(folder).is_dir():
                raise UserError(f"{what} folder {folder} does not exist")
    elif args.command == "report" and not (Path(args.out) / "bench.json").is_file():
        raise UserError(f"{args.out} holds no benchmark (no bench.json); run 'subjectgen bench --out {args.out}' first")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        check_before_imports(args)
        quiet_libraries()
        from .threads import apply_threads

        apply_threads(args.threads)
        {"train": run_train, "generate": run_generate, "demo": run_demo, "world": run_world, "score": run_score,
         "bench": run_bench, "report": run_report, "profusion": run_profusion,
         "apprentice": run_apprentice}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
