"""Do eval points sampled in fewer steps score like full ones? (`train --eval-sample-steps`, issue 38.)

Eval inside training spends almost all its time sampling. This check scores the eval prompts' images (one prompt per
DreamBench type, the eval seeds, as `train --eval-every` makes them) of the base model and of trained LoRA runs at
the full sampler steps and at fewer, on the validation subjects (never EmojiBench), with the built-in evaluators. What
matters for the rule is that likeness and prompt-following move together at both step counts, and that the rule's
budget test (a run's CLIP-T at least 90 % of the base model's) comes out the same.

The runs are the fair comparison's LoRA runs at the current default (benchmarks/fair.py's first LoRA row): run that
first. Costs are CPU seconds at one thread.

    python benchmarks/eval_steps.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from starting_point import validation_folder

RUNS = "benchmarks/out/fair/validation/lora/current-default--300-steps/pairs/lora"
STEPS = (25, 10)


def scored_point(run, noun: str, photos: list, steps: int, evaluators, base: bool) -> dict:
    """One eval point of `run` (the base model's when `base`) at `steps`, as `train --eval-every` makes and scores
    it, with its sampling's CPU seconds."""
    from subjectgen.subjects import expand_subject
    from subjectgen.training.evaluation import default_eval_prompts, eval_images, eval_scores

    prompts, guidance = default_eval_prompts(noun), run.components.backbone.default_guidance
    model_prompts = [expand_subject(p, noun) if base else run.prompt_for_model(p) for p in prompts]
    started = time.process_time()
    images = eval_images(run.components, model_prompts, steps, guidance,
                         None if base else run.denoiser_for("", guidance))
    seconds = time.process_time() - started
    return {**eval_scores(evaluators, images, photos, prompts, noun), "cpu": seconds}


def measure(runs: Path, bench: Path) -> list[dict]:
    from subjectgen.eval.metrics import load_evaluators
    from subjectgen.eval.prompts import read_benchmark
    from subjectgen.generation import open_run_or_model
    from subjectgen.photos import open_photo, photo_paths

    evaluators, base = load_evaluators("builtin", "builtin"), open_run_or_model("builtin")
    rows = []
    for subject, noun in read_benchmark(bench).classes.items():
        if not (runs / subject / "run" / "subject.json").is_file():
            continue
        trained = open_run_or_model(str(runs / subject / "run"))
        photos = [open_photo(p) for p in photo_paths(bench / subject)]
        for model, run in (("base", base), ("lora", trained)):
            for steps in STEPS:
                rows.append({"subject": subject, "model": model, "steps": steps,
                             **scored_point(run, noun, photos, steps, evaluators, model == "base")})
    return rows


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    ra, rb = ranks(a), ranks(b)
    mean = (len(a) - 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb))
    var = sum((x - mean) ** 2 for x in ra)
    return cov / var


def report(rows: list[dict]) -> None:
    full, few = STEPS
    at = {(r["subject"], r["model"], r["steps"]): r for r in rows}
    keys = sorted({(r["subject"], r["model"]) for r in rows})
    subjects = sorted({s for s, _ in keys})
    print(f"The eval points' images (one prompt per DreamBench type, {len(subjects)} validation subjects, the base model "
          f"and the fair comparison's LoRA run at its current default) at {full} and {few} DDIM steps, built-in "
          "evaluators, one thread:\n")
    print(f"| score | mean at {full} | mean at {few} | mean abs difference | rank correlation (Spearman) |")
    print("|---|---|---|---|---|")
    for metric in ("dino", "clip_t"):
        a, b = [at[k + (full,)][metric] for k in keys], [at[k + (few,)][metric] for k in keys]
        print(f"| {metric.upper().replace('_', '-')} | {sum(a) / len(a):.3f} | {sum(b) / len(b):.3f} | "
              f"{sum(abs(x - y) for x, y in zip(a, b)) / len(a):.3f} | {spearman(a, b):.2f} |")
    gaps = {steps: [at[(s, "lora", steps)]["dino"] - at[(s, "base", steps)]["dino"] for s in subjects]
            for steps in STEPS}
    within = {steps: [at[(s, "lora", steps)]["clip_t"] >= 0.9 * at[(s, "base", steps)]["clip_t"] for s in subjects]
              for steps in STEPS}
    same = sum(x == y for x, y in zip(within[full], within[few]))
    cpu = {steps: sum(r["cpu"] for r in rows if r["steps"] == steps) for steps in STEPS}
    print(f"\nThe run's likeness gain over the base model (DINO, trained − base): mean {sum(gaps[full]) / len(subjects):.3f}"
          f" at {full} steps, {sum(gaps[few]) / len(subjects):.3f} at {few}; rank correlation over the subjects "
          f"{spearman(gaps[full], gaps[few]):.2f}. The rule's budget test (the run's CLIP-T ≥ 90 % of the base "
          f"model's) comes out the same at both for {same} of {len(subjects)} subjects. Sampling CPU seconds: "
          f"{cpu[few] / cpu[full]:.0%} of the full steps' at {few}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=RUNS, help="a bench folder's pairs/lora (trained LoRA runs)")
    parser.add_argument("--out", default="benchmarks/out/eval-steps")
    args = parser.parse_args()
    saved = Path(args.out) / "rows.json"
    if not saved.is_file():
        if not Path(args.runs).is_dir():
            raise SystemExit(f"no runs at {args.runs}: run `python benchmarks/fair.py --stage validation "
                             "--methods lora` first")
        rows = measure(Path(args.runs), Path(validation_folder()))
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(rows, indent=1))
    report(json.loads(saved.read_text()))


if __name__ == "__main__":
    main()
