"""The times a newcomer meets, which the README quotes: a typo's error, the demo, the quick bench, the tests.

Each is a fresh process on this machine (run it with the machine otherwise quiet): `python benchmarks/newcomer.py`
(`--skip-tests` leaves out the suite, minutes). The demo and the quick bench start from an empty cache, as on a
fresh clone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

TYPOS = {
    "train, a subject folder that is not there": ["train", "lora", "--subject", "photoss/", "--class", "dog",
                                                   "--out", "runs/x"],
    "generate, a run folder that is not there": ["generate", "runs/dgo/", "a {subject}", "--out", "out/x"],
    "bench, a benchmark folder that is not there": ["bench", "--bench", "dreambenhc/", "--out", "bench-x/"],
}


def timed(args: list[str], env: dict, expect: int = 0) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != expect:
        sys.exit(f"{' '.join(args)} exited {result.returncode}: {result.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "subjectgen.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SUBJECTGEN_CACHE": f"{tmp}/cache"}
        for label, argv in TYPOS.items():
            rows.append((f"error: {label}", min(timed([*cli, *argv], env, expect=2) for _ in range(3))))
        rows.append(("`subjectgen demo` (from an empty cache)", timed([*cli, "demo", "--quiet", "--out",
                                                                       f"{tmp}/demo"], env)))
        rows.append(("`subjectgen bench --bench emoji --quick` (3 methods, from scratch)",
                     timed([*cli, "bench", "--quiet", "--bench", "emoji", "--quick", "--out", f"{tmp}/quick"], env)))
        if not args.skip_tests:
            rows.append(("`python -m pytest -q` (the suite)", timed([sys.executable, "-m", "pytest", "-q", "-p",
                                                                      "no:cacheprovider"], env)))
    print(f"On this machine ({os.cpu_count()} cores), each a fresh process:\n")
    print("| what | wall clock |\n|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} s |" if seconds < 10 else f"| {label} | {seconds / 60:.1f} min |")


if __name__ == "__main__":
    main()
