"""`subjectgen bench`: the DreamBench protocol over any folder in its layout, or the built-in EmojiBench.

For each method and subject: train on the subject's photos (the baseline and the oracle do not),
generate K images for each of its prompts with fixed seeds (seed + k), and score them: DINO and
CLIP-I against every real photo, CLIP-T against the prompt with the identifier removed. Each
(method, subject) pair is finished by writing out/pairs/METHOD/SUBJECT/scores.json last, so a rerun
of the same command skips finished pairs and reuses images already generated. Under
`accelerate launch` (or torchrun) the subjects are split across processes; rank 0 merges.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import BENCH_TRAIN_OPTIONS, BenchConfig, options_for
from ..methods import registry
from ..errors import UserError
from ..training.outdir import contents, hold, release
from ..safeio import atomic_save_image, atomic_write_json
from ..subjects import load_subject
from .prompts import Benchmark, read_benchmark, resolve_bench

QUICK = {"subjects": ["dog", "backpack"], "prompts": 4, "images_per_prompt": 2}
DEFAULT_EVALUATORS = {"dino": "facebook/dino-vits16", "clip": "openai/clip-vit-base-patch32"}


def resolve_config(cfg: BenchConfig, bench: Benchmark) -> BenchConfig:
    """Fill the evaluator defaults and the weights' hashes; check the subjects and methods against the benchmark."""
    from ..assets import fingerprint

    builtin = cfg.bench == "emoji"
    cfg.dino = cfg.dino or ("builtin" if builtin else DEFAULT_EVALUATORS["dino"])
    cfg.clip = cfg.clip or ("builtin" if builtin else DEFAULT_EVALUATORS["clip"])
    if cfg.guidance is None:  # the family's (FLUX.1-dev's guidance embedding 3.5), fixed in the protocol
        from ..backbones import default_guidance_of

        cfg.guidance = default_guidance_of(cfg.model)
    cfg.model_hash = fingerprint("model", cfg.model)
    cfg.dino_hash = fingerprint("dino", cfg.dino)
    cfg.clip_hash = fingerprint("clip", cfg.clip)
    unknown = [s for s in cfg.subjects or [] if s not in bench.classes]
    if unknown:
        raise UserError(f"--subjects: {', '.join(unknown)} not in {bench.root} (it has {', '.join(bench.classes)})")
    bad = [m for m in cfg.methods if m not in registry.names()]
    if bad:
        raise UserError(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(registry.names())}")
    check_families(cfg)
    world_subjects(bench, warn=False)  # a subjects.json naming an unknown instance stops the bench before it starts
    for name in cfg.subjects or bench.classes:
        if not (bench.root / name).is_dir():
            raise UserError(f"{bench.root} lists subject '{name}' but has no folder {bench.root / name}")
        if cfg.masked_loss:  # a missing mask must stop the bench now, not after hours of other pairs
            load_subject(bench.root / name, bench.classes[name], resolution=8, masks=True)
    check_pretrained_assets(cfg)
    return cfg


def check_families(cfg: BenchConfig) -> None:
    """A method not built for the model's family (FLUX.2's reference row on SD, ProFusion on SDXL) is a one-line
    error now, not after the other methods' pairs."""
    from ..backbones import FAMILIES, family_of

    family = family_of(cfg.model)
    if family is not None:
        for method in cfg.methods:
            registry.get(method).check_family(family.name, {n: b.title for n, b in FAMILIES.items()})


def check_pretrained_assets(cfg: BenchConfig) -> None:
    """A method's pretrained network (the PromptNet, the apprentice) made for another base model is a one-line
    error now, not after hours of the other methods' pairs."""
    from ..assets import unfit_pretrained

    for method in cfg.methods:
        reason = unfit_pretrained(method, cfg, cfg.model)
        if reason:
            raise UserError(f"--methods includes {method}, but {reason}; give one made for this model, or leave "
                            f"{method} out of --methods")


