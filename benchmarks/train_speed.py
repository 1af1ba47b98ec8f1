"""Speed and peak memory of `train lora` (and the other methods) on the tiny test model, on this machine.

    python benchmarks/train_speed.py [--steps 200] [--json out.json]

Prints a Markdown table; `python benchmarks/run_all.py` puts it in docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
from subjectgen import TrainConfig, train
cfg = TrainConfig(**json.loads(sys.argv[1]))
result = train(cfg, progress=False)
print(json.dumps({"steps_per_second": result.steps / result.seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_photos(folder: Path) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        image = Image.new("RGB", (64, 64), (190, 215, 250))
        ImageDraw.Draw(image).ellipse((10 + 3 * i, 10, 50 + 3 * i, 50), fill=(210, 50, 40))
        image.save(folder / f"{i}.png")


def measure(method: str, steps: int, work: Path, prior: bool) -> dict:
    """One run in a fresh process, so peak memory (max RSS) is this run's alone."""
    cfg = {"method": method, "model": "tiny", "subject_dir": str(work / "photos"), "class_noun": "dog",
           "out": str(work / f"run-{method}-{prior}"), "steps": steps, "prior_preservation": prior,
           "num_class_images": 8}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_photos(work / "photos")
        for method, prior in [("lora", False), ("lora", True), ("dreambooth", True), ("textual-inversion", False)]:
            row = {"method": method, "prior": prior, "steps": args.steps, **measure(method, args.steps, work, prior)}
            rows.append(row)
    import torch

    print(f"Tiny SD model (16 px, 8x8 latents), batch 1, {args.steps} steps, CPU: "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| method | prior preservation | steps/s | peak RSS (MiB) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {'yes' if r['prior'] else 'no'} | {r['steps_per_second']:.1f} | {r['peak_rss_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
