"""EmojiBench with `subjectgen bench`: the DreamBench protocol on the built-in model and evaluators.

Full run (resumable; rerunning reuses finished pairs): 30 subjects x 25 prompts x 4 images per method.
Also times `subjectgen bench --quick` from scratch. Prints the table, the time per method, and how many
subjects each method beats the un-personalized baseline on (DINO and CLIP-I both higher). Then the
same LoRAs sampled with the `--subject-start` that benchmarks/validation.py chose on the validation
subjects (the first steps without the subject; its own --out, *-subject-start-F, runs reused). Last,
the scores of a perfect method: the world's own renders of each subject in each prompt's context,
scored under the same protocol, with the subject at the training set's scale and at the photos' scale.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bench(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "subjectgen.cli", "bench", "--quiet", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def wins(results: dict, method: str) -> tuple[int, int]:
    base, mine = results["pairs"]["baseline"], results["pairs"][method]
    won = sum(mine[s]["dino"] > base[s]["dino"] and mine[s]["clip_i"] > base[s]["clip_i"] for s in mine)
    return won, len(mine)


def chosen_row(choice_file: Path, out: str) -> tuple[str, str | None, list[str] | None]:
    """LoRA's extra row from validation.py's choice: its options, its --out and its bench arguments (None, None
    when no setting met the rule)."""
    if not choice_file.is_file():
        sys.exit(f"{choice_file} is missing; run python benchmarks/validation.py first")
    chosen = json.loads(choice_file.read_text())["chosen"]
    if not chosen:
        return "", None, None
    label = " ".join([*chosen["train_args"], "--subject-start", str(chosen["subject_start"])])
    late_out = f"{out}-{label.replace('--', '').replace(' ', '-')}"
    return label, late_out, ["--bench", "emoji", "--out", late_out, "--methods", "lora", *label.split(),
                             "--runs-from", out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/out/emojibench")
    parser.add_argument("--methods", default="lora,dreambooth,textual-inversion")
    parser.add_argument("--validation", default="benchmarks/out/validation/choice.json",
                        help="benchmarks/validation.py's choice of settings for LoRA's extra row")
    parser.add_argument("--report-only", action="store_true",
                        help="do not run the full benchmark: report the pairs finished in --out so far")
    args = parser.parse_args()
    label, late_out, late_args = chosen_row(Path(args.validation), args.out)
    with tempfile.TemporaryDirectory() as tmp:
        quick = bench(["--quick", "--out", str(Path(tmp) / "quick"), "--methods", args.methods])
    if args.report_only:
        from subjectgen.eval.report import write_outputs

        started = time.perf_counter()
        for folder in (args.out, late_out):
            if folder and (Path(folder) / "bench.json").is_file():
                write_outputs(Path(folder))
        wall = time.perf_counter() - started
    else:
        wall = bench(["--bench", "emoji", "--out", args.out, "--methods", args.methods])
        wall += bench(late_args) if late_args else 0.0
    results = json.loads((Path(args.out) / "results.json").read_text())
    late_file = Path(late_out) / "results.json" if late_out else None
    late = json.loads(late_file.read_text()) if late_file and late_file.is_file() else None
    summary = results["summary"]
    print(f"`subjectgen bench --bench emoji --methods {args.methods}` (built-in model and evaluators, "
          f"{results['protocol']['images_per_prompt']} images per prompt, 2 CPU threads):\n")
    print((Path(args.out) / "table.md").read_text())
    print("| method | beats baseline on DINO and CLIP-I | CLIP-T vs baseline | time for 30 subjects |")
    print("|---|---|---|---|")
    rows = [(method, results, method) for method in args.methods.split(",")]
    if late_out:
        rows.append((f"lora, `{label}` (chosen on the validation subjects)", late, "lora"))
    for name, source, method in rows:
        if source is None or method not in source["summary"]:
            print(f"| {name} | not run yet | | |")
            continue
        s, won = source["summary"][method], wins(source, method)
        per_subject = s["train_seconds_per_subject"] + s["generate_seconds_per_subject"]
        ratio = s["clip_t"] / source["summary"]["baseline"]["clip_t"] - 1
        done = "" if s["subjects"] == 30 else f" (from the {s['subjects']} subjects finished so far)"
        print(f"| {name} | {won[0]}/{won[1]} subjects | {ratio:+.1%} | {per_subject * 30 / 60:.1f} min{done} |")
    if late is not None and "lora" in late["summary"]:
        s = late["summary"]["lora"]
        print(f"\nlora with `{label}`: DINO {s['dino']:.3f}, CLIP-I {s['clip_i']:.3f}, "
              f"CLIP-T {s['clip_t']:.3f} (`subjectgen bench {' '.join(late_args)}`: the first steps sampled with "
              "the class prompt and the base weights; runs trained the same way and the baseline are reused; the "
              "setting was chosen on the validation subjects, above, not on EmojiBench).")
    print(f"\nBaseline: {summary['baseline']['generate_seconds_per_subject'] * 30 / 60:.1f} min of sampling for 30 "
          "subjects. Time per method = the sum over subjects of training (loading, class images, the loop) and "
          f"generation; scoring excluded. This invocation's wall clock: {wall / 60:.1f} min (pairs finished "
          f"earlier are reused). `subjectgen bench --bench emoji --quick` from scratch: {quick / 60:.1f} min.")


if __name__ == "__main__":
    main()
