"""The backdrop warning's margin, by its rule (docs/BENCHMARK.md, "The backdrop warning"), and a check of it.

**The rule**, fixed before these runs: on the 16 validation subjects, the perfect render (the world's own picture
of the subject in each default eval prompt's context, at the eval seeds) is what a method draws that learns the
subject and follows the prompt. The margin is the largest excess of its backdrop similarity over the base model's
(the eval points' base row: the class prompts, the eval seeds and sampler steps) among the validation subjects,
rounded up to the next 0.01, so a perfect method warns on none of them.

**The check** (not a tuning: the margin is not moved by it): the fair comparison's validation rows
(benchmarks/fair.py), each subject's bench images for the eval prompts against the baseline row's for the same
prompts, scored the same way; a run "drifted" where its CLIP-T over all 25 prompts is below 90 % of the baseline's
for that subject (the in-training rule's budget). The warning should fire on drifted runs and stay quiet on the
others.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from starting_point import validation_folder

from subjectgen.eval.metrics import backdrop_similarity, load_evaluators
from subjectgen.photos import open_photo
from subjectgen.subjects import expand_subject, load_subject
from subjectgen.training.evaluation import CLIP_T_SHARE, EVAL_SEEDS, default_eval_prompts, subject_backdrops


def subject_backgrounds(folder: Path, noun: str, resolution: int) -> list:
    """The photos' backgrounds as a run of this subject paints them (TrainingEval)."""
    return subject_backdrops(load_subject(folder, noun, resolution), folder)


def base_images(components, noun: str, cache: dict) -> list:
    """The base model's eval-point images for a class, as TrainingEval.base_row samples them (once per class)."""
    from subjectgen.config import default_eval_sample_steps
    from subjectgen.training.evaluation import eval_images

    if noun not in cache:
        family = components.backbone
        steps = default_eval_sample_steps(components.resolution, family.default_steps(components))
        prompts = [expand_subject(p, noun) for p in default_eval_prompts(noun)]
        cache[noun] = eval_images(components, prompts, steps, family.default_guidance)
    return cache[noun]


def margin_by_rule(components, subjects: dict, backgrounds: dict, evaluators) -> tuple[float, list]:
    """The margin and, per validation subject, (name, base similarity, perfect similarity)."""
    from subjectgen.world.build import render_prompt

    cache, rows = {}, []
    for name, (noun, instance) in subjects.items():
        perfect = [render_prompt(noun, instance, expand_subject(p, noun), seed)
                   for p in default_eval_prompts(noun) for seed in EVAL_SEEDS]
        rows.append((name, backdrop_similarity(evaluators, base_images(components, noun, cache), backgrounds[name]),
                     backdrop_similarity(evaluators, perfect, backgrounds[name])))
    excess = max(perfect - base for _, base, perfect in rows)
    return math.ceil(round(excess * 100, 6)) / 100, rows


def eval_prompt_images(pair: Path, root: Path, noun: str) -> list:
    """A bench pair's images for the default eval prompts (DreamBench has each of them)."""
    scores = json.loads((pair / "scores.json").read_text())
    wanted = set(default_eval_prompts(noun))
    return [open_photo(root / f) for p in scores["prompts"] if p["template"] in wanted for f in p["files"]]


def check_rows(fair: Path, subjects: dict, backgrounds: dict, evaluators) -> list:
    """Per finished validation row of the fair comparison: (row folder, method, {subject: (drifted, its backdrop
    similarity's excess over the baseline's)})."""
    out = []
    for results in sorted(fair.glob("validation/*/*/results.json")):
        row, method = results.parent, results.parent.parent.name
        pairs = json.loads(results.read_text())["pairs"]
        judged = {}
        for name, (noun, _) in subjects.items():
            own, base = pairs.get(method, {}).get(name), pairs.get("baseline", {}).get(name)
            if own is None or base is None:
                continue
            similarity = [backdrop_similarity(evaluators, eval_prompt_images(row / "pairs" / m / name, row, noun),
                                              backgrounds[name]) for m in (method, "baseline")]
            judged[name] = (own["clip_t"] < CLIP_T_SHARE * base["clip_t"], similarity[0] - similarity[1])
        if len(judged) == len(subjects):  # a row still running is left out
            out.append((row, method, judged))
    return out


def report_margin(margin: float, rows: list) -> None:
    excess = sorted(perfect - base for _, base, perfect in rows)
    print(f"**The margin by its rule: {margin:.2f}** — the largest excess of the perfect render's backdrop similarity "
          f"over the base model's among the {len(rows)} validation subjects (excesses from {excess[0]:+.3f} to "
          f"{excess[-1]:+.3f}, median {statistics.median(excess):+.3f}).\n")
    print("| subject | base model | perfect render | excess |\n|---|---|---|---|")
    for name, base, perfect in rows:
        print(f"| {name} | {base:.3f} | {perfect:.3f} | {perfect - base:+.3f} |")