def differing_settings(spec: Path, protocol: dict) -> list[str]:
    """The protocol keys on which a bench folder's bench.json differs from `protocol` (older folders lack
    newer keys: those count as the defaults)."""
    saved = folder_protocol(spec)
    return [k for k in protocol if saved.get(k) != protocol[k]]


def folder_protocol(spec: Path) -> dict:
    """A bench folder's settings as this version reads them (older folders lack newer keys: the defaults)."""
    from .report import read_protocol

    return {**BenchConfig("", "").protocol(), **read_protocol(spec)}


# The protocol keys that decide a trained run, and those that change only a method's images: another folder's
# runs are reusable when the first match, its baseline images when all but the second match.
TRAINING_KEYS = ("bench", "model", "model_hash", "seed", "train_steps", "train_lr", "promptnet", "apprentice",
                 "masked_loss", "captioning", "eval_every", "select", "eval_sample_steps", "train_options")
METHOD_ONLY_KEYS = ("train_steps", "train_lr", "promptnet", "apprentice", "masked_loss", "captioning", "eval_every",
                    "select", "eval_sample_steps", "subject_start", "sample_options", "train_options")


# The keys of the evaluators only: a folder that differs from another only in these has the same images.
EVALUATOR_KEYS = ("dino", "clip", "dino_hash", "clip_hash")


def reusable(folder: Path, protocol: dict) -> set[str]:
    """What --runs-from may copy from `folder`: {'runs'} (trained runs), {'baseline'} (its pairs), {'images'} (every
    pair's runs and images, to be scored again: only the evaluators differ); never empty."""
    spec = folder / "bench.json"
    if not spec.is_file():
        raise UserError(f"--runs-from {folder} is not a bench folder (no bench.json); give an earlier --out")
    differ = differing_settings(spec, protocol)
    training = TRAINING_KEYS + (EVALUATOR_KEYS if evaluators_decide_runs(folder, protocol) else ())
    found = set() if set(differ) & set(training) else {"runs"}
    if not set(differ) - set(METHOD_ONLY_KEYS):
        found.add("baseline")
    if differ and not set(differ) - set(EVALUATOR_KEYS) and "runs" in found:
        found.add("images")
    if not found:
        raise UserError(f"--runs-from {folder} was benchmarked with other settings ({', '.join(differ)}); give a "
                        "folder with the same model, subjects and training or sampling settings")
    return found


def evaluators_decide_runs(folder: Path, protocol: dict) -> bool:
    """Whether the evaluators decide the runs of a bench folder: --select best keeps the step they score best, so
    another DINO may keep another step. With each method's own (None), where a run in the folder kept its best."""
    if protocol.get("eval_every") == 0 or protocol.get("select") == "last":
        return False
    if protocol.get("select") == "best":
        return True
    return any(run.get("settings", {}).get("select") == "best" for run in finished_runs(folder))


def finished_runs(folder: Path, method: str = "*"):
    """The manifests (subject.json) of a bench folder's trained runs, of one method or all, in a fixed order, read
    as they are asked for (next() reads one)."""
    from ..adapters import MANIFEST
    from ..safeio import read_json

    for path in sorted(folder.glob(f"pairs/{method}/*/run/{MANIFEST}")):
        yield read_json(path, f"remove {path.parent.parent} to train that pair again", keys=("resolution",))


def check_out(out: Path, protocol: dict, write: bool = True) -> None:
    """A bench folder is resumable only under the protocol it was started with; `write`: record it (bench.json)."""
    spec = out / "bench.json"
    if spec.is_file():
        differ = differing_settings(spec, protocol)
        if differ:
            saved = folder_protocol(spec)
            raise UserError(f"--out {out} holds a benchmark with other settings "
                            f"({', '.join(setting_change(k, saved.get(k), protocol[k]) for k in differ)}); "
                            "rerun it with the flags that set those, the same model and evaluators, or choose another "
                            "--out")
    elif out.is_dir() and contents(out):
        raise UserError(f"--out {out} is not empty and holds no benchmark; choose a new or empty folder")
    elif out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the benchmark")
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(spec, protocol)


