"""What evaluation inside training costs (`train --eval-every`, issue 38): each method at its built-in defaults,
trained with and without eval points (every fifth of its steps: 5 points, plus the base model's scores once),
alternately on the same EmojiBench subjects at one thread. A short run of each method and subject first fills the
caches every later run of the class finds (the class images, the base model's eval images), so the rows compare
like with like: the first run of a class on a machine also samples the base row once, about one point more. The extra CPU seconds (user + system, steadier than the
wall clock on a shared machine) against the whole `train` command's without eval decide where eval is on by
default: where it costs at most 20 %.

    python benchmarks/eval_cost.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timing import train_alternately  # noqa: E402 (benchmarks/ is on sys.path when run)

from subjectgen.methods import registry

METHODS = ("lora", "dreambooth", "textual-inversion")
SUBJECTS = ("dog", "backpack")
POINTS, BUDGET = registry.EVAL_POINTS, registry.EVAL_BUDGET  # train's own: on by default where within budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/eval-cost")
    args = parser.parse_args()
    train_alternately(Path(args.out), SUBJECTS, {f"{m} warm-up": [m, "--steps", "5", "--eval-every", "5"]
                                                 for m in METHODS})
    rows = []
    for method in METHODS:
        every = registry.get(method).default("steps", small=True) // POINTS
        times = train_alternately(Path(args.out), SUBJECTS, {method: [method, "--eval-every", "0"],
                                                             f"{method} eval": [method, "--eval-every", str(every)]})
        train = sum(times[method, s]["cpu"] for s in SUBJECTS)
        extra = sum(times[f"{method} eval", s]["cpu"] - times[method, s]["cpu"] for s in SUBJECTS)
        rows.append((method, every, train / len(SUBJECTS), extra / len(SUBJECTS), extra / train))
    print(f"Each method at its built-in defaults, with and without `--eval-every` (every fifth of its steps), "
          f"alternately on {', '.join(SUBJECTS)}, one thread; CPU seconds per subject:\n")
    print("| method | --eval-every | train CPU s (no eval) | eval's extra CPU s | cost | on by default (≤ "
          f"{BUDGET:.0%}) |\n|---|---|---|---|---|---|")
    for method, every, train, extra, share in rows:
        print(f"| {method} | {every} | {train:.1f} | {extra:.1f} | {share:.0%} | {'yes' if share <= BUDGET else 'no'} |")
    per_point = sum(extra for *_, extra, _ in rows) / len(rows) / POINTS
    print(f"\nAn eval point ({POINTS} points; the base row read from the cache) costs about {per_point:.1f} CPU s "
          "here: its prompts' "
          "images at two seeds in `--eval-sample-steps` sampler steps (10 on the built-in model), scored. Where the "
          "cost column says no, `--eval-every` stays off by default and is the user's choice.")


if __name__ == "__main__":
    main()
