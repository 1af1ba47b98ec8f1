"""Fingerprints of what every method writes and draws, for proving a refactor changes no behaviour.

Trains each method briefly on the demo subject with the built-in model (LoRA with its text encoder, LoRA with
prior preservation and min-SNR, DreamBooth, Textual Inversion with two vectors, ProFusion, the apprentice),
generates a few images (plain, --subject-start, Fusion Sampling), and fingerprints them: the SHA-256 of every
weight tensor written and of every image's pixels. `--against COMMIT` does the same on that commit (a temporary
git worktree) and compares: equal means bit-identical weights and images.

    python benchmarks/identity.py --against 6f1677d      # the commit before the backbone axis
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SUBJECT = ROOT / "src" / "subjectgen" / "assets" / "demo" / "dog"
PROMPTS = ["a {subject} on the beach", "a {subject} in the snow"]
RUNS = {  # name -> (method, model, extra flags)
    "lora": ("lora", "builtin", ["--steps", "8", "--train-text-encoder"]),
    "lora-prior": ("lora", "builtin", ["--steps", "6", "--prior-preservation", "--num-class-images", "2",
                                       "--snr-gamma", "5"]),
    "dreambooth": ("dreambooth", "builtin", ["--steps", "4", "--num-class-images", "2"]),
    "textual-inversion": ("textual-inversion", "builtin", ["--steps", "8", "--num-vectors", "2"]),
    "profusion": ("profusion", "builtin", ["--steps", "3"]),
    "apprentice": ("apprentice", "builtin", []),
}
GENERATE = {"": [], "-late": ["--subject-start", "0.4"]}


def subjectgen(*args: str, source: Path = ROOT) -> None:
    env = {**os.environ, "PYTHONPATH": str(source / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "subjectgen.cli", "--threads", "1", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tensor_hashes(folder: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    out = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for key, value in sorted(load_file(path).items()):
            out[f"{path.relative_to(folder)}:{key}"] = hashlib.sha256(value.tobytes()).hexdigest()[:16]
    return out


def image_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(np.asarray(Image.open(p).convert("RGB")).tobytes()).hexdigest()[:16]
            for p in sorted(folder.glob("*.png")) if p.name != "grid.png"}


def fingerprints(work: Path, source: Path = ROOT) -> dict:
    """Every run's weights and images, made by the code in `source` (a checkout)."""
    result = {}
    for name, (method, model, flags) in RUNS.items():
        run = work / name
        subjectgen("train", method, "--model", model, "--subject", str(SUBJECT), "--class", "dog",
                   "--out", str(run), *flags, source=source)
        result[name] = {"weights": tensor_hashes(run)}
        for suffix, extra in GENERATE.items():
            if suffix and method == "profusion":  # Fusion Sampling has no --subject-start
                continue
            images = work / f"{name}-images{suffix}"
            subjectgen("generate", str(run), *PROMPTS, "-n", "1", "--steps", "6", "--out", str(images), *extra,
                       source=source)
            result[name][f"images{suffix}"] = image_hashes(images)
    return result


def at_commit(commit: str, work: Path) -> dict:
    """The fingerprints made by the code of `commit`, checked out in a temporary git worktree."""
    tree = work / "checkout"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                   capture_output=True)
    try:
        return fingerprints(work / "runs", tree)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the commit to compare the working tree with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as before_dir, tempfile.TemporaryDirectory() as after_dir:
        before = at_commit(args.against, Path(before_dir))
        after = fingerprints(Path(after_dir))
    differ = [f"{run}/{part}/{key}" for run in before for part in before[run] for key in before[run][part]
              if after.get(run, {}).get(part, {}).get(key) != before[run][part][key]]
    print(f"Every method's weights and images, the working tree against {args.against} (built-in model, demo "
          "subject, one thread):\n")
    print("| run | weight tensors | images | identical |\n|---|---|---|---|")
    for run, parts in before.items():
        images = sum(len(v) for k, v in parts.items() if k.startswith("images"))
        same = not any(line.startswith(f"{run}/") for line in differ)
        print(f"| {run} | {len(parts['weights'])} | {images} | {'yes' if same else 'NO'} |")
    counted = sum(len(v) for run in before.values() for v in run.values())
    print(f"\n{counted - len(differ)} of {counted} fingerprints identical.")
    for line in differ:
        print(f"- differs: {line}")


if __name__ == "__main__":
    main()