def setting_change(key: str, there, now) -> str:
    """One differing bench setting, as check_out names it; the training options as their flags."""
    if key != "train_options":
        return f"{key} {there!r} there, {now!r} now"

    def flags(options) -> str:  # in the order bench --help lists them
        options = options or {}
        named = {k: k.replace("_", "-") for k in options}
        return " ".join(f"--{named[k]}" if options[k] is True else f"--no-{named[k]}" if options[k] is False
                        else f"--{named[k]} {options[k]}" for k in sorted(options, key=BENCH_TRAIN_OPTIONS.index)
                        ) or "none"

    return f"training options {flags(there)} there, {flags(now)} now"


def process_rank() -> tuple[int, int]:
    """(rank, world size) as set by accelerate launch / torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Context:
    cfg: BenchConfig
    bench: Benchmark
    out: Path
    evaluators: object
    subjects: list[str]
    reuse: set = field(default_factory=set)  # what to copy from cfg.runs_from: 'runs', 'baseline' (reusable())
    base: object = None  # the base model's Run, loaded on first use
    instances: dict | None = None  # a world-made bench's subjects as (class, Instance): the perfect row's renders

    def prompts(self, subject: str) -> list[str]:
        return self.bench.prompts_for(subject)[: self.cfg.prompts]

    def steps(self, run) -> int:
        return self.cfg.sample_steps or run.components.backbone.default_steps(run.components)

    def subject_start(self, run) -> float:
        """The bench's --subject-start, else the run's own (as generate samples it)."""
        return run.subject_start if self.cfg.subject_start is None else self.cfg.subject_start

    def pair_dir(self, method: str, subject: str) -> Path:
        return self.out / "pairs" / method / subject


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict | None:
    """Run every (method, subject) pair this process owns; rank 0 merges and returns the results."""
    bench = read_benchmark(resolve_bench(cfg.bench))
    cfg = resolve_config(cfg, bench)
    out = Path(cfg.out)
    rank, world = process_rank()
    group = start_group(world)
    reuse = reusable(Path(cfg.runs_from), cfg.protocol()) if cfg.runs_from else set()
    ctx = start(cfg, bench, out, reuse, rank)
    try:
        return run_pairs(ctx, rank, world, group, progress)
    finally:
        if rank == 0:
            release(out)


def start(cfg: BenchConfig, bench: Benchmark, out: Path, reuse: set, rank: int) -> Context:
    """Every input loaded (the evaluators, the subjects' instances; on rank 0 the base model) before rank 0 writes
    bench.json: a start that fails leaves --out as it was, so the corrected command is not refused."""
    from .metrics import load_evaluators

    if rank == 0:
        check_out(out, cfg.protocol(), write=False)  # a refusal comes at once, before anything loads
    ctx = Context(cfg, bench, out, load_evaluators(cfg.dino, cfg.clip), cfg.subjects or list(bench.classes), reuse,
                  instances=world_subjects(bench))
    if rank == 0:
        check_machine(cfg)
        ctx.base = base_run(cfg)
        check_pair_settings(ctx)
        hold(out)  # one writer per bench folder (the job's other ranks write only their own pairs)
        try:
            check_out(out, cfg.protocol())  # again, under the lock; if this refuses, the others' barrier fails
        except BaseException:
            release(out)
            raise
    return ctx


def base_run(cfg: BenchConfig):
    """The base model as the baseline's Run, on the inference device, held as the bench samples (sampling_precision)."""
    from ..adapters import Run
    from ..models import inference_device, networks_in

    dtype, quantization = sampling_precision(cfg)
    with networks_in(dtype):
        run = Run.of_model(cfg.model)
    return run.place(inference_device(), dtype, quantization)


def sampling_precision(cfg: BenchConfig):
    """(dtype, base quantization) every run samples with, the baseline's too: --mixed-precision's dtype (fp32 for
    no) and --base-quantization, so a big model samples in the memory it trained in and every method's images come
    from one precision."""
    from ..training.loop import DTYPES

    options = cfg.train_options
    return DTYPES[options.get("mixed_precision", "no")], options.get("base_quantization")


def check_machine(cfg: BenchConfig) -> None:
    """The bench's precision, quantization and optimizer run on this machine: a one-line error at the start, not
    at the first pair."""
    from ..models import inference_device
    from ..training.loop import check_optimizer, check_precision
    from ..training.quantize import check_quantizer

    options, device = cfg.train_options, inference_device()
    check_precision(options.get("mixed_precision", "no"), device)
    check_optimizer(options.get("optimizer", "adamw"), device)
    if options.get("base_quantization"):
        check_quantizer(options["base_quantization"], device)


def run_pairs(ctx: Context, rank: int, world: int, group, progress: bool) -> dict | None:
    from .report import write_outputs

    if group:
        group.barrier()
    subjects, out = ctx.subjects, ctx.out
    mine = subjects[rank::world]
    methods = ["oracle", "baseline"] + (["perfect"] if ctx.instances else []) + ctx.cfg.methods
    bar = make_bar(sum(len(ctx.prompts(s)) for s in mine) * (len(methods) - 1), rank, progress)
    for method in methods:
        for subject in mine:
            run_pair(ctx, method, subject, bar)
    bar.close()
    if group:
        group.barrier()
    if rank != 0:
        return None
    return write_outputs(out)


def world_subjects(bench: Benchmark, warn: bool = True) -> dict | None:
    """The instances of a world-made bench folder (its subjects.json), for the perfect row; None for other folders,
    or with a warning when the emoji sources that render them are not installed."""
    import warnings

    from ..world.build import bench_instances
    from ..world.emoji import INSTALL_HINT, sources_available

    if not (bench.root / "subjects.json").is_file():
        return None
    if not sources_available():
        if warn:
            warnings.warn(f"{bench.root} names world instances, but the emoji sources are missing, so the bench has no "
                          f"perfect row and no gain score; {INSTALL_HINT}", stacklevel=2)
        return None
    instances = bench_instances(bench.root)
    missing = [s for s in bench.classes if instances is not None and s not in instances]
    if missing:
        raise UserError(f"{bench.root / 'subjects.json'} does not name the instance of {', '.join(missing)}; rebuild "
                        "the folder with 'subjectgen world reserved' or 'world build'")
    return instances


class Barrier:
    """Waits for every process of a launch; each trains and saves on its own. A key-value store, not a process
    group: with a default group initialised, transformers' save_pretrained writes nothing on a rank other than 0,
    and every worker must save its own runs whole."""

    def __init__(self, rank: int, world: int):
        import datetime

        from torch.distributed import TCPStore

        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not host or not port or not port.isdigit():
            raise UserError(f"RANK and WORLD_SIZE are set ({rank}, {world}) without MASTER_ADDR and MASTER_PORT; run "
                            "under a launcher (accelerate launch, torchrun) or use --workers N, which sets them")
        self.world, self.count = world, 0
        self.store = TCPStore(host, int(port), world, rank == 0, timeout=datetime.timedelta(hours=12))

    def barrier(self) -> None:
        self.count += 1
        key = f"barrier-{self.count}"
        if self.store.add(key, 1) == self.world:  # the last to arrive lets everyone go
            self.store.set(f"{key}-open", "1")
        self.store.wait([f"{key}-open"])


def start_group(world: int):
    """The launch's Barrier (None for one process); each process on its own GPU, if there are GPUs."""
    if world == 1:
        return None
    import torch

    if torch.cuda.is_available():  # one GPU per process; training and sampling use the current one
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Barrier(*process_rank())


def make_bar(total: int, rank: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"bench [{rank}]" if rank else "bench", unit="prompt", position=rank,
                disable=not enabled)


def run_pair(ctx: Context, method: str, subject: str, bar) -> dict:
    """Train (if the method trains), generate, score; scores.json written last marks the pair done."""
    pair = ctx.pair_dir(method, subject)
    done = pair / "scores.json"
    if method == "baseline" and "baseline" in ctx.reuse and not done.is_file():
        copy_pair(Path(ctx.cfg.runs_from) / "pairs" / method / subject, pair)
    if "images" in ctx.reuse and not done.is_file() and method != "oracle":
        copy_images(Path(ctx.cfg.runs_from) / "pairs" / method / subject, pair)
    if done.is_file():
        bar.update(0 if method == "oracle" else len(ctx.prompts(subject)))
        from .report import read_pair

        return read_pair(done)
    photos = subject_photos(ctx, subject)
    if method == "perfect":
        render_perfect(ctx, subject, pair)
        result = score_pair(ctx, "perfect", subject, photos, pair, bar)
        result.update(train_seconds=0.0, steps=None, identifier=None)
    elif method == "oracle":
        for i, photo in enumerate(photos):  # the report shows them; small copies keep it self-contained
            thumb = photo.copy()
            thumb.thumbnail((128, 128))
            atomic_save_image(ctx.out / "photos" / subject / f"{i:02d}.png", thumb)
        result = oracle_pair(ctx, subject, photos)
    else:
        run, train_seconds = prepare_run(ctx, method, subject, pair)
        result = generate_and_score(ctx, run, method, subject, photos, pair, bar)
        result["train_seconds"] = train_seconds
    atomic_write_json(done, result)
    return result


def subject_photos(ctx: Context, subject: str) -> list:
    from ..photos import open_photo, photo_paths

    folder = ctx.bench.root / subject
    paths = photo_paths(folder)
    if not paths:
        raise UserError(f"subject folder {folder} holds no photos")
    return [open_photo(p) for p in paths]


def oracle_pair(ctx: Context, subject: str, photos: list) -> dict:
    from .metrics import oracle_scores

    if len(photos) < 2:
        return {"method": "oracle", "subject": subject, "dino": None, "clip_i": None}
    return {"method": "oracle", "subject": subject, "class": ctx.bench.classes[subject],
            "dino": oracle_scores(ctx.evaluators.dino_embed(photos)),
            "clip_i": oracle_scores(ctx.evaluators.clip_image_embed(photos))}


def prepare_run(ctx: Context, method: str, subject: str, pair: Path):
    """The Run to sample from and the seconds its training took (0 for the baseline)."""
    from ..adapters import MANIFEST, load_run
    from ..models import inference_device, networks_in
    from ..training import train

    if method == "baseline":
        if ctx.base is None:
            ctx.base = base_run(ctx.cfg)
        return ctx.base, 0.0
    run_dir, timing = pair / "run", pair / "train_seconds.json"
    if not (run_dir / MANIFEST).is_file() and "runs" in ctx.reuse:
        copy_run(Path(ctx.cfg.runs_from) / "pairs" / method / subject, pair)
    dtype, quantization = sampling_precision(ctx.cfg)
    with networks_in(dtype):
        run = loadable_run(run_dir)
    if run is None:  # never trained, killed while training, or saved incomplete: train afresh
        cfg = pair_config(ctx.cfg, ctx.bench, method, subject, run_dir)
        check_same_defaults(ctx, cfg)
        started = time.perf_counter()
        train(cfg, overwrite=True, progress=False, distributed=False)
        # the user's wait: loading, class images and caching count, not only the loop
        atomic_write_json(timing, {"seconds": round(time.perf_counter() - started, 3)})
        with networks_in(dtype):
            run = load_run(run_dir)
    if run.method.sample_options is not None:  # e.g. Fusion Sampling's settings, for the methods that take them
        run.options = options_for(run.method.sample_options, ctx.cfg.sample_options)
    run.place(inference_device(), dtype, quantization)
    seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else run.manifest["metrics"]["train_seconds"]
    return run, float(seconds)


def pair_config(cfg: BenchConfig, bench: Benchmark, method: str, subject: str, run_dir: Path):
    """The TrainConfig a pair trains with: the bench's settings, those a method takes."""
    from ..config import TrainConfig, train_options_for

    trains = "steps" not in registry.get(method).drops  # a zero-shot method takes no training settings
    return TrainConfig(method=method, model=cfg.model, subject_dir=str(bench.root / subject),
                       class_noun=bench.classes[subject], out=str(run_dir),
                       steps=cfg.train_steps if trains else None, lr=cfg.train_lr if trains else None,
                       seed=cfg.seed, masked_loss=cfg.masked_loss if trains else None,
                       captioning=cfg.captioning if trains else None, promptnet=cfg.promptnet,
                       apprentice=cfg.apprentice, **(eval_settings(cfg) if trains else {}),
                       **train_options_for(method, cfg.train_options))


def check_pair_settings(ctx: Context) -> None:
    """Each method's settings resolve on this model (e.g. prior preservation where a method makes no class images)
    before bench.json is written: a one-line error naming the method now, not after hours of other pairs."""
    from ..assets import builtin_path
    from ..config import resolve_defaults

    builtin, subject = builtin_path("model", ctx.cfg.model) is not None, ctx.subjects[0]
    for method in ctx.cfg.methods:
        try:
            resolve_defaults(pair_config(ctx.cfg, ctx.bench, method, subject, ctx.out), ctx.base.components.resolution,
                             builtin)
        except UserError as exc:
            raise UserError(f"--methods {method}: {exc}") from None


def check_same_defaults(ctx: Context, cfg) -> None:
    """A pair about to train must get the defaults its method's finished runs in this folder got: a version that
    changed them (the settings chosen on the validation subjects becoming the built-in model's) would otherwise
    train the rest of the folder at other settings, with nothing to say so. A one-line error naming them."""
    from ..config import defaults_changed

    changed = defaults_changed(next(finished_runs(ctx.out, cfg.method), None), cfg)
    if changed:
        raise UserError(f"--out {ctx.out}: its {cfg.method} runs were trained at other defaults than this "
                        f"version's ({', '.join(changed)}); finish it with the version that began it, or choose "
                        "another --out")


def eval_settings(cfg: BenchConfig) -> dict:
    """A trained run's eval points (train --eval-every, --select; None: the method's own on the model), scored with
    the bench's own evaluators."""
    if cfg.eval_every == 0:  # none, whatever `train` would score by default
        return {"eval_every": 0}
    return {"eval_every": cfg.eval_every, "select": cfg.select, "eval_sample_steps": cfg.eval_sample_steps,
            "eval_dino": cfg.dino, "eval_clip": cfg.clip}


def loadable_run(run_dir: Path):
    """The pair's finished run, loaded; None (with a warning) when it must be trained again: no manifest, or weights
    a killed worker (or an older version's save) left incomplete. The bench made the folder, so it may redo it."""
    import warnings

    from ..adapters import MANIFEST, load_run

    if not (run_dir / MANIFEST).is_file():
        return None
    try:
        return load_run(run_dir)
    except UserError as exc:
        warnings.warn(f"{run_dir} is incomplete ({exc}); training it again")
        return None


def copy_run(source: Path, pair: Path) -> None:
    """Copy a finished run and its training time from another bench folder's pair, if it has one."""
    from ..adapters import MANIFEST

    if (source / "run" / MANIFEST).is_file():
        copy_dir(source / "run", pair / "run")
        if (source / "train_seconds.json").is_file():
            atomic_write_json(pair / "train_seconds.json", json.loads((source / "train_seconds.json").read_text()))


def copy_pair(source: Path, pair: Path) -> None:
    """Copy a finished pair (images and scores; their paths are relative to the bench folder), if it is one."""
    if (source / "scores.json").is_file():
        copy_dir(source, pair)


def copy_images(source: Path, pair: Path) -> None:
    """Another folder's pair without its scores (same images, other evaluators): only scoring is left to do."""
    import shutil

    if (source / "scores.json").is_file():
        copy_dir(source, pair)
        (pair / "scores.json").unlink()
        shutil.rmtree(pair / "run" / "checkpoints", ignore_errors=True)


def copy_dir(source: Path, target: Path) -> None:
    import shutil

    from ..safeio import atomic_dir

    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


PROMPTS_PER_BATCH = 8  # sampling several prompts at once is ~2x faster per image on a CPU


def generate_missing(ctx: Context, run, method: str, subject: str, pair: Path) -> None:
    """Sample every prompt whose K images are not all on disk, several prompts per batch; time each batch."""
    from ..sampling import generate
    from ..subjects import expand_subject

    cfg, noun, k = ctx.cfg, ctx.bench.classes[subject], ctx.cfg.images_per_prompt
    timing_file = pair / "generate_seconds.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    todo = [(i, t) for i, t in enumerate(ctx.prompts(subject))
            if not all((pair / "images" / f"p{i:02d}-{j}.png").is_file() for j in range(k))]
    for start in range(0, len(todo), PROMPTS_PER_BATCH):
        chunk = todo[start:start + PROMPTS_PER_BATCH]
        shown = [t if method != "baseline" else expand_subject(t, noun) for _, t in chunk]
        started = time.perf_counter()
        early = run.early_steps([p for p in shown for _ in range(k)], ctx.subject_start(run), ctx.steps(run))
        images = generate(run.components, [run.prompt_for_model(p) for p in shown for _ in range(k)],
                          [cfg.seed + j for _ in chunk for j in range(k)], ctx.steps(run), cfg.guidance,
                          batch_size=len(chunk) * k, early=early, denoiser_for=run.denoiser_for("", cfg.guidance))
        for n, (i, _) in enumerate(chunk):
            for j in range(k):
                atomic_save_image(pair / "images" / f"p{i:02d}-{j}.png", images[n * k + j])
        timing[str(chunk[0][0])] = time.perf_counter() - started
        atomic_write_json(timing_file, timing)  # after the images: a kill re-samples at most this batch


