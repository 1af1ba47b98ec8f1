"""Choose LoRA's training and sampling settings on the validation subjects, so that EmojiBench stays a
test set.

The validation subjects (`subjectgen world build --set validation`) are 14 never-seen instances of the
world's classes, neither in the base model's training set nor in EmojiBench. The grid: LoRA trained
two ways (the defaults; twice the steps), each sampled with several `--subject-start` fractions
(runs and the baseline are reused across folders with `bench --runs-from`); 25 prompts x 1 image per
subject. The rule, fixed before the first run: among the settings whose CLIP-T is within 10 % of the
un-personalized baseline's, take the one that beats the baseline on DINO and CLIP-I for the most
subjects; on a tie, the earlier training row, then the smaller subject start. The grid grew once:
the first pass went up to a start of 0.3, where nothing was within the CLIP-T budget, so 0.4 and 0.5
were added. (A third training row, random-background augmentation, was tried and removed: 6/14 wins,
CLIP-T -43 % at start 0.) Writes the choice to OUT/choice.json, which benchmarks/emojibench.py reads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# How LoRA is trained: its defaults on the built-in model (300 steps), and twice the steps
TRAINING = {"default": [], "600 steps": ["--train-steps", "600"]}
SUBJECT_STARTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # --subject-start: the fraction of steps sampled without the subject
CLIP_T_BUDGET = -0.10            # CLIP-T within 10 % of the baseline's, as issue 3 asks of EmojiBench


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "subjectgen.cli", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/validation")
    parser.add_argument("--images-per-prompt", default="1")
    args = parser.parse_args()
    out = Path(args.out)
    subjects = out / "subjects"
    if not (subjects / "prompts_and_classes.txt").is_file():
        run(["world", "build", "--set", "validation", "--out", str(subjects)])
    started, rows, first = time.perf_counter(), [], None
    for training, train_args in TRAINING.items():
        runs = None
        for start in SUBJECT_STARTS:
            folder = out / f"{training.replace(' ', '-')}-start-{start}"
            command = ["bench", "--quiet", "--bench", str(subjects), "--dino", "builtin", "--clip", "builtin",
                       "--methods", "lora", "--images-per-prompt", args.images_per_prompt, "--out", str(folder),
                       "--subject-start", str(start), *train_args]
            source = runs or first  # this training's runs, or at least the first folder's baseline
            run([*command, *(["--runs-from", str(source)] if source else [])])
            runs, first = runs or folder, first or folder
            results = json.loads((folder / "results.json").read_text())
            base, lora = results["pairs"]["baseline"], results["pairs"]["lora"]
            won = sum(lora[s]["dino"] > base[s]["dino"] and lora[s]["clip_i"] > base[s]["clip_i"] for s in lora)
            mean = results["summary"]["lora"]
            rows.append({"training": training, "train_args": train_args, "subject_start": start, "wins": won,
                         "subjects": len(lora), **{m: mean[m] for m in ("dino", "clip_i", "clip_t")},
                         "clip_t_vs_baseline": mean["clip_t"] / results["summary"]["baseline"]["clip_t"] - 1})
    allowed = [r for r in rows if r["clip_t_vs_baseline"] >= CLIP_T_BUDGET]
    order = list(TRAINING)
    choice = max(allowed, key=lambda r: (r["wins"], -order.index(r["training"]), -r["subject_start"]), default=None)
    base = results["summary"]["baseline"]
    print(f"LoRA on the {rows[0]['subjects']} validation subjects, 25 prompts x "
          f"{args.images_per_prompt} image(s), for each training length and `--subject-start`. "
          f"Baseline: DINO {base['dino']:.3f}, CLIP-I {base['clip_i']:.3f}, CLIP-T {base['clip_t']:.3f}.\n")
    print("| training | `--subject-start` | DINO | CLIP-I | CLIP-T | CLIP-T vs baseline | "
          "beats baseline on DINO and CLIP-I |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mark = " (chosen)" if r is choice else ""
        print(f"| {r['training']} | {r['subject_start']}{mark} | {r['dino']:.3f} | {r['clip_i']:.3f} | "
              f"{r['clip_t']:.3f} | {r['clip_t_vs_baseline']:+.1%} | {r['wins']}/{r['subjects']} subjects |")
    if choice is None:
        print(f"\nNo setting keeps CLIP-T within {-CLIP_T_BUDGET:.0%} of the baseline; nothing chosen.")
    else:
        print(f"\nChosen by the rule above: `{' '.join(choice['train_args'] + ['--subject-start'])} "
              f"{choice['subject_start']}`; EmojiBench reports LoRA with it as its own row.")
    print(f"\nWall clock of this invocation: {(time.perf_counter() - started) / 60:.1f} min (finished folders are "
          "reused).")
    chosen = {"train_args": choice["train_args"], "subject_start": choice["subject_start"]} if choice else None
    (out / "choice.json").write_text(json.dumps({"chosen": chosen, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
