"""Generation speed against the plain diffusers pipeline: `subjectgen generate` beside a StableDiffusionPipeline
with the same LoRA (`pipe.load_lora_weights(run)`), on identical settings, in interleaved pairs.

Both: the built-in model (the pipeline loads the same folder), one LoRA run trained once beforehand (outside the
timings), one prompt, `-n` images with seeds 0..n-1, `--steps` steps, guidance 7.5, one thread each
(OMP_NUM_THREADS=1), the images saved as PNG. For each batch size: ours `generate --batch-size B`, the pipeline
`num_images_per_prompt=B` per call. Reported: the process's wall clock (start to exit), the generation call's
time (load + sample + save, from inside the process), images/s on the call's time, peak RSS, and ours / the
pipeline's ratios. The medians of `--pairs` pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "a {subject} on the beach"

OURS = """
import json, sys, time
started = time.perf_counter()
from subjectgen.generation import generate_to_folder
run, out, n, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
generate_to_folder(run, [sys.argv[6]], out, n=n, steps=steps, guidance=7.5, batch_size=batch)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

PIPELINE = """
import json, sys, time
started = time.perf_counter()
from pathlib import Path
import torch
from diffusers import StableDiffusionPipeline
from subjectgen.assets import SHIPPED
run, out, n, steps, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32, safety_checker=None,
                                               requires_safety_checker=False)
pipe.load_lora_weights(run, weight_name="pytorch_lora_weights.safetensors")
pipe.set_progress_bar_config(disable=True)
out.mkdir(parents=True, exist_ok=True)
for start in range(0, n, batch):
    seeds = range(start, min(n, start + batch))
    images = pipe(sys.argv[6], num_images_per_prompt=len(seeds), num_inference_steps=steps, guidance_scale=7.5,
                  generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    for s, image in zip(seeds, images):
        image.save(out / f"p00-{s}.png")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def measure(code: str, args: list[str], env: dict) -> tuple[float, float, float]:
    """(process wall seconds, the call's seconds, peak RSS MiB) of one child."""
    from peer import measure as run_process

    wall, rss, _, out = run_process([sys.executable, "-c", code, *args], env)
    return wall, json.loads(out.strip().splitlines()[-1])["seconds"], rss


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=16, help="images per run")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,16")
    parser.add_argument("--train-steps", type=int, default=50, help="steps of the LoRA run (made once, untimed)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUBJECTGEN_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["SUBJECTGEN_CACHE"] = str(tmp / "cache")
        run = tmp / "run"
        subprocess.run([sys.executable, "-m", "subjectgen.cli", "train", "lora", "--subject",
                        "src/subjectgen/assets/emojibench/dog", "--class", "dog", "--steps", str(args.train_steps),
                        "--out", str(run), "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL)
        manifest = json.loads((run / "subject.json").read_text())
        prompt = PROMPT.replace("{subject}", f"{manifest['token']} {manifest['class']}")
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            runs = {"ours": [], "pipeline": []}
            for _ in range(args.pairs):
                for name, code, text in (("ours", OURS, PROMPT), ("pipeline", PIPELINE, prompt)):
                    child = [str(run), str(tmp / name), str(args.n), str(args.steps), str(batch), text]
                    runs[name].append(measure(code, child, env))
            rows.append((batch, {k: [median([r[i] for r in v]) for i in range(3)] for k, v in runs.items()}))
    print(f"`subjectgen generate` against diffusers' StableDiffusionPipeline with the same LoRA, the built-in "
          f"model, {args.n} images of one prompt, {args.steps} steps, guidance 7.5, one thread each, {args.pairs} "
          f"interleaved pairs per row (medians):\n")
    print("| batch | ours: wall s / call s / images/s / peak MiB | pipeline: wall s / call s / images/s / peak MiB | "
          "images/s ours ÷ pipeline | peak RSS ours ÷ pipeline |")
    print("|---|---|---|---|---|")
    for batch, med in rows:
        o, p = med["ours"], med["pipeline"]
        print(f"| {batch} | {o[0]:.1f} / {o[1]:.1f} / {args.n / o[1]:.2f} / {o[2]:.0f} | {p[0]:.1f} / {p[1]:.1f} / "
              f"{args.n / p[1]:.2f} / {p[2]:.0f} | {p[1] / o[1]:.2f} | {o[2] / p[2]:.2f} |")


if __name__ == "__main__":
    main()
