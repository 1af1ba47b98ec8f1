"""Time to subject, measured alike for every method: two methods trained alternately on the same EmojiBench
subjects in one run of a benchmark (subject.json's metrics.time_to_subject_seconds: loading, caching and
training or encoding, before the first image)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def train_alternately(out: Path, subjects: tuple[str, ...], variants: dict[str, list[str]]) -> dict:
    """Train each variant (label -> [method, *flags]) on each subject, alternately, at one thread. Returns by
    (label, subject) the run's time to subject, its process's wall-clock seconds and its CPU seconds (user +
    system: steadier than wall clock on a busy machine), kept in out/walls.json so a rerun reads the runs made the
    first time — while the command and the method's defaults are the same (a version that changed them trains
    again)."""
    from subjectgen.methods import registry
    from subjectgen.world.build import subject_class

    walls_file, seconds = out / "walls.json", {}
    walls = json.loads(walls_file.read_text()) if walls_file.is_file() else {}
    for subject in subjects:
        for label, (method, *extra) in variants.items():
            run = out / f"{label.replace(' ', '_')}-{subject}"
            spec = registry.get(method)
            made_as = [method, *extra, repr(sorted(spec.defaults.items())), repr(spec.builtin_eval)]
            made_as += [repr(sorted(spec.builtin_defaults.items()))] if spec.builtin_defaults else []
            if not (run / "subject.json").is_file() or walls.get(run.name, {}).get("made_as") != made_as:
                started, cpu = time.perf_counter(), _children_cpu()
                subprocess.run([sys.executable, "-m", "subjectgen.cli", "--threads", "1", "train", method, "--subject",
                                f"src/subjectgen/assets/emojibench/{subject}", "--class", subject_class(subject),
                                "--out", str(run), "--overwrite", "--quiet", *extra], check=True,
                               stdout=subprocess.DEVNULL)
                walls[run.name] = {"wall": time.perf_counter() - started, "cpu": _children_cpu() - cpu,
                                   "made_as": made_as}
                walls_file.write_text(json.dumps(walls, indent=1))
            to_subject = json.loads((run / "subject.json").read_text())["metrics"]["time_to_subject_seconds"]
            seconds[label, subject] = {"to_subject": to_subject, **walls[run.name]}
    return seconds


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def alternate(out: Path, subjects: tuple[str, ...], methods: dict[str, list[str]], labels: tuple[str, str]) -> None:
    """Train each method (its extra flags) on each subject, alternately, at one thread; print the table and ratio.
    A rerun reports the runs made the first time."""
    seconds = {key: times["to_subject"] for key, times in
               train_alternately(out, subjects, {m: [m, *extra] for m, extra in methods.items()}).items()}
    first, second = methods
    print("\nTime to subject (load + encode or train, before the first image), trained alternately in this run, one "
          "thread:\n")
    print(f"| subject | {labels[0]} s | {labels[1]} s | ratio |\n|---|---|---|---|")
    for subject in subjects:
        a, b = seconds[first, subject], seconds[second, subject]
        print(f"| {subject} | {a:.1f} | {b:.1f} | {a / b:.1f}x |")
    a, b = (sum(seconds[m, s] for s in subjects) for m in (first, second))
    print(f"| all | {a:.1f} | {b:.1f} | {a / b:.1f}x |\n")
