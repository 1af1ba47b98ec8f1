"""Evaluation inside training: likeness and prompt-following measured at eval points, and the step a rule keeps.

At every `--eval-every N` steps the run samples a few images at fixed seeds for a small fixed set of held-out
prompts — one per DreamBench prompt type (recontextualization, accessorization for live subjects, property), or
the user's `--eval-prompt`s — and scores DINO and CLIP-I against the photos and CLIP-T against the prompt with
the identifier removed, with the bench's evaluators. The base model's scores on the same class prompts and
seeds are computed once, before the first step. Rows go to eval.csv (kept in step with loss.csv across kills
and resumes). With `--select best` the run keeps the eval point the rule below chooses, in every file it
writes (docs/BENCHMARK.md, "Choosing the step").
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..eval.metrics import backdrop_similarity, backdrops
from ..photos import fit, masks_beside, open_mask, open_photo
from ..safeio import atomic_save_safetensors, atomic_write_bytes, writing
from ..subjects import expand_subject

LIVE = ("dog", "cat")  # DreamBench's live subjects: their prompt list has outfits (accessorization)
EVAL_SEEDS = (0, 1)
CLIP_T_SHARE = 0.9  # the rule's budget: an eval point must keep 90 % of the base model's CLIP-T
RULE = (f"the highest DINO among the eval points whose CLIP-T is at least {CLIP_T_SHARE:.0%} of the base model's "
        "(ties: the earliest); when none is, the eval point with the highest CLIP-T (the least drift)")
BEST_FILE = "eval_best.safetensors"


def default_eval_prompts(class_noun: str) -> list[str]:
    """One prompt per DreamBench prompt type: recontextualization, accessorization (live subjects only, as in
    DreamBench), property."""
    accessorized = ["a {subject} wearing a santa hat"] if class_noun in LIVE else []
    return ["a {subject} on the beach", *accessorized, "a red {subject}"]


@dataclass
class EvalPoint:
    step: int
    dino: float
    clip_i: float
    clip_t: float
    backdrop: float = 0.0  # CLIP image similarity to the photos' backgrounds alone (eval.metrics.backdrops)


def choose(points: list[EvalPoint], base_clip_t: float, share: float = CLIP_T_SHARE) -> EvalPoint:
    """The rule (RULE): over budget is never chosen while any point is within it."""
    if not points:
        raise ValueError("choose() needs at least one eval point")
    within = [p for p in points if p.clip_t >= share * base_clip_t]
    if within:
        return max(within, key=lambda p: (p.dino, -p.step))
    return max(points, key=lambda p: (p.clip_t, -p.step))


class EvalLog:
    """eval.csv: the base row (step 0, 'base') and one row per eval point; like loss.csv, opened at the step a run
    starts or resumes from it keeps the rows up to that step, so kills and resumes leave the uninterrupted run's."""

    FIELDS = ["step", "kind", "dino", "clip_i", "clip_t", "backdrop"]

    def __init__(self, path: Path, start_step: int):
        self.path = path
        kept = [r for r in self.rows() if int(r["step"]) <= start_step]
        text = io.StringIO()
        writer = csv.DictWriter(text, self.FIELDS)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_bytes(path, text.getvalue().encode())

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = [line for line in self.path.read_text().splitlines(keepends=True) if line.endswith("\n")]
        return [r for r in csv.DictReader(lines) if r.get("clip_t") not in (None, "") and r["step"].isdigit()]

    def write(self, point: EvalPoint, kind: str) -> None:
        with writing(self.path), self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow({**asdict(point), "kind": kind})

    def points(self) -> tuple[EvalPoint | None, list[EvalPoint]]:
        """(the base row, the eval points) on disk."""
        rows = [(r["kind"], EvalPoint(int(r["step"]), float(r["dino"]), float(r["clip_i"]), float(r["clip_t"]),
                                      float(r["backdrop"]))) for r in self.rows()]
        base = next((p for kind, p in rows if kind == "base"), None)
        return base, [p for kind, p in rows if kind == "step"]


# The largest excess of a perfect render's backdrop similarity over the base model's among the validation subjects,
# rounded up (the rule in docs/BENCHMARK.md, "The backdrop warning"; benchmarks/backdrop_margin.py, docs/RESULTS.md)
BACKDROP_MARGIN = 0.15


