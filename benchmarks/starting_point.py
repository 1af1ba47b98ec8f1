"""The honest starting point: LoRA, DreamBooth and Textual Inversion on the built-in model, on EmojiBench and on
the validation subjects of World v3, with the gain score.

Both sets come from the world's reserved region (no training or evaluator set rendered them); both benches
have a perfect row (the world's own render of each subject in each prompt's context), so each method's gain,
(DINO - baseline) / (perfect - baseline), says how much of the reachable likeness it gets. 25 prompts x
`--images-per-prompt` (default 1) per subject, the methods' default settings, built-in evaluators. Resumable
(finished pairs are reused); `--runs-from-dir D` reuses runs trained earlier in D/runs-emojibench and
D/runs-validation by the same settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

METHODS = {"emojibench": "lora,dreambooth,textual-inversion",
           "validation": "lora,textual-inversion"}  # DreamBooth-full (slowest) left out of validation for time
VALIDATION = "benchmarks/out/v3/validation-subjects"


def validation_folder() -> str:
    """The validation subjects as a bench folder (`world build --set validation`), built on first use."""
    if not (Path(VALIDATION) / "prompts_and_classes.txt").is_file():
        subprocess.run([sys.executable, "-m", "subjectgen.cli", "world", "build", "--set", "validation", "--out",
                        VALIDATION], check=True, stdout=subprocess.DEVNULL)
    return VALIDATION


def bench(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "subjectgen.cli", "bench", "--quiet", *args], check=True,
                   stdout=subprocess.DEVNULL)


def report(title: str, folder: Path, methods: list[str]) -> None:
    from subjectgen.eval.report import gain

    results = json.loads((folder / "results.json").read_text())
    pairs, summary = results["pairs"], results["summary"]
    print(f"### {title}\n")
    print((folder / "table.md").read_text())
    print("| method | beats baseline on DINO and CLIP-I | gain above 1 (copies the photos) on | "
          "gain below 0.25 on |")
    print("|---|---|---|---|")
    base, perfect = pairs["baseline"], pairs["perfect"]
    for method in methods:
        mine = pairs[method]
        won = sum(mine[s]["dino"] > base[s]["dino"] and mine[s]["clip_i"] > base[s]["clip_i"] for s in mine)
        gains = {s: gain(mine[s]["dino"], base[s]["dino"], perfect[s]["dino"]) for s in mine}
        over = [s for s, g in gains.items() if g is not None and g > 1]
        under = [s for s, g in gains.items() if g is not None and g < 0.25]
        print(f"| {method} | {won}/{len(mine)} subjects | {len(over)}: {', '.join(over) or '–'} | "
              f"{len(under)}: {', '.join(under) or '–'} |")
    s = summary["perfect"]
    print(f"\nPerfect row: DINO {s['dino']:.3f}, CLIP-T {s['clip_t']:.3f} ({s['clip_t_vs_baseline']:+.1%} against the "
          f"baseline): the evaluators' ceiling for a method that places the subject itself in each scene.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/v3")
    parser.add_argument("--images-per-prompt", default="1")
    parser.add_argument("--runs-from-dir", help="a folder with runs-emojibench/ and runs-validation/ to reuse")
    args = parser.parse_args()
    out, started = Path(args.out), time.perf_counter()
    validation_folder()
    sets = {"EmojiBench": ("emoji", "emojibench"), "Validation subjects": (VALIDATION, "validation")}
    for title, (source, name) in sets.items():
        runs = Path(args.runs_from_dir) / f"runs-{name}" if args.runs_from_dir else None
        bench(["--bench", source, "--dino", "builtin", "--clip", "builtin", "--methods", METHODS[name],
               "--images-per-prompt", args.images_per_prompt, "--out", str(out / name),
               *(["--runs-from", str(runs)] if runs and runs.is_dir() else [])])
    print(f"`subjectgen bench --images-per-prompt {args.images_per_prompt}` on the built-in model (v2, trained on "
          "World v2) and the built-in evaluators (World v3), 25 prompts per subject; on the validation subjects "
          "without DreamBooth-full (the slowest method; time). Since stop 14 the built-in DINO is the one with "
          "instance views (docs/WORLD.md); these are the same runs and images as before, scored again by it "
          "(`benchmarks/rescore.py`, bench's evaluator-only `--runs-from`):\n")
    for title, (_, name) in sets.items():
        report(title, out / name, METHODS[name].split(","))
    print(f"Wall clock of this invocation: {(time.perf_counter() - started) / 60:.1f} min (finished pairs are "
          "reused).")


if __name__ == "__main__":
    main()
