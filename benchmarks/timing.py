"""Time to subject, measured alike for every method: two methods trained alternately on the same EmojiBench
subjects in one run of a benchmark (subject.json's metrics.time_to_subject_seconds: loading, caching and
training or encoding, before the first image)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def alternate(out: Path, subjects: tuple[str, ...], methods: dict[str, list[str]], labels: tuple[str, str]) -> None:
    """Train each method (its extra flags) on each subject, alternately, at one thread; print the table and ratio.
    A rerun reports the runs made the first time."""
    from subjectgen.world.build import subject_class

    seconds = {}
    for subject in subjects:
        for method, extra in methods.items():
            run = out / f"{method}-{subject}"
            if not (run / "subject.json").is_file():
                subprocess.run([sys.executable, "-m", "subjectgen.cli", "--threads", "1", "train", method, "--subject",
                                f"src/subjectgen/assets/emojibench/{subject}", "--class", subject_class(subject),
                                "--out", str(run), "--overwrite", "--quiet", *extra], check=True,
                               stdout=subprocess.DEVNULL)
            seconds[method, subject] = json.loads((run / "subject.json").read_text())["metrics"][
                "time_to_subject_seconds"]
    first, second = methods
    print("\nTime to subject (load + encode or train, before the first image), trained alternately in this run, one "
          "thread:\n")
    print(f"| subject | {labels[0]} s | {labels[1]} s | ratio |\n|---|---|---|---|")
    for subject in subjects:
        a, b = seconds[first, subject], seconds[second, subject]
        print(f"| {subject} | {a:.1f} | {b:.1f} | {a / b:.1f}x |")
    a, b = (sum(seconds[m, s] for s in subjects) for m in (first, second))
    print(f"| all | {a:.1f} | {b:.1f} | {a / b:.1f}x |\n")