def backdrop_warning(base: EvalPoint, kept: EvalPoint, captioned: bool = False, masked: bool = False) -> str | None:
    """One line when the kept images resemble the photos' backgrounds clearly more than the base model's do, with
    what helps that the run does not do already (`captioned`: it trained on captions; `masked`: a masked loss)."""
    if kept.backdrop - base.backdrop <= BACKDROP_MARGIN:
        return None
    helps = [*([] if captioned else ["captions (NAME.txt with {subject})"]), *([] if masked else ["--masked-loss"]),
             "fewer --steps or a lower --lr"]
    return (f"the images at step {kept.step} copy the photos' backgrounds (backdrop similarity "
            f"{kept.backdrop:.3f} against the base model's {base.backdrop:.3f}) rather than the prompt's scene; "
            f"{', '.join(helps)} help")


def backdrop_masks(subject, folder) -> list | None:
    """The subject masks the backdrop score paints over: the run's own (a masked loss's), else the photos' masks
    where every photo has one, so the score does not depend on the loss; None: the photos' centre half."""
    if subject.masks is not None or not masks_beside(folder):
        return subject.masks
    return [fit(open_mask(path, open_photo(path).size), image.size) for path, image in zip(subject.paths, subject.images)]


def subject_backdrops(subject, folder) -> list:
    """The photos' backgrounds the backdrop score compares a run's images with (eval.metrics.backdrops)."""
    return backdrops(subject.images, backdrop_masks(subject, folder))


def load_eval_evaluators(dino: str, clip: str):
    """The bench's evaluators, or a one-line error naming the flags (before the run folder appears)."""
    from ..eval.metrics import load_evaluators

    try:
        return load_evaluators(dino, clip)
    except UserError as exc:
        raise UserError(f"--eval-every: {exc}") from None


def eval_images(components, model_prompts: list[str], steps: int, guidance: float, denoiser_for=None) -> list:
    """An eval point's images: each prompt (as the model reads it) at EVAL_SEEDS, in order."""
    from ..sampling import generate

    return generate(components, [p for p in model_prompts for _ in EVAL_SEEDS], list(EVAL_SEEDS) * len(model_prompts),
                    steps, guidance, denoiser_for=denoiser_for)


def eval_scores(evaluators, images: list, photos: list, prompts: list[str], class_noun: str) -> dict[str, float]:
    """DINO, CLIP-I and CLIP-T of an eval point's images (eval_images' order), as the bench scores them: per prompt
    (CLIP-T against it with the subject as the class noun), then the mean over the prompts."""
    from ..eval.metrics import score_images

    n = len(EVAL_SEEDS)
    scores = [score_images(evaluators, images[k * n:(k + 1) * n], photos, expand_subject(prompt, class_noun))
              for k, prompt in enumerate(prompts)]
    return {key: sum(s[key] for s in scores) / len(scores) for key in ("dino", "clip_i", "clip_t")}


