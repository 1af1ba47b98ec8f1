"""What evaluation inside training costs (`train --eval-every`, issue 38): each method at its built-in defaults,
trained with and without eval points (its own on the built-in model where it has them, else every fifth of its
steps: 5 points; plus the base model's scores once),
alternately on the same EmojiBench subjects at one thread. A short run of each method and subject first fills the
caches every later run of the class finds (the class images, the base model's eval images), so the rows compare
like with like: the first run of a class on a machine also samples the base row once, about one point more. The extra CPU seconds (user + system, steadier than the
wall clock on a shared machine) against the whole `train` command's without eval decide where eval is on by
default: where it costs at most 20 %.

    python benchmarks/eval_cost.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from timing import train_alternately  # noqa: E402 (benchmarks/ is on sys.path when run)

from subjectgen.methods import registry

METHODS = ("lora", "dreambooth", "textual-inversion")
SUBJECTS = ("dog", "backpack")
POINTS, BUDGET = registry.EVAL_POINTS, registry.EVAL_BUDGET  # train's own: on by default where within budget


def eval_seconds(out: Path, label: str, subject: str) -> float:
    """The eval points' own seconds in a run (its subject.json's metrics.eval_seconds)."""
    run = out / f"{label.replace(' ', '_')}-{subject}"
    return json.loads((run / "subject.json").read_text())["metrics"]["eval_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/eval-cost")
    args = parser.parse_args()
    train_alternately(Path(args.out), SUBJECTS, {f"{m} warm-up": [m, "--steps", "5", "--eval-every", "5"]
                                                 for m in METHODS})
    rows = []
    for method in METHODS:
        spec = registry.get(method)  # its own points where it has them, else every fifth of its steps
        points = spec.builtin_eval[0] if spec.builtin_eval else POINTS
        every = spec.default("steps", small=True) // points
        label = f"{method} eval"
        times = train_alternately(Path(args.out), SUBJECTS, {method: [method, "--eval-every", "0"],
                                                             label: [method, "--eval-every", str(every)]})
        train = sum(times[method, s]["cpu"] for s in SUBJECTS)
        extra = sum(times[label, s]["cpu"] - times[method, s]["cpu"] for s in SUBJECTS)
        own = [eval_seconds(Path(args.out), label, s) for s in SUBJECTS]
        rest = sum(times[label, s]["wall"] for s in SUBJECTS) - sum(own)
        rows.append((method, every, train / len(SUBJECTS), extra / len(SUBJECTS), extra / train,
                     sum(own) / len(SUBJECTS), sum(own) / rest, points))
    print(f"Each method at its built-in defaults, with and without `--eval-every` (its own points, else every fifth "
          "of its steps), "
          f"alternately on {', '.join(SUBJECTS)}, one thread; seconds per subject. Two measures of the cost: the "
          "CPU seconds the run with eval points takes beyond the run without them (two processes: a busy machine "
          "shifts it), and the eval points' own seconds inside the run with them (`metrics.eval_seconds`) against "
          "the rest of that run (one process), which decides:\n")
    print("| method | --eval-every | run without eval, CPU s | eval's extra CPU s | cost by the difference | eval "
          f"points' own s | cost in the run | within {BUDGET:.0%} | on by default |\n|---|---|---|---|---|---|---|---|---|")
    for method, every, train, extra, share, own, in_run, _ in rows:
        on = registry.get(method).builtin_eval
        print(f"| {method} | {every} | {train:.1f} | {extra:.1f} | {share:.0%} | {own:.1f} | {in_run:.0%} | "
              f"{'yes' if in_run <= BUDGET else 'no'} | {f'yes, keeping the {on[1]} step' if on else 'no'} |")
    per_point = sum(row[5] / row[7] for row in rows) / len(rows)
    print(f"\nAn eval point (the base row read from the cache) costs about {per_point:.1f} CPU s here: its prompts' "
          "images at two seeds in `--eval-sample-steps` sampler steps (10 on the built-in model), scored (loading the "
          "evaluators, once per run, is in the rest of the run). `train` on the built-in model scores eval points by "
          f"default where they cost at most {BUDGET:.0%} of the run, or where the fair comparison chose steps by rule "
          "(the last column; registry.builtin_eval); elsewhere `--eval-every` is the user's choice.")


if __name__ == "__main__":
    main()
