"""`train lora --compile` against plain eager training: the start-up torch.compile costs, the step time it saves,
and the run length from which it pays.

`subjectgen train lora` on the built-in model (the EmojiBench dog, batch `--batch-size`, one thread), each way at
two lengths, `--short` and `--long` steps, in fresh folders and a fresh torch compile cache (so every compiled
run pays its full start-up, as a user's first run does). Per step = the wall clock's difference between the two
lengths over their step difference; start-up = the short run's wall less its steps at that rate; break-even = the
extra start-up over the time saved per step. Interleaved, `--pairs` rounds, medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import measure  # noqa: E402

SUBJECT = Path(__file__).resolve().parents[1] / "src" / "subjectgen" / "assets" / "emojibench" / "dog"


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=550)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=1)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUBJECTGEN_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    load = os.getloadavg()[0]  # another job on the machine slows both ways; the ratio is what this measures
    walls = {(way, steps): [] for way in ("eager", "compiled") for steps in (args.short, args.long)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["SUBJECTGEN_CACHE"] = str(tmp / "cache")
        for k in range(args.pairs):
            for (way, steps), runs in walls.items():
                folder = tmp / f"{way}-{steps}-{k}"
                env["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")  # nothing compiled before
                cmd = [sys.executable, "-m", "subjectgen.cli", "train", "lora", "--subject", str(SUBJECT), "--class",
                       "dog", "--steps", str(steps), "--batch-size", str(args.batch_size), "--out",
                       str(folder / "run"), "--quiet"] + (["--compile"] if way == "compiled" else [])
                runs.append(measure(cmd, env)[0])
    span = args.long - args.short
    rows = {}
    for way in ("eager", "compiled"):
        short, long = median(walls[(way, args.short)]), median(walls[(way, args.long)])
        per_step = (long - short) / span
        rows[way] = (short, long, per_step, short - args.short * per_step)
    print(f"`subjectgen train lora` on the built-in model, batch {args.batch_size}, one thread, {args.short} and "
          f"{args.long} steps, fresh folders and compile caches, {args.pairs} interleaved round(s) (medians; the "
          f"load average when it started: {load:.1f}):\n")
    print(f"| way | wall s, {args.short} steps | wall s, {args.long} steps | s per step | start-up s |")
    print("|---|---|---|---|---|")
    for way, (short, long, per_step, start) in rows.items():
        print(f"| {way} | {short:.1f} | {long:.1f} | {per_step:.4f} | {start:.1f} |")
    (_, _, eager_step, eager_start), (_, _, comp_step, comp_start) = rows["eager"], rows["compiled"]
    saved = eager_step - comp_step
    print(f"\nA compiled step: {eager_step / comp_step:.2f}x the eager rate; start-up "
          f"{comp_start - eager_start:+.1f} s. "
          + (f"--compile pays from about {(comp_start - eager_start) / saved:.0f} steps at this batch."
             if saved > 0 else "Compiled steps are not faster here: --compile never pays."))


if __name__ == "__main__":
    main()
