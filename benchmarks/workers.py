"""Many small jobs on a CPU: one process with the cores as threads, or one process per core at one thread each.

What `--workers auto` chooses rests on this. Two jobs of many small ones, each from scratch in a fresh folder
(one untimed warm-up run first fills the shared cache: the world's renders, the class images):
- the quick bench, `subjectgen bench --bench emoji --quick --methods lora` (2 subjects: train, sample, score);
- a small expert farm, `subjectgen apprentice experts --count 4` (4 LoRA experts, 8 images each).
Each in three ways: `--workers 1` (one process, torch's threads = the allowed cores), `--workers 1 --threads 1`
(one process, one thread), `--workers auto` (what auto picks here: on this machine's cores, one process each at
one thread). Interleaved rounds (`--pairs`); the medians of the wall clock (start to exit) and of the peak RSS of
the largest process (the launcher's children included; the processes' sum is about N times that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import measure  # noqa: E402

WAYS = [("1 process, the cores as threads", ["--workers", "1"]),
        ("1 process, 1 thread", ["--workers", "1", "--threads", "1"]),
        ("auto", ["--workers", "auto"])]
JOBS = {"quick bench": ["bench", "--bench", "emoji", "--quick", "--methods", "lora", "--quiet"],
        "expert farm": ["apprentice", "experts", "--count", "4", "--quiet"]}


def command(job: list[str], way: list[str], out: Path) -> list[str]:
    at = way.index("--threads") if "--threads" in way else len(way)
    threads, rest = way[at:at + 2], way[:at] + way[at + 2:]
    return [sys.executable, "-m", "subjectgen.cli", *threads, *job, *rest, "--out", str(out)]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def run_job(name: str, pairs: int, env: dict) -> dict:
    """{way: (median wall s, median peak RSS MiB)} of one job, from scratch in a temporary folder."""
    job, runs = JOBS[name], {label: [] for label, _ in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**env, "SUBJECTGEN_CACHE": str(tmp / "cache")}
        measure(command(job, WAYS[2][1], tmp / "warm"), env)  # untimed: fills the cache
        for k in range(pairs):
            for i, (label, way) in enumerate(WAYS):
                seconds, rss, _, _ = measure(command(job, way, tmp / f"run-{k}-{i}"), env)
                runs[label].append((seconds, rss))
    return {label: (median([r[0] for r in v]), median([r[1] for r in v])) for label, v in runs.items()}


def main() -> None:
    from subjectgen.threads import available_cores
    from subjectgen.workers import choose_workers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, help="interleaved rounds per job (default: 2 for the bench, 1 for the "
                        "farm)")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of: {', '.join(JOBS)}")
    parser.add_argument("--out", default="benchmarks/out/workers", help="each job's medians, kept: a rerun reuses a "
                        "finished job (delete the file to measure it again)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SUBJECTGEN_THREADS",
                                                             "SUBJECTGEN_WORKERS")}
    env["TRANSFORMERS_VERBOSITY"] = "error"
    cores, names = available_cores(), args.jobs.split(",")
    rows = []
    for name in names:
        pairs = args.pairs or (2 if name == "quick bench" else 1)
        saved = Path(args.out) / f"{name.replace(' ', '-')}.json"
        record = json.loads(saved.read_text()) if saved.is_file() else None
        if record is None or record["pairs"] != pairs or record["cores"] != cores:
            record = {"pairs": pairs, "cores": cores, "ways": run_job(name, pairs, env)}
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(record, indent=1) + "\n")
        rows.append((name, record))
    picked = {name: choose_workers("auto", 2 if name == "quick bench" else 4, "builtin") for name in names}
    print(f"{cores} cores, the built-in model, from scratch in fresh folders, interleaved rounds (medians). `auto` "
          "here: " + "; ".join(
              f"{n}: {c.workers} process{'es' * (c.workers > 1)} ({c.why})" for n, c in picked.items()) + ".\n")
    print("| job | way | rounds | wall s | speed-up over 1 process with the cores as threads | peak RSS of the "
          "largest process MiB |")
    print("|---|---|---|---|---|---|")
    for name, record in rows:
        base = record["ways"][WAYS[0][0]][0]
        for label, (seconds, rss) in record["ways"].items():
            print(f"| {name} | {label} | {record['pairs']} | {seconds:.1f} | {base / seconds:.2f}x | {rss:.0f} |")


if __name__ == "__main__":
    main()