def render_perfect(ctx: Context, subject: str, pair: Path) -> None:
    """A perfect method's images: the world renders the subject itself in each prompt's context (seed + k)."""
    from ..subjects import expand_subject
    from ..world.build import render_prompt

    noun, inst = ctx.instances[subject]
    started = time.perf_counter()
    for i, template in enumerate(ctx.prompts(subject)):
        for j in range(ctx.cfg.images_per_prompt):
            image = render_prompt(noun, inst, expand_subject(template, noun), ctx.cfg.seed + j)
            atomic_save_image(pair / "images" / f"p{i:02d}-{j}.png", image)
    atomic_write_json(pair / "generate_seconds.json", {"0": time.perf_counter() - started})


def class_prompt(noun: str) -> str:
    """PRES's prompt: the class alone, as DreamBooth's paper gives it ('a dog')."""
    return f"a {noun}"


def class_image_files(ctx: Context, pair: Path) -> list[Path]:
    return [pair / "images" / f"class-{j}.png" for j in range(ctx.cfg.pres_images)]


def generate_class_images(ctx: Context, run, subject: str, pair: Path) -> None:
    """PRES's images: the class prompt alone, seed + k, by the method's model (the baseline's: the base model's),
    sampled as the method samples its prompts; timed apart from the prompts' images."""
    from ..sampling import generate

    files, cfg = class_image_files(ctx, pair), ctx.cfg
    if all(f.is_file() for f in files):
        return
    prompts = [class_prompt(ctx.bench.classes[subject])] * len(files)
    started = time.perf_counter()
    images = generate(run.components, [run.prompt_for_model(p) for p in prompts],
                      [cfg.seed + j for j in range(len(files))], ctx.steps(run), cfg.guidance, batch_size=len(files),
                      early=run.early_steps(prompts, ctx.subject_start(run), ctx.steps(run)),
                      denoiser_for=run.denoiser_for("", cfg.guidance))
    for file, image in zip(files, images):
        atomic_save_image(file, image)
    timing_file = pair / "generate_seconds.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    atomic_write_json(timing_file, {**timing, PRES_TIMING: time.perf_counter() - started})


