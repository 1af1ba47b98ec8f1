"""Wall-clock time of `subjectgen demo` (DreamBooth-LoRA on the built-in model, CPU) and the built-in
model's training record. `python benchmarks/demo_time.py`; `benchmarks/run_all.py` puts it in docs/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from subjectgen.assets import SHIPPED
from subjectgen.assets import EVALUATORS
from subjectgen.demo import DEMO


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "subjectgen.cli", "demo", "--out", f"{tmp}/demo"], check=True,
                       capture_output=True, env={"SUBJECTGEN_CACHE": f"{tmp}/cache", **__import__("os").environ})
        seconds = time.perf_counter() - started
        manifest = json.loads(Path(f"{tmp}/demo/run/subject.json").read_text())
        scores = json.loads(Path(f"{tmp}/demo/scores.json").read_text())
    record = json.loads((SHIPPED / "training.json").read_text())
    cfg = record["config"]
    spec = json.loads((DEMO / "demo.json").read_text())
    kept = manifest.get("evaluation", {}).get("chosen_step") if manifest["settings"]["select"] == "best" else None
    print(f"`subjectgen demo` ('{spec['subject']}', {spec['class']}: {spec['note']}; LoRA "
          f"{manifest['settings']['steps']} steps{f', step {kept} kept by the rule' if kept else ''}, "
          f"{len(spec['prompts'])} prompts x 2 images "
          f"for base and personalized): **{seconds:.0f} s** wall clock on {torch.get_num_threads()} CPU threads, "
          f"of which training {manifest['metrics']['train_seconds']:.0f} s "
          f"({manifest['metrics']['steps_per_second']:.1f} steps/s).\n")
    print("| demo images | DINO | CLIP-I | CLIP-T |\n|---|---|---|---|")
    for name in ("base", "personalized"):  # scores.json also holds the report's summary lines
        print(f"| {name} | " + " | ".join(f"{scores[name]['mean'][m]:.3f}" for m in ("dino", "clip_i", "clip_t")) + " |")
    print("\nBuilt-in model (`src/subjectgen/assets/builtin/training.json`):\n")
    print("| stage | steps | batch | device | total time |\n|---|---|---|---|---|")
    print(f"| VAE | {cfg['vae_steps']} | {cfg['vae_batch']} | {record['device']} | |")
    steps = cfg["unet_steps"] if not cfg.get("unet_stop_step") else f"{cfg['unet_stop_step']} of {cfg['unet_steps']}"
    print(f"| UNet + text encoder | {steps} | {cfg['unet_batch']} | {record['device']} | "
          f"{record['seconds']:.0f} s incl. rendering {record['images']} images |")
    sizes = {p.parent.name: p.stat().st_size / 2**20 for p in SHIPPED.glob("*/*.safetensors")}
    print(f"\nFinal losses: VAE {record['vae_loss']:.4f}, UNet {record['unet_loss']:.4f}. Shipped size: "
          + ", ".join(f"{k} {v:.1f} MiB" for k, v in sorted(sizes.items())) + " (fp16).")
    ev = json.loads((EVALUATORS / "training.json").read_text())
    print(f"\nBuilt-in evaluators (`{EVALUATORS.relative_to(SHIPPED.parents[2])}/training.json`), trained on "
          f"{ev['device']} ({torch.get_num_threads()} threads here; the record has the time): CLIP "
          f"{ev['config']['clip_steps']} steps x {ev['config']['clip_batch']} in {ev['clip_seconds']:.0f} s "
          f"(final loss {ev['clip_loss']:.3f}), DINO {ev['config']['dino_steps']} steps x "
          f"{ev['config']['dino_batch']} in {ev['dino_seconds']:.0f} s (final loss {ev['dino_loss']:.3f}); "
          f"{ev['images']} images, data hash {ev['data_hash']}.")
    total = sum(p.stat().st_size for root in (SHIPPED, EVALUATORS) for p in root.rglob("*") if p.is_file())
    print(f"\nShipped built-in models in all (pipeline with tokenizer, both evaluators): "
          f"**{total / 1e6:.1f} MB** (budget 40 MB).")


if __name__ == "__main__":
    main()
