"""One LoRA step of a full-size SDXL on this CPU, ours and diffusers' train_dreambooth_lora_sdxl.py: the peak memory
that tells a 12 GB GPU user whether SDXL LoRA fits.

The model: a random-weight SDXL built here at SDXL base's own sizes (peer.SDXL_SIZES["full"]: the UNet's 2.6 B
parameters, CLIP-L, OpenCLIP-bigG, the VAE) with the UNet's sample size at 64 (512 px; the weights are the same),
stored in bf16: a half-precision file, as a GPU user's fp16 variant or a CivitAI checkpoint is. Each tool: one step
at 512 px on the same 5 photos, batch 1, rank 4, gradient checkpointing, --mixed-precision bf16 (frozen weights in
bf16, LoRA in fp32), no prior preservation, one thread, run once. Reported: peak RSS (the process's maximum resident
set) and wall time. On a CPU the resident set holds what a GPU would (the frozen weights, activations, the LoRA and
its optimizer state) and the process itself (torch and the libraries: `baseline` below, held in host memory on a
GPU machine).

Before building it estimates the peak of the heavier run from the model's size; if that is more than --limit-gb, or
more than the memory available, it says so and stops (exit 0).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import built, measure, ours, peer, photos, random_sdxl  # noqa: E402

GiB = 2 ** 30
PARAMETERS = {"unet": 2.567e9, "text encoders": 0.817e9, "vae": 0.084e9}  # SDXL base's, in diffusers' classes
FLAGS = {"ours": ["--mixed-precision", "bf16", "--gradient-checkpointing"],
         "peer": ["--mixed_precision", "bf16", "--gradient_checkpointing", "--resolution", "512"]}


def estimate_gib() -> float:
    """The heavier run's peak (the peer's), its larger phase: loading, where diffusers converts the bf16 UNet to fp32
    (its default) with the file's pages still mapped, before casting it back; or the step, with the UNet and text
    encoders in bf16 and activations. The libraries (0.5 GiB) besides."""
    p = PARAMETERS
    loading = p["unet"] * (4 + 2) + p["vae"] * 4
    step = (p["unet"] + p["text encoders"]) * 2 + p["vae"] * 4 + 2 * GiB  # activations at 512 px, checkpointed
    return max(loading, step) / GiB + 0.5


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GiB
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-venv", default="benchmarks/out/peer-venv")
    parser.add_argument("--limit-gb", type=float, default=18.0, help="skip if a run may need more (default: 18)")
    args = parser.parse_args()
    python = Path(args.peer_venv) / "bin" / "python"
    if not python.is_file():
        print(f"The peer's venv ({args.peer_venv}) is absent: no comparison (make it with peer.py --setup).")
        return
    need, free = estimate_gib(), available_gib()
    if need > min(args.limit_gb, free):
        print(f"Skipped: one run may need about {need:.1f} GiB (the peer's: the UNet as fp32 beside its bf16 file, "
              f"then bf16); {free:.1f} GiB available, limit {args.limit_gb:g} GiB.")
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUBJECTGEN_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1"}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["SUBJECTGEN_CACHE"] = str(tmp / "cache")
        model = built(functools.partial(random_sdxl, size="full", dtype="bfloat16"), tmp / "sdxl")
        subject = photos(tmp / "photos")
        baseline = measure([sys.executable, "-c", "import torch, diffusers, transformers, peft, accelerate"], env)[1]
        rows["ours"] = measure(ours(model, subject, tmp / "ours", 1, 1, None, tuple(FLAGS["ours"])), env)[:2]
        rows["peer"] = measure(peer(python, model, subject, tmp / "classes", tmp / "peer", 1, 1, None, "sdxl",
                                    tuple(FLAGS["peer"])), env)[:2]
    print(f"One LoRA step of a full-size random SDXL (UNet 2.6 B parameters, stored in bf16) at 512 px, batch 1, "
          f"rank 4, gradient checkpointing, bf16 mixed precision, one thread, once each "
          f"(estimated peak before running: {need:.1f} GiB):\n")
    print("| tool | wall s | peak RSS GiB | peak RSS less the libraries' (GiB) |")
    print("|---|---|---|---|")
    for name, (wall, rss) in rows.items():
        label = "subjectgen train lora" if name == "ours" else "diffusers' train_dreambooth_lora_sdxl.py"
        print(f"| {label} | {wall:.0f} | {rss / 1024:.1f} | {(rss - baseline) / 1024:.1f} |")
    print(f"\nours ÷ peer, peak RSS: {rows['ours'][1] / rows['peer'][1]:.2f}; the libraries alone (import torch, "
          f"diffusers, transformers, peft, accelerate): {baseline / 1024:.2f} GiB.")


if __name__ == "__main__":
    main()