PRES_TIMING = "pres"  # generate_seconds.json's key for the class images (the others: each prompt batch's)


def score_pres(ctx: Context, photos: list, pair: Path) -> dict:
    """The pair's PRES (prior_preservation) from its class images on disk; nothing when the bench makes none."""
    from PIL import Image

    from .metrics import prior_preservation

    files = class_image_files(ctx, pair)
    if not files:
        return {}
    scores = prior_preservation(ctx.evaluators, [Image.open(f).convert("RGB") for f in files], photos)
    timing = json.loads((pair / "generate_seconds.json").read_text())
    return {"pres": scores["pres"], "pres_per_image": scores["per_image"],
            "pres_files": [str(f.relative_to(ctx.out)) for f in files],
            "pres_seconds": round(timing[PRES_TIMING], 3)}


def generate_and_score(ctx: Context, run, method: str, subject: str, photos: list, pair: Path, bar) -> dict:
    generate_missing(ctx, run, method, subject, pair)
    if ctx.cfg.pres_images:
        generate_class_images(ctx, run, subject, pair)
    return {**score_pair(ctx, method, subject, photos, pair, bar), **score_pres(ctx, photos, pair),
            "steps": ctx.steps(run), "identifier": run.subject, **run_record(run)}


def run_record(run) -> dict:
    """What the trained run's subject.json says of its training that the bench reports: its time to subject, and
    with eval points the curve, the base model's row and the chosen step (the trade-off figure draws them)."""
    metrics, evaluation = run.manifest.get("metrics", {}), run.manifest.get("evaluation")
    record = {}
    if "time_to_subject_seconds" in metrics:
        record["time_to_subject_seconds"] = metrics["time_to_subject_seconds"]
    if evaluation:
        record["evaluation"] = {k: evaluation[k] for k in ("select", "base", "curve", "chosen_step")}
    return record


