"""Regenerate docs/RESULTS.md from the benchmark scripts: `python benchmarks/run_all.py`.

Every number in docs/RESULTS.md comes from a script here, run on the machine named in its section.
The full EmojiBench run takes about half an hour per method on 2 cores; it resumes where it stopped
(benchmarks/out/emojibench), so a rerun only does what is missing.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [
    ("Training speed and memory (tiny test model)", ["benchmarks/train_speed.py", "--steps", "200"]),
    ("Training speed against the peer (diffusers' train_dreambooth_lora.py)", ["benchmarks/peer.py"]),
    ("Training speed against the peer on SDXL (diffusers' train_dreambooth_lora_sdxl.py, a mid-size random SDXL)",
     ["benchmarks/peer.py", "--family", "sdxl", "--steps", "20", "--batch-sizes", "1", "--pairs", "3", "--prior", "yes",
      "--num-class-images", "8"]),
    ("One LoRA step of a full-size SDXL at 512 px: peak memory, ours and the peer's",
     ["benchmarks/full_step.py"]),
    ("One LoRA step of a full-size FLUX.2 [klein] 4B at 512 px: peak memory, ours and the peer's",
     ["benchmarks/full_step.py", "--family", "flux2"]),
    ("Training speed against the peer on FLUX.1 (diffusers' train_dreambooth_lora_flux.py, a mid-size random "
     "FLUX.1-dev)", ["benchmarks/peer.py", "--family", "flux", "--steps", "40", "--batch-sizes", "1", "--pairs", "3",
                     "--prior", "no,yes", "--num-class-images", "8"]),
    ("Training speed against the peer on FLUX.2 [klein] (diffusers' train_dreambooth_lora_flux2_klein.py, a mid-size "
     "random FLUX.2 [klein])", ["benchmarks/peer.py", "--family", "flux2", "--steps", "40", "--batch-sizes", "1",
                                "--pairs", "3", "--prior", "no,yes", "--num-class-images", "8"]),
    ("Evaluation inside training: do eval points sampled in fewer steps score like full ones?",
     ["benchmarks/eval_steps.py"]),
    ("Evaluation inside training: what it costs", ["benchmarks/eval_cost.py"]),
    ("Generation speed against the plain diffusers pipeline", ["benchmarks/generation_speed.py"]),
    ("The physical limit: FLOPs per step against one thread's matmul rate, and the profile",
     ["benchmarks/compute_limit.py"]),
    ("Many small jobs on a CPU: worker processes or threads (what --workers auto rests on)",
     ["benchmarks/workers.py"]),
    ("torch.compile: its start-up against the step time it saves", ["benchmarks/compile_speed.py"]),
    ("The demo and the built-in model", ["benchmarks/demo_time.py"]),
    ("A newcomer's first minutes: the times the README quotes", ["benchmarks/newcomer.py", "--skip-tests"]),
    ("The backbone axis: SD 1.x/2.x moved onto it, every method's weights and images before and after",
     ["benchmarks/identity.py", "--against", "6f1677d"]),
    ("World v3: the VAE's reconstruction, the shipped VAE against its continued decoder and whole VAE",
     ["benchmarks/vae_fidelity.py", "--model", "builtin", "--model", "benchmarks/out/world-v3/vae-decoder", "--model",
      "benchmarks/out/world-v3/vae-all"]),
    ("World v3: the base model's UNet and text encoder continued (the probe), and the decoder alone, against v2",
     ["benchmarks/world_v3.py", "--model", "builtin", "--model", "benchmarks/out/world-v3/unet-probe", "--model",
      "benchmarks/out/world-v3/vae-decoder", "--subjects", "probe"]),
    ("Built-in model: prompt fidelity", ["benchmarks/base_fidelity.py"]),
    ("Built-in evaluators: do they generalize to held-out instances?", ["benchmarks/evaluators.py"]),
    ("World v3: the starting point (the v2 model on EmojiBench v3 and the validation subjects)",
     ["benchmarks/starting_point.py"]),
    ("Validation subjects: choosing LoRA's sampling setting", ["benchmarks/validation.py"]),
    ("EmojiBench: the DreamBench protocol on the built-in world", ["benchmarks/emojibench.py"]),
    ("The fair comparison's checks: what PRES and DIV add to a bench pair, the built-in captioner's accuracy", ["benchmarks/fair_checks.py"]),
    ("The backdrop warning's margin: its rule on the validation subjects, and how often it fires",
     ["benchmarks/backdrop_margin.py"]),
    ("The fair comparison: each method's settings chosen by one rule on the validation subjects, then EmojiBench",
     ["benchmarks/fair.py"]),
    ("ProFusion on the built-in world: defaults chosen on validation, EmojiBench, ablation, time to subject",
     ["benchmarks/profusion.py", "--only", "check", "--only", "validation", "--only", "emojibench", "--only", "time"]),
    ("ProFusion: what PromptNet reads (the image itself, another image of its instance, x_t or not)",
     ["benchmarks/profusion.py", "--only", "references", "--only", "clean"]),
    ("ProFusion: does S* carry the subject? (TI's bound, the training split, a PromptNet on 'a S*')",
     ["benchmarks/profusion.py", "--only", "ti-check", "--only", "train-check", "--only", "instance-template"]),
    ("ProFusion on EmojiBench: the shipped PromptNet at the built-in defaults, and time to subject",
     ["benchmarks/profusion.py", "--only", "emojibench", "--only", "emojibench-tuned", "--only", "time"]),
    ("The SuTI apprentice on the built-in world: the filter, the farm, EmojiBench, the ablation, scaling, time",
     ["benchmarks/apprentice.py", "--scaling", "--equal-dino", "--ablation-on-emojibench"]),
    ("The SuTI apprentice with more of each expert: 25 contexts per expert, 128 experts, the twin at equal DINO",
     ["benchmarks/apprentice.py", "--threads", "2", "--only", "farm-all", "--only", "train-all", "--only",
      "validation-all", "--only", "ablation-all", "--only", "emojibench-all"]),
]


def previous_sections() -> dict[str, str]:
    """Title -> the section's text (heading included) in the current docs/RESULTS.md."""
    path = ROOT / "docs" / "RESULTS.md"
    text = path.read_text() if path.is_file() else ""
    made = re.search(r"Regenerated by .* on (\d{4}-\d\d-\d\d)", text)
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        title, body = (chunk.rstrip() + "\n").split("\n", 1)
        if "_Made on " not in body and made:  # a section from a full regeneration: that run's date
            command, rest = body.lstrip("\n").split("\n", 1)
            body = f"\n{command}\n\n_Made on {made.group(1)}._\n{rest}"
        sections[title.strip()] = f"## {title.strip()}\n{body}"
    return sections


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bench-report-only", action="store_true",
                        help="report the EmojiBench pairs finished so far instead of running the rest (hours)")
    parser.add_argument("--only", action="append", metavar="WORDS",
                        help="rerun only the sections whose title contains WORDS (repeatable); the others keep "
                             "their text from the current docs/RESULTS.md, with the date they were made")
    args = parser.parse_args()
    kept = previous_sections() if args.only else {}
    parts = ["# Results\n", f"Regenerated by `python benchmarks/run_all.py` on {datetime.date.today()}"
             f"{' (the sections it reran; each other section says when it was made)' if args.only else ''}.\n"]
    for title, command in SECTIONS:
        if args.only and not any(words in title for words in args.only):
            if title in kept:
                parts.append(kept[title])
            continue
        if args.bench_report_only and command[0] == "benchmarks/emojibench.py":
            command = [*command, "--report-only"]
        print(f"running {' '.join(command)} ...", file=sys.stderr)
        out = subprocess.run([sys.executable, *command[0:1], *command[1:]], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        made = f"\n\n_Made on {datetime.date.today()}._" if args.only else ""
        parts.append(f"## {title}\n\n`python {' '.join(command)}`{made}\n\n{out.strip()}\n")
    (ROOT / "docs" / "RESULTS.md").write_text("\n".join(parts))
    print("wrote docs/RESULTS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
