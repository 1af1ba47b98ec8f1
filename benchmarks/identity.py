"""Fingerprints of what every method writes and draws, for proving a refactor changes no behaviour.

Trains each method briefly on the demo subject with the built-in model (and LoRA on the tiny v-prediction
model), generates a few images (plain, --subject-start, Fusion Sampling), and prints one JSON object: the
SHA-256 of every weight tensor written and of every image's pixels. Run it before and after a change and
compare the two files: equal means bit-identical weights and images.

    python benchmarks/identity.py --out /tmp/before.json   # on the old commit
    python benchmarks/identity.py --out /tmp/after.json --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


def subjectgen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "subjectgen.cli", "--threads", "1", *args], check=True,
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


def fingerprints(work: Path) -> dict:
    result = {}
    for name, (method, model, flags) in RUNS.items():
        run = work / name
        subjectgen("train", method, "--model", model, "--subject", str(SUBJECT), "--class", "dog",
                   "--out", str(run), *flags)
        result[name] = {"weights": tensor_hashes(run)}
        for suffix, extra in GENERATE.items():
            if suffix and method == "profusion":  # Fusion Sampling has no --subject-start
                continue
            images = work / f"{name}-images{suffix}"
            subjectgen("generate", str(run), *PROMPTS, "-n", "1", "--steps", "6", "--out", str(images), *extra)
            result[name][f"images{suffix}"] = image_hashes(images)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the fingerprints")
    parser.add_argument("--compare", help="an earlier run's JSON: print what differs and exit 1 if anything does")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = fingerprints(Path(tmp))
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differ = [f"{run}/{part}/{key}" for run in before for part in before[run]
                  for key in before[run][part] if result.get(run, {}).get(part, {}).get(key) != before[run][part][key]]
        counted = sum(len(v) for run in before.values() for v in run.values())
        print(f"{counted - len(differ)} of {counted} fingerprints identical")
        for line in differ:
            print(f"differs: {line}")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
