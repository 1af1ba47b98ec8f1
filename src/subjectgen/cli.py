"""The command line: parse, call the Python API, print. `subjectgen --help` lists the commands."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

# Quiet the libraries' import-time chatter (e.g. transformers on a missing torchvision) for CLI users.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from .config import BenchConfig, SampleSettings, TrainConfig  # noqa: E402
from .errors import UserError  # noqa: E402
from .settings import AT_LEAST_1, arg_type, number_type  # noqa: E402
from .world.config import EvaluatorTrainConfig, WorldTrainConfig  # noqa: E402


def train_type(name: str):
    return arg_type(TrainConfig, name)


def sample_type(name: str):
    return arg_type(SampleSettings, name)


def bench_type(name: str):
    return arg_type(BenchConfig, name)


def world_type(name: str):
    return arg_type(WorldTrainConfig, name)

TRAIN_HELP = {
    "lora": "DreamBooth with LoRA adapters on the UNet attention (small files, fast)",
    "dreambooth": "DreamBooth full fine-tune of the UNet, with class prior preservation",
    "textual-inversion": "learn a new word embedding; the model stays frozen",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage block is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="personalize a model on photos of one subject")
    methods = train.add_subparsers(dest="method", metavar="METHOD", required=True, parser_class=Parser)
    for name, text in TRAIN_HELP.items():
        p = methods.add_parser(name, help=text, description=text)
        p.add_argument("--model", default="builtin", help="diffusers folder, .safetensors checkpoint, hub id, "
                       "or a built-in name: builtin, tiny (default: builtin)")
        p.add_argument("--subject", required=True, help="folder of 1-5 photos of the subject")
        p.add_argument("--class", dest="class_noun", required=True, help="the subject's class noun, e.g. dog")
        p.add_argument("--out", required=True, help="run folder to write")
        p.add_argument("--token", help="identifier (DreamBooth; default: a rare token) or placeholder (TI; <s*>)")
        p.add_argument("--instance-prompt", default="a {token} {class}", help="training prompt (DreamBooth)")
        p.add_argument("--class-prompt", default="a {class}", help="prompt for class images")
        p.add_argument("--steps", type=train_type("steps"), help="training steps (default: the method's, by model size)")
        p.add_argument("--lr", type=train_type("lr"), help="learning rate (default: the method's, by model size)")
        p.add_argument("--batch-size", type=train_type("batch_size"), default=1)
        p.add_argument("--seed", type=train_type("seed"), default=0)
        prior = p.add_mutually_exclusive_group()
        prior.add_argument("--prior-preservation", dest="prior_preservation", action="store_true", default=None,
                           help="class-specific prior preservation (default: on for dreambooth, off otherwise)")
        prior.add_argument("--no-prior-preservation", dest="prior_preservation", action="store_false")
        p.add_argument("--prior-weight", type=train_type("prior_weight"), default=1.0, help="λ, the weight of the prior loss")
        p.add_argument("--num-class-images", type=train_type("num_class_images"), help="class images to generate and cache")
        p.add_argument("--snr-gamma", type=train_type("snr_gamma"), help="min-SNR loss weighting γ (e.g. 5.0); off by default")
        p.add_argument("--masked-loss", action="store_true",
                       help="learn only the subject, not the photos' background: the loss counts the pixels of a mask "
                            "per photo (SUBJECT/masks/NAME.png, white on the subject; else the photo's alpha)")
        p.add_argument("--rank", type=train_type("rank"), default=4, help="LoRA rank")
        p.add_argument("--lora-alpha", type=train_type("lora_alpha"), help="LoRA alpha (default: the rank)")
        p.add_argument("--train-text-encoder", action="store_true", help="also train the text encoder (LoRA/full)")
        p.add_argument("--num-vectors", type=train_type("num_vectors"), default=1, help="TI: vectors in the learned embedding")
        p.add_argument("--init-word", help="TI: word the embedding starts from (default: the class)")
        p.add_argument("--lr-warmup-steps", type=train_type("lr_warmup_steps"), default=0)
        p.add_argument("--max-grad-norm", type=train_type("max_grad_norm"), default=1.0)
        p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
        p.add_argument("--gradient-checkpointing", action="store_true")
        p.add_argument("--checkpoint-every", type=train_type("checkpoint_every"), default=0, help="save a resumable checkpoint every N steps")
        p.add_argument("--validate-every", type=train_type("validate_every"), default=0, help="write a validation grid every N steps")
        p.add_argument("--validation-prompt", action="append", dest="validation_prompts",
                       help="prompt with {subject} for validation grids (repeatable)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
        p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled weights (.ckpt/.bin)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate images from a trained run (or a plain model)")
    p.add_argument("run", help="run folder from 'subjectgen train' (or a model reference for baselines)")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompts; {subject} becomes the learned subject")
    p.add_argument("-n", type=sample_type("n"), default=4, help="images per prompt")
    p.add_argument("--seed", type=sample_type("seed"), default=0)
    p.add_argument("--steps", type=sample_type("steps"), help="sampler steps (default 50 for SD, 25 for small models)")
    p.add_argument("--guidance", type=sample_type("guidance"), default=7.5)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--lora-scale", type=sample_type("lora_scale"), default=1.0,
                   help="weight of a LoRA run's update (kohya's network multiplier): below 1 follows the prompt "
                        "more and the subject less; 0 is the base model")
    p.add_argument("--subject-start", type=sample_type("subject_start"), default=0.0, metavar="FRACTION",
                   help="sample this fraction of the steps without the subject (the class noun on the base "
                        "weights) before it comes in, so the scene follows the prompt; like A1111's "
                        "[a dog:a sks dog:0.2] with the LoRA switched on at the same step. Default 0")
    p.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    p.add_argument("--allow-pickle", action="store_true")


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="personalize the built-in model on an EmojiBench subject (CPU, minutes)")
    p.add_argument("--out", default="demo", help="folder for the report (replaced if it exists)")
    p.add_argument("--subject", default="dog", help="EmojiBench subject to personalize on (default: dog)")
    p.add_argument("--model", default="builtin")
    p.add_argument("--steps", type=train_type("steps"), help="LoRA training steps (default: the method's)")


def add_world_parser(sub) -> None:
    p = sub.add_parser("world", help="rebuild the built-in emoji world and its models (needs the emoji sources)")
    world = p.add_subparsers(dest="world_command", metavar="STEP", required=True, parser_class=Parser)
    b = world.add_parser("build", help="render EmojiBench (and optionally the training set) from the emoji sources")
    b.add_argument("--out", default=None, help="subjects folder (default: EmojiBench's, shipped in the package)")
    b.add_argument("--training-set", help="also render the training set into this folder")
    b.add_argument("--set", choices=("emojibench", "validation"), default="emojibench",
                   help="which subjects to render: EmojiBench (the test set) or the validation subjects, which are "
                        "neither in training nor in EmojiBench and are where settings get chosen (needs --out)")
    b.add_argument("--seeds", type=arg_type(WorldTrainConfig, "render_seeds"), default=6, help="renders per (instance, context) for plain captions")
    t = world.add_parser("train", help="train the built-in model from a seed; writes a diffusers folder")
    t.add_argument("--out", required=True, help="folder for the pipeline (copy it to assets/builtin to ship it)")
    t.add_argument("--seed", type=world_type("seed"), default=0)
    t.add_argument("--vae-steps", type=world_type("vae_steps"), default=3000)
    t.add_argument("--unet-steps", type=world_type("unet_steps"), default=12000)
    t.add_argument("--vae-batch", type=world_type("vae_batch"), default=128)
    t.add_argument("--unet-batch", type=world_type("unet_batch"), default=256)
    t.add_argument("--stop-step", type=world_type("unet_stop_step"), help="stop UNet training after this step; the learning-rate schedule "
                   "still spans --unet-steps (how a run cut by --max-seconds is reproduced)")
    t.add_argument("--max-seconds", type=world_type("unet_max_seconds"), help="stop UNet training after this long; the record's "
                   "unet_stop_step says where, so the run can be reproduced with --stop-step")
    t.add_argument("--workers", type=number_type(AT_LEAST_1), default=2, help="processes rendering the world")
    t.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    e = world.add_parser("train-evaluators", help="train the built-in CLIP and DINO evaluators (CPU)")
    e.add_argument("--out", required=True, help="folder for clip/ and dino/ (copy it to assets/evaluators to ship it)")
    e.add_argument("--seed", type=arg_type(EvaluatorTrainConfig, "seed"), default=7)
    e.add_argument("--clip-steps", type=arg_type(EvaluatorTrainConfig, "clip_steps"), default=1500)
    e.add_argument("--dino-steps", type=arg_type(EvaluatorTrainConfig, "dino_steps"), default=2000)
    e.add_argument("--workers", type=number_type(AT_LEAST_1), default=2, help="processes rendering the world")


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
    p.add_argument("--methods", default="lora,dreambooth,textual-inversion", help="comma-separated methods "
                   "(default: all three; a later run may add methods to the same --out)")
    p.add_argument("--model", default="builtin", help="base model (default: builtin)")
    p.add_argument("--quick", action="store_true", help="subjects dog,backpack, 4 prompts, 2 images per prompt")
    p.add_argument("--subjects", help="comma-separated subject names (default: all)")
    p.add_argument("--prompts", type=bench_type("prompts"), help="use the first N prompts of each list (default: all 25)")
    p.add_argument("--images-per-prompt", type=bench_type("images_per_prompt"), help="images per prompt (default: 4)")
    p.add_argument("--train-steps", type=bench_type("train_steps"), help="training steps (default: each method's)")
    p.add_argument("--masked-loss", action="store_true", help="train every method with a masked loss, from each "
                   "subject's masks/ folder (EmojiBench ships them)")
    p.add_argument("--sample-steps", type=bench_type("sample_steps"), help="sampler steps (default: 25 below 256 px, else 50)")
    p.add_argument("--subject-start", type=bench_type("subject_start"), default=0.0, metavar="FRACTION",
                   help="sample this fraction of the steps without the subject, as generate --subject-start "
                        "(default 0)")
    p.add_argument("--guidance", type=bench_type("guidance"), default=7.5)
    p.add_argument("--seed", type=bench_type("seed"), default=0)
    p.add_argument("--dino", help="DINO ViT folder or hub id (default: built-in for emoji, facebook/dino-vits16)")
    p.add_argument("--clip", help="CLIP folder or hub id (default: built-in for emoji, openai/clip-vit-base-patch32)")
    p.add_argument("--runs-from", metavar="DIR",
                   help="copy from an earlier bench folder what it made the same way: its trained runs (same model, "
                        "subjects, seed and training settings) and its baseline (same settings but the methods' "
                        "own), to sweep a setting without retraining")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    r = sub.add_parser("report", help="rebuild results.json, table.md, plots and report.html of a bench folder")
    r.add_argument("out", help="a folder written by 'subjectgen bench'")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="subjectgen", description="Subject-driven text-to-image generation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    add_train_parser(sub)
    add_generate_parser(sub)
    add_demo_parser(sub)
    add_world_parser(sub)
    add_score_parser(sub)
    add_bench_parser(sub)
    return parser


def run_train(args) -> None:
    from .training import train

    options = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    options["subject_dir"] = args.subject
    cfg = TrainConfig(**options)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if result.manifest:
        print(f"trained {cfg.method} in {result.seconds:.1f}s, final loss {result.final_loss:.4f}; "
              f"run: {result.run_dir}; prompts use {{subject}} = '{result.manifest['subject']}'")


def run_generate(args) -> None:
    from .generation import generate_to_folder

    result = generate_to_folder(args.run, args.prompts, args.out, args.n, args.seed, args.steps, args.guidance,
                                args.negative_prompt, args.allow_pickle, args.lora_scale, args.subject_start)
    print(f"wrote {len(result.files)} images and {result.grid}")


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' per-file bars only add noise."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def run_demo(args) -> None:
    from .demo import run_demo

    import json

    out = run_demo(args.out, args.subject, args.model, args.steps)
    for name, score in json.loads((out / "scores.json").read_text()).items():
        print(f"{name:>12}: " + ", ".join(f"{k.upper().replace('_', '-')} {v:.3f}" for k, v in score["mean"].items()))
    print(f"report: {out / 'report.html'}\ngrid:   {out / 'grid.png'}")


def run_world(args) -> None:
    if args.world_command == "build":
        from .world.build import EMOJIBENCH, write_emojibench, write_training_set

        if args.set == "validation":
            from .world.catalog import VALIDATION

            if not args.out:
                raise UserError("--set validation needs --out DIR (the package ships only EmojiBench)")
            print(f"validation subjects: {write_emojibench(Path(args.out), VALIDATION)}")
        else:
            print(f"EmojiBench: {write_emojibench(Path(args.out) if args.out else EMOJIBENCH)}")
        if args.training_set:
            info = write_training_set(Path(args.training_set), args.seeds)
            print(f"training set: {args.training_set} ({info['count']} images, hash {info['hash']})")
        return
    if args.world_command == "train-evaluators":
        from .world.evaluators import train_evaluators

        cfg = EvaluatorTrainConfig(seed=args.seed, clip_steps=args.clip_steps, dino_steps=args.dino_steps)
        record = train_evaluators(Path(args.out), cfg, args.workers)
        print(f"trained in {record['seconds']:.0f}s; evaluators: {args.out}/clip, {args.out}/dino")
        return
    from .world.pretrain import train_world

    if args.stop_step is not None and args.stop_step > args.unet_steps:
        raise UserError(f"--stop-step {args.stop_step} is past --unet-steps {args.unet_steps}; "
                        "give a step inside the schedule")
    cfg = WorldTrainConfig(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                           vae_batch=args.vae_batch, unet_batch=args.unet_batch, unet_stop_step=args.stop_step,
                           unet_max_seconds=args.max_seconds)
    record = train_world(Path(args.out), cfg, args.workers, args.device)
    print(f"trained in {record['seconds']:.0f}s on {record['device']}; pipeline: {args.out}")


def run_score(args) -> None:
    import json

    from .eval.metrics import load_evaluators, score_images
    from .subjects import open_photo, photo_paths

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


def bench_config(args):
    from .eval.bench import QUICK

    chosen = {"subjects": args.subjects.split(",") if args.subjects else None, "prompts": args.prompts,
              "images_per_prompt": args.images_per_prompt}
    if args.quick:  # the quick subset, where a flag does not say otherwise
        chosen = {k: v if v is not None else QUICK[k] for k, v in chosen.items()}
    chosen["images_per_prompt"] = chosen["images_per_prompt"] or 4
    return BenchConfig(bench=args.bench, out=args.out, methods=[m for m in args.methods.split(",") if m],
                       model=args.model, **chosen, seed=args.seed, sample_steps=args.sample_steps,
                       guidance=args.guidance, train_steps=args.train_steps, masked_loss=args.masked_loss,
                       subject_start=args.subject_start, dino=args.dino, clip=args.clip,
                       runs_from=args.runs_from)


def run_bench(args) -> None:
    from .eval.bench import run_bench

    results = run_bench(bench_config(args), progress=not args.quiet)
    if results is not None:
        print((Path(args.out) / "table.md").read_text(), end="")
        print(f"report: {Path(args.out) / 'report.html'}")


def run_report(args) -> None:
    from .eval.report import write_outputs

    write_outputs(Path(args.out))
    print((Path(args.out) / "table.md").read_text(), end="")
    print(f"report: {Path(args.out) / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        {"train": run_train, "generate": run_generate, "demo": run_demo, "world": run_world, "score": run_score,
         "bench": run_bench, "report": run_report}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