class TrainingEval:
    """A run's eval points: the base row once, then each point's scores, and the best state by the rule."""

    def __init__(self, trainer, evaluators, start_step: int):
        started = time.perf_counter()
        self.seconds = 0.0  # spent sampling and scoring (the base row, the eval points): measuring, not learning
        cfg, self.trainer, self.ev = trainer.cfg, trainer, evaluators
        self.prompts = cfg.eval_prompts or default_eval_prompts(cfg.class_noun)
        self.backgrounds = subject_backdrops(trainer.subject, cfg.subject_dir)
        self.log = EvalLog(trainer.out / "eval.csv", start_step)
        self.best_path = trainer.out / BEST_FILE
        base, self.points = self.log.points()
        kept = self.best_step()
        if kept is not None and kept > start_step:
            self.best_path.unlink()  # a point the resumed run will reach again
        if base is None:
            base = self.base_row()
            self.log.write(base, "base")
        self.base = base
        self.seconds += time.perf_counter() - started

    def score(self, step: int, model_prompts: list[str]) -> EvalPoint:
        """The eval prompts' images at the fixed seeds, scored as the bench scores them (means over prompts)."""
        return self.scored(step, self.sample(step, model_prompts))

    def base_row(self) -> EvalPoint:
        """The base model's point: its images depend on the model and the eval settings only, not on the subject,
        so they are made once per model and class and kept in the cache (the first run of a class pays for them)."""
        from .data import cached_images, generation_key

        cfg, c = self.trainer.cfg, self.trainer.components
        prompts = [expand_subject(p, cfg.class_noun) for p in self.prompts]
        key = generation_key(c.ref, prompts=prompts, seeds=list(EVAL_SEEDS), steps=cfg.eval_sample_steps,
                             guidance=cfg.guidance, resolution=c.resolution, mixed_precision=cfg.mixed_precision,
                             base_quantization=cfg.base_quantization)
        images, _ = cached_images("eval_base", key, lambda: self.sample(0, prompts), {"model": c.ref, "prompts": prompts})
        return self.scored(0, images)

    def sample(self, step: int, model_prompts: list[str]) -> list:
        """Each prompt's images at EVAL_SEEDS, in eval_sample_steps; at step 0 the base model's (plain guidance)."""
        t, cfg = self.trainer, self.trainer.cfg
        modules = list(t.method.trainable_modules().values())
        for module in modules:
            module.eval()
        images = eval_images(t.components, model_prompts, cfg.eval_sample_steps, cfg.guidance,
                             t.method.validation_denoiser_for(cfg.guidance) if step else None)
        for module in modules:
            module.train()
        return images

    def scored(self, step: int, images: list) -> EvalPoint:
        t = self.trainer
        mean = eval_scores(self.ev, images, t.subject.images, self.prompts, t.cfg.class_noun)
        return EvalPoint(step, **mean, backdrop=backdrop_similarity(self.ev, images, self.backgrounds))

    def __call__(self, step: int) -> EvalPoint:
        t, started = self.trainer, time.perf_counter()
        reached = started - t.started - self.seconds  # the training seconds to this step: time to subject
        prompts = [t.method.prompt_for_model(expand_subject(p, t.method.subject_phrase)) for p in self.prompts]
        point = self.score(step, prompts)
        self.log.write(point, "step")
        self.points.append(point)
        if t.cfg.select == "best" and choose(self.points, self.base.clip_t) is point:
            tensors = {k: v.detach().float().cpu().contiguous() for k, v in t.method.state_tensors().items()}
            atomic_save_safetensors(self.best_path, tensors, metadata={"step": str(step), "seconds": f"{reached:.3f}"})
        self.seconds += time.perf_counter() - started
        return point

    def best_metadata(self) -> dict[str, str]:
        """The kept point's step and the training seconds to it, as saved beside its weights ({} when none is)."""
        if not self.best_path.is_file():
            return {}
        from safetensors import safe_open

        with safe_open(str(self.best_path), "pt") as f:
            return f.metadata()

    def best_step(self) -> int | None:
        step = self.best_metadata().get("step")
        return None if step is None else int(step)

    def seconds_to_kept_step(self) -> float | None:
        """With --select best, the training seconds to the chosen point (in the process that reached it: a resumed
        run counts from its last start, as train_seconds does); None otherwise: the whole training is the time."""
        if self.trainer.cfg.select != "best" or self.kept_step() != self.best_step():
            return None
        seconds = self.best_metadata().get("seconds")
        return None if seconds is None else float(seconds)

    def best_state(self) -> dict[str, torch.Tensor] | None:
        """The chosen point's trainable tensors, when it is not the last step (None: keep the final weights)."""
        from safetensors.torch import load_file

        if self.kept_step() == self.trainer.cfg.steps or not self.best_path.is_file():
            return None
        return load_file(str(self.best_path))

    def record(self) -> dict:
        """What the manifest keeps: the rule, the base row, the curve and the chosen step."""
        kept = next((p for p in self.points if p.step == self.kept_step()), None)
        captioned = self.trainer.subject is not None and any(self.trainer.subject.captions or [])
        warning = backdrop_warning(self.base, kept, captioned, bool(self.trainer.cfg.masked_loss)) if kept else None
        return {"rule": RULE, "select": self.trainer.cfg.select, "backdrop_warning": warning,
                "prompts": self.prompts, "seeds": list(EVAL_SEEDS), "sample_steps": self.trainer.cfg.eval_sample_steps,
                "base": asdict(self.base), "curve": [asdict(p) for p in self.points],
                "chosen_step": self.kept_step()}

    def draw(self, path: Path) -> None:
        """eval.png: likeness (DINO) against prompt-following (CLIP-T) over the eval points, the base model's point
        and the kept one marked. A picture only: a failure here is a warning, never the loss of the run."""
        from ..eval.plots import scatter_plot

        curve = [(p.clip_t, p.dino) for p in self.points]
        kept = next(((p.clip_t, p.dino) for p in self.points if p.step == self.kept_step()), None)
        try:
            scatter_plot(path, {"base model": [(self.base.clip_t, self.base.dino)], "eval points": curve},
                         "CLIP-T", "DINO", curves={"eval points": curve},
                         chosen={"eval points": kept} if kept else None)
        except (OSError, ValueError) as exc:
            import warnings

            warnings.warn(f"could not draw {path}: {exc}", stacklevel=2)

    def kept_step(self) -> int:
        """The step whose weights the run keeps: the rule's with --select best, else the last."""
        if self.trainer.cfg.select == "best" and self.points:
            return choose(self.points, self.base.clip_t).step
        return self.trainer.cfg.steps
