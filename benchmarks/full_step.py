"""One LoRA step of a full-size model on this CPU, ours and diffusers' own script: the peak memory that tells a GPU
user whether the model's LoRA fits. `--family sdxl`: SDXL base (the UNet's 2.6 B parameters) beside
train_dreambooth_lora_sdxl.py; `--family flux2`: FLUX.2 [klein] 4B base (the transformer's 3.9 B, Qwen3-4B) beside
train_dreambooth_lora_flux2_klein.py.

The model: built here with random weights at the real model's own sizes (peer.SDXL_SIZES["full"],
peer.KLEIN_SIZES["full"]), at 512 px, stored in bf16: a half-precision file, as a GPU user's is. Each tool: one step at
512 px on the same 5 photos, batch 1, rank 4, gradient checkpointing, --mixed-precision bf16 (frozen weights in
bf16, LoRA in fp32), no prior preservation, one thread, run once; on klein the pipeline's 512-token prompts and its
Qwen3 layers 9, 18, 27. Reported: peak RSS (the process's maximum resident set) and wall time. On a CPU the resident
set holds what a GPU would (the frozen weights, activations, the LoRA and its optimizer state) and what a GPU machine
keeps in host memory: the process itself (torch and the libraries: `baseline` below) and any text encoder a tool
keeps after encoding its prompts.

Before building it estimates the peak of the heavier run from the model's size; if that is more than --limit-gb, or
more than the memory available, it says so and stops (exit 0).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import built, measure, ours, peer, photos, random_flux2_klein, random_sdxl  # noqa: E402

GiB = 2 ** 30


@dataclass(frozen=True)
class FullSize:
    title: str
    build: object
    parameters: dict  # the networks' parameter counts, in diffusers' and transformers' classes
    ours: tuple[str, ...]
    peer: tuple[str, ...]
    peer_note: str  # what the estimate assumes of the peer's loading
    holds: str  # what each tool holds, and where a GPU machine would hold it (from their code)
    fp32_at_load: tuple[str, ...] = ()  # the networks the peer loads as fp32 before casting to bf16

    def estimate_gib(self) -> float:
        """The heavier run's peak (the peer's), its larger phase: loading, every network at once (a bf16 file
        converted to fp32 first where the peer loads so, `fp32_at_load`, its pages still mapped); or the step, the
        networks in bf16 and activations. The libraries (0.5 GiB) besides."""
        p = self.parameters
        loading = sum(p.values()) * 2 + sum(p.get(name, 0) for name in self.fp32_at_load) * 4
        step = sum(p.values()) * 2 + 2 * GiB  # activations at 512 px, checkpointed
        return max(loading, step) / GiB + 0.5


COMMON = {"ours": ("--mixed-precision", "bf16", "--gradient-checkpointing"),
          "peer": ("--mixed_precision", "bf16", "--gradient_checkpointing", "--resolution", "512")}
FAMILIES = {
    "sdxl": FullSize(
        "a full-size random SDXL (UNet 2.6 B parameters, stored in bf16)",
        functools.partial(random_sdxl, size="full", dtype="bfloat16"),
        {"denoiser": 2.567e9, "text encoders": 0.817e9, "vae": 0.084e9}, COMMON["ours"], COMMON["peer"],
        "the peer's: the UNet as fp32 beside its bf16 file, then bf16",
        "The peer loads the UNet in fp32 (10.3 GB) and casts it to bf16, keeps both text encoders (1.6 GB in bf16) "
        "beside it throughout (on the GPU, on a GPU machine) and encodes a photo at each step. Ours loads the UNet "
        "as stored, frees the text encoders once the prompts are cached, and encodes every photo once before its "
        "first step: a cost the peer spreads over its steps, which a one-step run shows whole.", ("denoiser",)),
    "flux2": FullSize(
        "a full-size random FLUX.2 [klein] 4B base (transformer 3.9 B parameters, Qwen3-4B; stored in bf16)",
        functools.partial(random_flux2_klein, size="full", dtype="bfloat16"),
        {"denoiser": 3.88e9, "text encoders": 4.02e9, "vae": 0.084e9}, COMMON["ours"],
        COMMON["peer"] + ("--max_sequence_length", "512"),  # (peer.py gives it the Qwen3 layers)
        "the peer's: the transformer and Qwen3 in bf16 at once",
        "The peer loads the transformer and Qwen3 (8.0 GB) in bf16, encodes its prompts, then moves Qwen3 to host "
        "memory and keeps it there (so on a GPU machine its 8 GB are host memory, not the GPU's) and encodes a photo "
        "at each step. Ours frees Qwen3 once the prompts are cached and encodes every photo once before its first "
        "step: a cost the peer spreads over its steps, which a one-step run shows whole. On a GPU the device holds, "
        "in both, about "
        "the transformer (7.8 GB in bf16), the activations and the LoRA; this table is the process's whole "
        "memory."),
}
LABELS = {"sdxl": "train_dreambooth_lora_sdxl.py", "flux2": "train_dreambooth_lora_flux2_klein.py"}


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GiB
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sdxl")
    parser.add_argument("--peer-venv", default="benchmarks/out/peer-venv")
    parser.add_argument("--limit-gb", type=float, default=18.0, help="skip if a run may need more (default: 18)")
    args = parser.parse_args()
    family = FAMILIES[args.family]
    python = Path(args.peer_venv) / "bin" / "python"
    if not python.is_file():
        print(f"The peer's venv ({args.peer_venv}) is absent: no comparison (make it with peer.py --setup).")
        return
    need, free = family.estimate_gib(), available_gib()
    if need > min(args.limit_gb, free):
        print(f"Skipped: one run may need about {need:.1f} GiB ({family.peer_note}); {free:.1f} GiB available, "
              f"limit {args.limit_gb:g} GiB.")
        return
    rows, baseline = measure_step(args.family, family, python)
    print(f"One LoRA step of {family.title} at 512 px, batch 1, rank 4, gradient checkpointing, bf16 mixed "
          f"precision, one thread, once each (estimated peak before running: {need:.1f} GiB):\n")
    print("| tool | wall s | peak RSS GiB | peak RSS less the libraries' (GiB) |")
    print("|---|---|---|---|")
    for name, (wall, rss) in rows.items():
        label = "subjectgen train lora" if name == "ours" else f"diffusers' {LABELS[args.family]}"
        print(f"| {label} | {wall:.0f} | {rss / 1024:.1f} | {(rss - baseline) / 1024:.1f} |")
    print(f"\nours ÷ peer, peak RSS: {rows['ours'][1] / rows['peer'][1]:.2f}; the libraries alone (import torch, "
          f"diffusers, transformers, peft, accelerate): {baseline / 1024:.2f} GiB.\n\n{family.holds}")


def measure_step(name: str, family: FullSize, python: Path) -> tuple[dict, float]:
    """({tool: (wall s, peak RSS MiB)}, the libraries' own peak RSS in MiB): one step each, ours first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUBJECTGEN_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["SUBJECTGEN_CACHE"] = str(tmp / "cache")
        model = built(family.build, tmp / name)
        subject = photos(tmp / "photos")
        baseline = measure([sys.executable, "-c", "import torch, diffusers, transformers, peft, accelerate"], env)[1]
        rows = {"ours": measure(ours(model, subject, tmp / "ours", 1, 1, None, family.ours), env)[:2],
                "peer": measure(peer(python, model, subject, tmp / "classes", tmp / "peer", 1, 1, None, name,
                                     family.peer), env)[:2]}
    return rows, baseline


if __name__ == "__main__":
    main()
