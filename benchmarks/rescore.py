"""Score finished bench folders again with the current evaluators (after the built-in DINO or CLIP was retrained),
without training or sampling anything: each FOLDER moves to FOLDER-previous-evaluators and a bench with its own
protocol and methods is run into FOLDER with `--runs-from` the moved one, which copies every pair's run and images
and scores them (subjectgen bench's evaluator-only reuse). A folder already scored by the current evaluators is
left as it is.

    python benchmarks/rescore.py benchmarks/out/v3/profusion/tune/*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rescore(folder: Path) -> None:
    from subjectgen.assets import fingerprint
    from subjectgen.config import BenchConfig
    from subjectgen.eval.bench import run_bench

    protocol = json.loads((folder / "bench.json").read_text())
    if (protocol["dino_hash"], protocol["clip_hash"]) == (fingerprint("dino", protocol["dino"]),
                                                           fingerprint("clip", protocol["clip"])):
        print(f"{folder}: already scored by the current evaluators")
        return
    previous = folder.with_name(folder.name + "-previous-evaluators")
    if previous.exists():
        raise SystemExit(f"{previous} exists already; move it away first")
    folder.rename(previous)
    methods = sorted(p.name for p in (previous / "pairs").iterdir()
                     if p.name not in ("oracle", "baseline", "perfect"))
    settings = {k: v for k, v in protocol.items() if not k.endswith("_hash") and k != "version"}
    run_bench(BenchConfig(**settings, methods=methods, out=str(folder), runs_from=str(previous)), progress=False)
    print(f"{folder}: {', '.join(methods)} scored again (the previous scores: {previous})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    for folder in parser.parse_args().folders:
        rescore(folder)


if __name__ == "__main__":
    main()