def report_check(margin: float, checks: list, validation: dict, sheet: Path) -> None:
    """How often the warning fires on the fair comparison's rows, and the sheet of the row where it fires most."""
    if not checks:
        print("\nThe check needs the fair comparison's validation rows (`python benchmarks/fair.py --stage validation`); "
              "none has finished.\n")
        return
    print(f"\nThe check on the fair comparison's validation rows (bench images for the eval prompts against the "
          f"baseline's; drifted: CLIP-T below {CLIP_T_SHARE:.0%} of the baseline's for that subject):\n")
    print("| method | row | runs | drifted | warned | warned, drifted | warned, within budget |\n|---|---|---|---|---|---|---|")
    total = []
    for row, method, judged in checks:
        warned = [(drifted, excess > margin) for drifted, excess in judged.values()]
        total += warned
        print(f"| {method} | {row.name} | {tally(warned)}")
    print(f"| all | | {tally(total)}\n")
    drifted = [w for d, w in total if d]
    kept = [w for d, w in total if not d]
    print(f"The warning fired on {sum(drifted)} of {len(drifted)} drifted runs and {sum(kept)} of {len(kept)} runs "
          "within the budget. It measures one form of drift, the photos' backdrop in place of the prompt's scene; a run "
          "that loses the scene to a blank one, or draws the subject's own texture over the picture, drifts without "
          "resembling the backgrounds, and the warning says nothing of it (the eval curve and the kept step do).\n")
    row, method, judged = max(checks, key=lambda c: sum(e > margin for _, e in c[2].values()))
    draw_sheet(row, method, judged, margin, validation, sheet)
    print(f"The images ({sheet}): the row where it fired most ({method}, {row.name}); per validation subject its "
          "first photo, the background the score compares with (the subject painted over), the baseline's and the "
          "run's image for each eval prompt, and the run's excess over the baseline (red: above the margin).\n")


def draw_sheet(row: Path, method: str, judged: dict, margin: float, validation: dict, path: Path) -> None:
    """The check's images for one row (`validation`: each subject's (class, photo, background))."""
    from PIL import Image, ImageDraw
    from sheet import CELL

    prompts = max(len(default_eval_prompts(noun)) for noun, _, _ in validation.values())
    canvas = Image.new("RGB", ((3 + 2 * prompts) * CELL, len(judged) * CELL), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (name, (_, excess)) in enumerate(judged.items()):
        noun, photo, background = validation[name]
        images = [photo, background]
        for own, base in zip(*(eval_prompt_images(row / "pairs" / m / name, row, noun) for m in (method, "baseline"))):
            images += [base, own]
        for c, image in enumerate(images):
            canvas.paste(image.convert("RGB").resize((CELL, CELL)), (c * CELL, k * CELL))
        draw.text(((2 + 2 * prompts) * CELL + 4, k * CELL + CELL // 2 - 6), f"{excess:+.3f}",
                  fill="red" if excess > margin else "black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, quality=90)


def tally(judged: list[tuple[bool, bool]]) -> str:
    return (f"{len(judged)} | {sum(d for d, _ in judged)} | {sum(w for _, w in judged)} | "
            f"{sum(d and w for d, w in judged)} | {sum(w and not d for d, w in judged)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fair", default="benchmarks/out/fair", help="the fair comparison's folder (its --out)")
    parser.add_argument("--sheet", default="docs/images/backdrop_check.jpg", help="where the contact sheet goes")
    args = parser.parse_args()
    from subjectgen.models import load_model
    from subjectgen.world.build import bench_instances

    root, evaluators, components = Path(validation_folder()), load_evaluators("builtin", "builtin"), load_model("builtin")
    subjects = dict(sorted(bench_instances(root).items()))
    backgrounds = {name: subject_backgrounds(root / name, noun, components.resolution)
                   for name, (noun, _) in subjects.items()}
    margin, rows = margin_by_rule(components, subjects, backgrounds, evaluators)
    validation = {name: (noun, open_photo(sorted((root / name).glob("*.png"))[0]), backgrounds[name][0])
                  for name, (noun, _) in subjects.items()}
    report_margin(margin, rows)
    report_check(margin, check_rows(Path(args.fair), subjects, backgrounds, evaluators), validation, Path(args.sheet))


if __name__ == "__main__":
    main()