def score_pair(ctx: Context, method: str, subject: str, photos: list, pair: Path, bar) -> dict:
    """Score the pair's images on disk, prompt by prompt; its grid.png."""
    from PIL import Image

    from ..sampling import make_grid
    from ..subjects import expand_subject
    from .metrics import score_images

    noun, k = ctx.bench.classes[subject], ctx.cfg.images_per_prompt
    rows, images_all = [], []
    for i, template in enumerate(ctx.prompts(subject)):
        files = [pair / "images" / f"p{i:02d}-{j}.png" for j in range(k)]
        images = [Image.open(f).convert("RGB") for f in files]
        plain = expand_subject(template, noun)  # CLIP-T: the prompt with the identifier removed
        scores = score_images(ctx.evaluators, images, photos, plain)
        rows.append({"template": template, "prompt": plain, "files": [str(f.relative_to(ctx.out)) for f in files],
                     **{m: scores[m] for m in ("dino", "clip_i", "clip_t", "div")}, "per_image": scores["per_image"]})
        images_all += images
        bar.update(1)
    atomic_save_image(pair / "grid.png", make_grid(images_all, k))
    mean = {m: sum(r[m] for r in rows) / len(rows) for m in ("dino", "clip_i", "clip_t")}
    mean["div"] = None if k < 2 else sum(r["div"] for r in rows) / len(rows)
    timing = json.loads((pair / "generate_seconds.json").read_text())
    return {"method": method, "subject": subject, "class": noun, **mean, "prompts": rows,
            "generate_seconds": round(sum(v for key, v in timing.items() if key != PRES_TIMING), 3)}
