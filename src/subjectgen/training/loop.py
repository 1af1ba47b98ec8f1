"""The one training loop, shared by every method: accelerate, caching, checkpoints, resume, NaN guard."""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import platform
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from .. import assets
from ..adapters import MANIFEST
from ..backbones import FAMILIES
from ..captions import caption_missing, load_captioner, write_captions
from ..config import TrainConfig, default_eval_sample_steps, resolve_defaults
from ..errors import TrainingDiverged, UserError
from ..methods import registry
from ..models import fp32_parameters, load_model
from ..safeio import atomic_save_image, atomic_write_bytes, atomic_write_json, writing
from ..sampling import generate, make_grid
from ..subjects import expand_subject, load_subject
from .checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from .data import LatentCache, SubjectData, TextCache, class_images
from .evaluation import TrainingEval, load_eval_evaluators
from .outdir import RUN_SPEC, check_out_dir, hold, record_run, release
from .quantize import adamw8bit_probe, check_bitsandbytes, check_quantization, quantize_frozen

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                      "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def make_accelerator(mixed_precision: str, distributed: bool = True) -> Accelerator:
    """accelerate's Accelerator; several processes without a GPU (e.g. `accelerate launch --multi_gpu` on a
    laptop) become DDP over gloo on the CPU rather than independent single-process runs.
    distributed=False: this process trains alone even under a launcher (the benchmark gives each process
    its own subjects), so the launcher's variables are hidden while accelerate reads them."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        # accelerate keeps one precision per process; a later run in it (a bench, a UI) may ask for another.
        # Its private reset keeps the process group (PartialState) and drops only the precision state.
        AcceleratorState._reset_state()
    if distributed or not several:
        return Accelerator(mixed_precision=mixed_precision, cpu=several and not torch.cuda.is_available())
    saved = {k: os.environ.pop(k) for k in LAUNCHER_VARIABLES if k in os.environ}
    try:
        return Accelerator(mixed_precision=mixed_precision)
    finally:
        os.environ.update(saved)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    seconds: float
    manifest: dict


class Trainer:
    """Holds one run's state; `run()` trains, checkpoints and writes the run folder."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
                 distributed: bool = True):
        self.started = time.perf_counter()  # time to subject: loading, caching and training, before any image
        self.accelerator = make_accelerator(cfg.mixed_precision, distributed)
        self.progress = progress and self.accelerator.is_main_process
        self.out = Path(cfg.out)
        if self.accelerator.is_main_process:
            check_out_dir(self.out, cfg, resume, overwrite)
        self.components = load_model(cfg.model, cfg.allow_pickle, keep_dtype=cfg.mixed_precision != "no")
        family = self.components.backbone
        registry.get(cfg.method).check_family(family.name, {n: b.title for n, b in FAMILIES.items()})
        check_family_settings(cfg, family)
        builtin = assets.builtin_path("model", cfg.model) is not None  # its evaluators are built in
        self.cfg = resolve_defaults(cfg, self.components.resolution, builtin)
        if cfg.sample_steps is None:  # the family's (a step-distilled model's few), for class images and grids
            self.cfg.sample_steps = family.default_steps(self.components)
        if self.cfg.select == "best" and not self.cfg.eval_every:
            raise UserError(f"--select best needs --eval-every N (the eval points it chooses among; {cfg.method} "
                            "scores none by default here)")
        if cfg.eval_sample_steps is None:
            self.cfg.eval_sample_steps = default_eval_sample_steps(self.components.resolution, self.cfg.sample_steps)
        if self.cfg.guidance is None:  # class images, validation grids and eval points sample as `generate` does
            self.cfg.guidance = family.default_guidance
        self.subject = None if cfg.subject_dir is None else load_subject(  # None: a dataset method (pretraining)
            Path(cfg.subject_dir), cfg.class_noun, self.components.resolution, masks=self.cfg.masked_loss,
            model=cfg.model,
            buckets=family.buckets(self.components) if cfg.aspect_buckets else None,
            uses=registry.get(cfg.method).photos_used)
        registry.get(self.cfg.method).load().check_inputs(self.cfg, self.components, self.subject)
        if cfg.compile:
            check_compiler(self.accelerator.device)
        check_optimizer(self.cfg.optimizer, self.accelerator.device)
        check_quantization(cfg.base_quantization, registry.get(cfg.method).load(), self.accelerator.device)
        check_precision(self.cfg.mixed_precision, self.accelerator.device)
        self.evaluators = self.load_evaluators() if self.cfg.eval_every and self.accelerator.is_main_process else None
        # in the subject now; on disk once the run starts where --captions auto asked (a default keeps them in the run)
        self.new_captions = self.make_captions()
        self.writes_captions = cfg.captioning == "auto"
        if self.accelerator.is_main_process:  # with every input valid, the run folder appears (its lock only)
            hold(self.out)  # one writer; then the checks again, since another writer may have finished meanwhile
        try:
            if self.accelerator.is_main_process:
                check_out_dir(self.out, cfg, resume, overwrite)
            self.prepare(resume)  # the method's own inputs (a PromptNet, an image encoder, a farm, a checkpoint)
            if self.accelerator.is_main_process:  # only now is --out written: a failed start leaves it as it was
                record_run(self.out, cfg, resume, overwrite)
                if self.writes_captions:
                    write_captions(self.new_captions)  # and the photo folder too
        except BaseException:
            if self.accelerator.is_main_process:
                release(self.out, remove_if_empty=True)
            raise

    def prepare(self, resume: bool) -> None:
        """Everything after the run folder is ours: seeds, caches, the method, the optimizer, a resume."""
        self.accelerator.wait_for_everyone()
        torch.manual_seed(self.cfg.seed)
        self.generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.accelerator.process_index)
        self.noise_scheduler = self.components.backbone.training_scheduler(self.components)
        for module in (*self.components.text_encoders, self.components.vae):
            module.to(self.accelerator.device)
        method = registry.get(self.cfg.method).load()
        self.data = method.data_source(self)  # before the method changes any weights: class images are the base's
        self.method = method(self.cfg, self.components, self.subject, self.data)
        self.place_modules()
        self.text_cache = self.make_text_cache()
        self.free_cached_networks()
        self.make_optimizer()
        self.start_step = self.maybe_resume() if resume else 0
        self.evaluation = None if self.evaluators is None else TrainingEval(self, self.evaluators, self.start_step)

    def make_captions(self) -> dict:
        """--captions auto: a caption for each photo that lacks one (captions.py), by the file it will be written to."""
        if self.subject is None or self.cfg.captioning != "auto":
            return {}
        cfg = self.cfg
        return caption_missing(self.subject, lambda: load_captioner(cfg.captioner, cfg.model, self.components,
                                                                    cfg.class_noun))

    def load_evaluators(self):
        """The bench's evaluators for --eval-every (the built-in ones on the built-in model), before any file."""
        from ..assets import builtin_path
        from ..eval.bench import DEFAULT_EVALUATORS

        builtin = builtin_path("model", self.cfg.model) is not None
        dino = self.cfg.eval_dino or ("builtin" if builtin else DEFAULT_EVALUATORS["dino"])
        clip = self.cfg.eval_clip or ("builtin" if builtin else DEFAULT_EVALUATORS["clip"])
        return load_eval_evaluators(dino, clip)

    def subject_data(self) -> SubjectData:
        """The photos' latents and, with prior preservation, the class images' (the default data source)."""
        photos = LatentCache(self.components, self.subject.images, self.subject.masks, sizes=self.subject.sizes)
        return SubjectData(photos, self.make_class_latents(photos.buckets), self.class_prompt)

    def make_class_latents(self, buckets: list[tuple[int, int]]) -> LatentCache | None:
        """The class images' latents; with aspect buckets, each one cut to every bucket of the photos, so a
        step's class half is drawn from the bucket of its instance half."""
        cfg, acc = self.cfg, self.accelerator
        if not cfg.prior_preservation:
            return None
        self.components.denoiser.to(acc.device)
        images, self.class_dir = class_images(self.components, self.class_prompt, cfg.num_class_images, cfg.seed,
                                              cfg.sample_steps, cfg.guidance, acc.is_main_process,
                                              acc.wait_for_everyone, self.progress)
        return LatentCache(self.components, images, fit_to=buckets if cfg.aspect_buckets else None)

    def place_modules(self) -> None:
        """Frozen weights in the mixed-precision dtype on the device (those their library keeps in fp32 aside:
        models.fp32_parameters), trainable weights in fp32: each weight cast as it moves, so no fp32 copy of a frozen
        base reaches the device; with --base-quantization the denoiser is cast in host memory and its frozen linear
        layers quantized one at a time as they reach the device."""
        dtype, device = DTYPES[self.cfg.mixed_precision], self.accelerator.device
        quantized = self.components.denoiser if self.cfg.base_quantization else None
        for module in self.components.networks:
            target, kept = "cpu" if module is quantized else device, fp32_parameters(module, dtype)
            for name, p in module.named_parameters():
                p.data = p.data.to(target, torch.float32 if p.requires_grad or name in kept else dtype)
            module.to(target)  # the buffers
        if quantized is not None:  # the LoRA layers are in place and train: only the frozen ones are quantized
            quantize_frozen(quantized, self.cfg.base_quantization, dtype, device)
        if self.cfg.gradient_checkpointing:
            self.components.denoiser.enable_gradient_checkpointing()
            for encoder in self.components.text_encoders:
                encoder.gradient_checkpointing_enable()

    def make_text_cache(self) -> TextCache | None:
        prompts = self.method.cached_prompts(self.class_prompt)  # the method says what may be cached
        if prompts is None:
            return None
        cache = TextCache(self.components, prompts)
        if self.accelerator.device.type == "cuda":  # their work is done: free the GPU for the denoiser
            for encoder in self.components.text_encoders:  # (validation grids encode on the CPU then)
                encoder.to("cpu")
        return cache

    def free_cached_networks(self) -> None:
        """Release the weights of the frozen networks whose outputs are cached (the VAE; the text encoders when the
        prompts are), as kohya's --cache_latents and cached text outputs do: on SDXL a quarter of the base's weights.
        Only for a method that trains from the caches alone, and only when no validation grid or eval point will
        sample images. The modules stay, on the meta device (their configs are still read); a use of their weights
        would fail loudly."""
        cfg, c = self.cfg, self.components
        if not self.method.trains_from_caches or cfg.validate_every or cfg.eval_every:
            return
        cached = ["vae", *(c.backbone.text_encoders if self.text_cache is not None else ())]
        for name in cached:
            if name not in self.method.trainable_modules():
                c.parts[name].to("meta")
        gc.collect()

    @property
    def class_prompt(self) -> str:
        return self.cfg.class_prompt.format(**{"class": self.cfg.class_noun})

    def make_optimizer(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.trainable = self.method.trainable_parameters()  # once: a walk of the UNet per step cost ~6 %
        if not cfg.steps:  # nothing trains (profusion's encoder alone, the zero-shot apprentice): no optimizer
            self.forward_modules, self.optimizer, self.lr_scheduler = self.method.trainable_modules(), None, None
            return
        self.optimizer = make_optimizer(cfg.optimizer, self.trainable, cfg.lr)
        self.lr_scheduler = get_scheduler("constant_with_warmup", self.optimizer,
                                          num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.steps)
        modules = self.method.trainable_modules()
        prepared = acc.prepare(*modules.values(), self.optimizer)
        self.forward_modules = dict(zip(modules, prepared[:-1]))
        self.optimizer = prepared[-1]
        if cfg.compile:  # a wrapper for the forward only: the weights, their names and what is saved are the same
            name = self.components.backbone.denoiser
            net = self.forward_modules.get(name, self.components.denoiser)
            self.forward_modules[name] = torch.compile(net, backend=COMPILE_BACKEND)

    def maybe_resume(self) -> int:
        checkpoints = list_checkpoints(self.out / "checkpoints")
        if not checkpoints:
            return 0
        state = load_checkpoint(checkpoints[-1])
        self.method.load_state_tensors(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.apply_learning_rate()
        self.generator.set_state(state["generators"][self.accelerator.process_index].clone())
        torch.set_rng_state(state["torch_rng"])
        return state["step"]

    def apply_learning_rate(self) -> None:
        """After loading a checkpoint: --lr as given (a resume may lower it), at the schedule's current factor."""
        scheduler = self.lr_scheduler
        factors = [group["lr"] / base if base else 1.0
                   for group, base in zip(self.optimizer.param_groups, scheduler.base_lrs)]
        scheduler.base_lrs = [self.cfg.lr] * len(scheduler.base_lrs)
        for group, factor in zip(self.optimizer.param_groups, factors):
            group["initial_lr"], group["lr"] = self.cfg.lr, self.cfg.lr * factor

    # --- one step -----------------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The family's text conditioning of the prompts: cached, or from the (training) text encoders."""
        if self.text_cache is not None:
            return self.text_cache(prompts)
        c = self.components
        encoders = [self.forward_modules.get(name, c.parts[name]) for name in c.backbone.text_encoders]
        return c.backbone.encode_text(c, prompts, encoders)

    def step(self) -> dict:
        """One optimizer step; the method's hooks say what the batch is, how the UNet is called, the loss."""
        batch = self.method.batch(self.data, self.generator, self.cfg.batch_size)
        family = self.components.backbone
        noisy, timesteps, target = family.training_sample(self.noise_scheduler, batch.latents, self.generator,
                                                          self.cfg)
        device = self.accelerator.device
        net = self.forward_modules.get(family.denoiser, self.components.denoiser)
        with self.accelerator.autocast():
            pred = self.method.predict(net, noisy.to(device), timesteps, batch, self.encode)
        loss, parts = self.method.loss(pred, target.to(device), timesteps, batch, self.noise_scheduler)
        self.guard_finite(loss)
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_step()
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    def guard_finite(self, loss: torch.Tensor) -> None:
        total = self.accelerator.reduce(loss.detach().clone(), "mean")
        if not torch.isfinite(total):
            last = list_checkpoints(self.out / "checkpoints")
            lower = f"--lr {self.cfg.lr / 10:g}"
            todo = (f"the last good checkpoint is {last[-1]}; continue from it with a lower learning rate: add "
                    f"--resume {lower} to the same command" if last else
                    f"no checkpoint was written yet; start again with a lower learning rate: add --overwrite {lower} "
                    "to the same command")
            if self.cfg.mixed_precision == "fp16":
                todo += " (or --mixed-precision bf16 / no)"
            raise TrainingDiverged(f"loss became {total.item()} at step {self.current_step + 1}; {todo}")

    # --- the loop -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        bar = tqdm(total=cfg.steps, initial=self.start_step, desc=f"train {cfg.method}",
                   disable=not self.progress or not cfg.steps)
        started = time.perf_counter()
        log = LossLog(self.out / "loss.csv", acc.is_main_process, self.start_step)
        record = {"loss": float("nan")}
        for self.current_step in range(self.start_step, cfg.steps):
            record = self.step()
            step = self.current_step + 1
            log.write(step, record, self.lr_scheduler.get_last_lr()[0])
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            bar.update(1)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                self.checkpoint(step)
            if cfg.validate_every and step % cfg.validate_every == 0:
                self.validate(step)
            if self.evaluation is not None and step % cfg.eval_every == 0:
                self.evaluation(step)
        bar.close()
        seconds = time.perf_counter() - started
        acc.wait_for_everyone()
        manifest = self.finish(record["loss"], seconds) if acc.is_main_process else {}
        acc.wait_for_everyone()
        return TrainResult(self.out, cfg.steps, record["loss"], seconds, manifest)

    def checkpoint(self, step: int) -> None:
        states = self.accelerator.gather(self.generator.get_state().unsqueeze(0).to(self.accelerator.device))
        if self.accelerator.is_main_process:
            save_checkpoint(self.out / "checkpoints", step, self.method.state_tensors(), self.optimizer,
                            self.lr_scheduler, states.cpu())
        self.accelerator.wait_for_everyone()

    def validate(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        prompts = [self.method.prompt_for_model(expand_subject(p, self.method.subject_phrase))
                   for p in self.cfg.validation_prompts]
        for module in self.method.trainable_modules().values():
            module.eval()
        images = generate(self.components, prompts, [self.cfg.seed] * len(prompts), self.cfg.sample_steps,
                          self.cfg.guidance, denoiser_for=self.method.validation_denoiser_for(self.cfg.guidance))
        for module in self.method.trainable_modules().values():
            module.train()
        atomic_save_image(self.out / "validation" / f"step-{step:06d}.png", make_grid(images, len(images)))

    def finish(self, final_loss: float, seconds: float) -> dict:
        """Write the weights, then the manifest (last: its presence marks a finished run)."""
        staging = self.out / ".final"
        shutil.rmtree(staging, ignore_errors=True)
        best = self.evaluation.best_state() if self.evaluation is not None else None
        if best is not None:  # --select best: the chosen eval point's weights, in every file the method writes
            self.method.load_state_tensors(best)
        with writing(self.out, staging):  # a full disk: a one-line error, no half-saved weights left behind
            staging.mkdir()
            files = self.method.save(staging)
            for entry in staging.iterdir():
                target = self.out / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                entry.replace(target)
            staging.rmdir()
        manifest = self.manifest(files, final_loss, seconds)
        atomic_write_json(self.out / MANIFEST, manifest)
        if self.evaluation is not None:  # the chosen point's weights are the run's files now
            self.evaluation.best_path.unlink(missing_ok=True)
            self.evaluation.draw(self.out / "eval.png")
            if manifest["evaluation"]["backdrop_warning"]:
                warnings.warn(manifest["evaluation"]["backdrop_warning"], stacklevel=2)
        return manifest

    def manifest(self, files: list[str], final_loss: float, seconds: float) -> dict:
        import accelerate, diffusers, peft, transformers

        done = self.cfg.steps - self.start_step
        return {
            "method": self.cfg.method, "model": self.cfg.model, "class": self.cfg.class_noun,
            **self.method.manifest(), "files": files, "settings": self.cfg.to_dict(),
            "subject_photos": [p.name for p in self.subject.paths] if self.subject else [],
            **self.caption_record(),
            "resolution": self.components.resolution,
            "resumes": json.loads((self.out / RUN_SPEC).read_text()).get("resumes", []),  # settings a resume changed
            # each asset's fingerprint: loading checks it
            "assets": [assets.record("model", self.cfg.model)] + self.method.asset_records(),
            **({"evaluation": self.evaluation.record()} if self.evaluation is not None else {}),
            "metrics": {"final_loss": final_loss if self.cfg.steps else None, "train_seconds": round(seconds, 3),
                        **self.time_to_subject(),
                        "steps_per_second": round(done / seconds, 3) if seconds and done else None,
                        "world_size": self.accelerator.num_processes},
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__,
                         "accelerate": accelerate.__version__, "python": platform.python_version()},
        }


    def caption_record(self) -> dict:
        """The photos' captions the run trained on (NAME.txt, {subject} in them), and those --captions auto wrote
        (made by default: kept in the run only)."""
        if self.subject is None or not self.subject.captions:
            return {}
        return {"captions": {p.name: c for p, c in zip(self.subject.paths, self.subject.captions)},
                "captions_written": sorted(p.name for p in self.new_captions) if self.writes_captions else [],
                "captions_made": sorted(p.name for p in self.new_captions)}

    def time_to_subject(self) -> dict:
        """The seconds from the start of train() (loading, class images, caching) to the weights the run keeps: with
        --select best to the chosen eval point, else to the end (saving included); the eval points' own sampling and
        scoring left out (eval_seconds), so that measuring does not count as learning."""
        if self.evaluation is None:
            return {"time_to_subject_seconds": round(time.perf_counter() - self.started, 3),
                    "time_to_subject_step": self.cfg.steps}
        kept = self.evaluation.seconds_to_kept_step()
        whole = time.perf_counter() - self.started - self.evaluation.seconds
        return {"time_to_subject_seconds": round(whole if kept is None else kept, 3),
                "time_to_subject_step": self.evaluation.kept_step() if kept is not None else self.cfg.steps,
                "eval_seconds": round(self.evaluation.seconds, 3)}


class LossLog:
    """loss.csv: one row per step (main process only). Opened at the step a run starts or resumes from, it keeps
    the rows up to that step and drops the rest (a killed run's later rows, a half-written last line), so the
    log after any kills and resumes equals an uninterrupted run's."""

    FIELDS = ["step", "loss", "instance", "prior", "lr"]

    def __init__(self, path: Path, enabled: bool, start_step: int = 0):
        self.path, self.enabled = path, enabled
        if enabled:
            kept = [r for r in self.rows() if int(r[0]) <= start_step]
            text = io.StringIO()
            csv.writer(text).writerows([self.FIELDS] + kept)
            atomic_write_bytes(path, text.getvalue().encode())

    def rows(self) -> list[list[str]]:
        """The complete rows on disk (every field present, the step a number)."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines(keepends=True)
        complete = [line for line in lines[1:] if line.endswith("\n")]
        return [r for r in csv.reader(complete) if len(r) == len(self.FIELDS) and r[0].isdigit()]

    def write(self, step: int, record: dict, lr: float) -> None:
        if self.enabled:
            with writing(self.path), self.path.open("a", newline="") as f:
                csv.writer(f).writerow([step, record["loss"], record.get("instance", ""), record.get("prior", ""), lr])


COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests use "aot_eager" (the same graphs, no C++ build)


def check_family_settings(cfg: TrainConfig, family) -> None:
    """A one-line UserError for a setting the model's family has no use for: min-SNR on flow matching, flow
    matching's timestep sampling on ε and v models."""
    if cfg.snr_gamma and family.flow_matching:
        raise UserError(f"--snr-gamma: min-SNR weighting is defined for ε and v targets, not for {family.title}'s "
                        "flow matching; leave it out")
    changed = [] if family.flow_matching else cfg.changed_flow_matching_settings()
    if changed:
        takers = ", ".join(b.title for b in FAMILIES.values() if b.flow_matching)
        raise UserError(f"--{changed[0].replace('_', '-')}: a flow-matching setting ({takers}); {family.title} is "
                        "not trained by flow matching, leave it out")


def check_compiler(device) -> None:
    """torch.compile on a CPU builds C++: without a compiler it would fail at the first step, in a traceback."""
    if torch.device(device).type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++",
                                                                               "clang++", "c++") if c):
        raise UserError("--compile on a CPU needs a C++ compiler (g++ or clang++, or CXX); install one or leave "
                        "--compile out")


def check_optimizer(name: str, device) -> None:
    """8-bit AdamW runs where bitsandbytes runs it (CUDA, and the CPU with a recent release: the tested 0.50.2): a
    one-line error before the run folder appears otherwise."""
    if name == "adamw8bit":
        check_bitsandbytes("--optimizer adamw8bit", adamw8bit_probe, device, "use --optimizer adamw")


def check_precision(mixed_precision: str, device) -> None:
    """fp16 autocasts only on an accelerator: on a CPU accelerate runs without it, so the frozen weights cast to fp16
    would meet fp32 activations at the first step, in a traceback, after run.json was written."""
    if mixed_precision == "fp16" and torch.device(device).type == "cpu":
        raise UserError("--mixed-precision fp16 needs a GPU; on a CPU use --mixed-precision bf16 (or no)")


def make_optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    if name == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
          distributed: bool = True) -> TrainResult:
    """Personalize `cfg.model` on the photos in `cfg.subject_dir` with `cfg.method`; returns the run folder.
    distributed=False keeps the run in this process even under `accelerate launch`."""
    trainer = Trainer(cfg, resume, overwrite, progress, distributed)
    try:
        return trainer.run()
    finally:
        if trainer.accelerator.is_main_process:
            release(trainer.out)
