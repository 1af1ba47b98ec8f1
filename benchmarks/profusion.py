"""ProFusion on the built-in world: its defaults chosen on the validation subjects, its EmojiBench rows beside
the other methods, an ablation of Fusion Sampling, time-to-subject against DreamBooth's, the pretraining record.

The rule, fixed before the first ProFusion number existed (this docstring was committed before the runs; amended
once, still before any number: the pretraining prompt became a choice, after the first PromptNet's images at
step 600 were blobs that ignored the prompt, and the prompts went from 10 to 5 for time):
- Validation: the 16 validation subjects (never in training, never in EmojiBench), the first 5 prompts,
  1 image per prompt, the built-in evaluators.
- First the PromptNet and the tune, sampled with full Fusion Sampling at the reference notebook's settings.
  PromptNets: "template" (S* in "a S*", the reference's "a photo of S*" in the world's wording) and "captions"
  (`profusion pretrain --captions`: S* in each training image's own caption, in its class noun's place).
  Tunes: the encoder alone (`--train-steps 0`), and 100 steps at batch 4 with lr 2e-4; for the template
  PromptNet also lr 2e-5 (the reference's).
- Then, on the chosen row, the sampling: no fusion (`--no-fusion`), the fusion stage only
  (`--ref-guidance 0`), full Fusion Sampling (the reference's settings). This is also the ablation.
- Choice, each time: among the rows whose CLIP-T is within 10 % of the baseline's (as for LoRA), the one that
  beats the baseline on DINO and CLIP-I for the most subjects; a tie goes to the earlier row. When no row is
  within the budget, the row with the highest CLIP-T (keeping the prompt is ProFusion's claim).
- The chosen PromptNet ships as `builtin` and the chosen settings become the built-in defaults; EmojiBench then
  runs ProFusion at them (and, `--only emojibench-tuned`, tuned), 25 prompts x 1 image, beside the starting
  point's rows.
- Time to subject (load + encode + tune, before the first image; subject.json's metrics.time_to_subject_seconds):
  ProFusion and DreamBooth-full trained alternately on the same subjects in one run of this script.

Amended in stop 17, before any number of the PromptNet it adds (`--only references`):
- Why: the images behind the rows above show that the shipped PromptNet's S* draws no subject at all, even in
  'a S*' with no fusion: blobs in the photo's colours (val_dog, looked at before this amendment). Its
  pretraining has reference = target, and PromptNet reads both the clean reference latent and x_t: together
  they give away the noise, a shortcut S* can learn that does not exist when sampling (x_t is then not a noised
  copy of the reference).
- A third PromptNet, "instance" (`profusion pretrain --captions --references instance`, the others' schedule:
  1200 steps, batch 32, lr 2e-4): each training image's reference is another image of its instance, and S*
  stands in the image's own caption, so S* has to carry what stays the same across scenes.
- Compared with the shipped "template" PromptNet on the validation subjects, each as the encoder alone and
  tuned 100 steps at lr 2e-4, full Fusion Sampling, the protocol and the choice rule above (the template rows
  run again beside the new ones). If an "instance" row is chosen it ships as builtin with its tune as the
  default; the sampling ablation and the EmojiBench row then run again on it.

Amended again in stop 17, after the instance PromptNet's denoising check and before any of its bench rows or
any number of the PromptNet it adds (`--only clean`):
- Why: the instance PromptNet's S* lowers the loss (0.179 against the class noun's 0.221) but as much with
  another subject's photo as with the subject's own (0.17929 against 0.17903): S* carries x_t, the sample being
  denoised, not the reference.
- A fourth PromptNet, "clean" (`--captions --references instance --no-noisy-input`): PromptNet reads the
  reference alone. 600 steps (half the others' schedule, for this session's time: a handicap, not a help).
- Its denoising check, then "clean, encoder only" on the validation subjects under the same protocol, chosen by
  the same rule among all the rows of `--only references` and this one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

VALIDATION = "benchmarks/out/v3/validation-subjects"
EMOJIBENCH = "benchmarks/out/v3/emojibench"      # the starting point's folder: ProFusion joins its rows
PROMPTNETS = {"template": "benchmarks/out/v3/promptnet-template", "captions": "benchmarks/out/v3/promptnet-captions",
              "instance": "benchmarks/out/v3/promptnet-instance", "clean": "benchmarks/out/v3/promptnet-clean"}
PRETRAIN_FLAGS = {"template": [], "captions": ["--captions"], "instance": ["--captions", "--references", "instance"],
                  "clean": ["--captions", "--references", "instance", "--no-noisy-input", "--steps", "600"]}
# The tuned rows name their steps: the built-in default became 0 (the encoder alone) once it was chosen here.
STEPS_100 = ["--train-steps", "100"]
TUNES = {"template, encoder only": ["--promptnet", PROMPTNETS["template"], "--train-steps", "0"],
         "template, 100 steps, lr 2e-5": ["--promptnet", PROMPTNETS["template"], *STEPS_100, "--train-lr", "2e-5"],
         "template, 100 steps, lr 2e-4": ["--promptnet", PROMPTNETS["template"], *STEPS_100, "--train-lr", "2e-4"],
         "captions, encoder only": ["--promptnet", PROMPTNETS["captions"], "--train-steps", "0"],
         "captions, 100 steps, lr 2e-4": ["--promptnet", PROMPTNETS["captions"], *STEPS_100, "--train-lr", "2e-4"]}
REFERENCE_TUNES = {"template, encoder only": TUNES["template, encoder only"],
                   "template, 100 steps, lr 2e-4": TUNES["template, 100 steps, lr 2e-4"],
                   "instance, encoder only": ["--promptnet", PROMPTNETS["instance"], "--train-steps", "0"],
                   "instance, 100 steps, lr 2e-4": ["--promptnet", PROMPTNETS["instance"], *STEPS_100,
                                                    "--train-lr", "2e-4"]}
SAMPLINGS = {"no fusion": ["--no-fusion"], "fusion stage only": ["--ref-guidance", "0"],
             "full Fusion Sampling": None}  # None: the chosen tune's own row (it was sampled this way)
CLIP_T_BUDGET = -0.10
TIMED_SUBJECTS = ("dog", "backpack", "cat", "teapot")


def bench(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "subjectgen.cli", "bench", "--quiet", "--dino", "builtin", "--clip",
                    "builtin", *args], check=True, stdout=subprocess.DEVNULL)


def row(folder: Path, label: str, args: list[str]) -> dict:
    results = json.loads((folder / "results.json").read_text())
    base, mine = results["pairs"]["baseline"], results["pairs"]["profusion"]
    wins = sum(mine[s]["dino"] > base[s]["dino"] and mine[s]["clip_i"] > base[s]["clip_i"] for s in mine)
    mean, baseline = results["summary"]["profusion"], results["summary"]["baseline"]
    return {"label": label, "args": args, "wins": wins, "subjects": len(mine), "gain": mean.get("gain"),
            **{m: mean[m] for m in ("dino", "clip_i", "clip_t")}, "baseline": baseline,
            "clip_t_vs_baseline": mean["clip_t"] / baseline["clip_t"] - 1,
            "train_seconds": mean.get("train_seconds_per_subject"),
            "generate_seconds": mean.get("generate_seconds_per_subject")}


def choose(rows: list[dict]) -> dict:
    allowed = [r for r in rows if r["clip_t_vs_baseline"] >= CLIP_T_BUDGET]
    if not allowed:
        return max(rows, key=lambda r: (r["clip_t"], -rows.index(r)))
    return max(allowed, key=lambda r: (r["wins"], -rows.index(r)))


def grid(out: Path, labels: dict, fixed: dict | None, workers: str, source: Path | None) -> list[dict]:
    """One validation bench folder per setting; `source`'s baseline (and, if trained alike, runs) reused; `fixed`:
    the chosen row whose training these settings sample."""
    rows = []
    for label, args in labels.items():
        if args is None:
            rows.append({**fixed, "label": label, "args": []})
            continue
        folder = out / label.replace(" ", "-").replace(",", "")
        bench(["--bench", VALIDATION, "--methods", "profusion", "--prompts", "5", "--images-per-prompt", "1",
               "--out", str(folder), "--workers", workers, *(fixed["args"] if fixed else []), *args,
               *(["--runs-from", str(source)] if source else [])])
        source = source or folder
        rows.append({**row(folder, label, args), "folder": str(folder)})
    return rows


def table(rows: list[dict], chosen: dict) -> None:
    print("| setting | DINO | CLIP-I | CLIP-T | gain | CLIP-T vs baseline | beats baseline on DINO and CLIP-I | "
          "train s/subject | generate s/subject |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = "–" if r["gain"] is None else f"{r['gain']:.2f}"
        print(f"| {r['label']}{' (chosen)' if r is chosen else ''} | {r['dino']:.3f} | {r['clip_i']:.3f} | "
              f"{r['clip_t']:.3f} | {gain} | {r['clip_t_vs_baseline']:+.1%} | {r['wins']}/{r['subjects']} | "
              f"{r['train_seconds']:.1f} | {r['generate_seconds']:.1f} |")


def pretrain_missing(names) -> None:
    """The PromptNets the validation compares, pretrained here when absent (about 40 min each at one thread)."""
    for name in names:
        folder = PROMPTNETS[name]
        if not (Path(folder) / "config.json").is_file():
            subprocess.run([sys.executable, "-m", "subjectgen.cli", "profusion", "pretrain", "--out", folder,
                            "--checkpoint-every", "200", "--quiet", *PRETRAIN_FLAGS[name],
                            *(["--resume"] if (Path(folder) / "run.json").is_file() else [])], check=True)


CLEAN_TUNES = {"clean, encoder only": ["--promptnet", PROMPTNETS["clean"], "--train-steps", "0"]}


def clean(out: Path, workers: str) -> dict:
    """The second stop-17 amendment: the clean PromptNet (the reference alone, no x_t), chosen among all rows."""
    pretrain_missing(["clean"])
    encoder_check(PROMPTNETS["clean"], "clean")
    earlier = json.loads((out / "references.json").read_text())["rows"]
    new = grid(out / "references", CLEAN_TUNES, None, workers, Path(earlier[0]["folder"]))
    rows = earlier + new
    chosen = choose(rows)
    print("Beside the rows above, the clean PromptNet (the reference alone: no x_t input), full Fusion Sampling:\n")
    table(rows, chosen)
    print(f"\nChosen by the rule among all of them: tune `{' '.join(chosen['args'])}`.")
    (out / "clean.json").write_text(json.dumps({"chosen": chosen, "rows": rows}, indent=1) + "\n")
    return chosen


def references(out: Path, workers: str) -> dict:
    """The stop-17 amendment: the instance PromptNet against the template one, on the validation subjects."""
    pretrain_missing(["template", "instance"])
    encoder_check(PROMPTNETS["instance"], "instance")
    rows = grid(out / "references", REFERENCE_TUNES, None, workers, None)
    chosen = choose(rows)
    base = rows[0]["baseline"]
    print(f"On the {rows[0]['subjects']} validation subjects, 5 prompts x 1 image; baseline DINO {base['dino']:.3f}, "
          f"CLIP-I {base['clip_i']:.3f}, CLIP-T {base['clip_t']:.3f}. The template PromptNet (reference = target) "
          "and the instance one (reference = another image of the instance, S* in the caption), full Fusion "
          "Sampling:\n")
    table(rows, chosen)
    print(f"\nChosen by the rule: tune `{' '.join(chosen['args'])}`.")
    (out / "references.json").write_text(json.dumps({"chosen": chosen, "rows": rows}, indent=1) + "\n")
    return chosen


def validation(out: Path, workers: str) -> dict:
    if not (Path(VALIDATION) / "prompts_and_classes.txt").is_file():
        subprocess.run([sys.executable, "-m", "subjectgen.cli", "world", "build", "--set", "validation", "--out",
                        VALIDATION], check=True, stdout=subprocess.DEVNULL)
    tunes = grid(out / "tune", TUNES, None, workers, None)
    tune = choose(tunes)
    samplings = grid(out / "sampling", SAMPLINGS, tune, workers, Path(tune["folder"]))
    sampling = choose(samplings)
    base = tunes[0]["baseline"]
    print(f"On the {tunes[0]['subjects']} validation subjects, 5 prompts x 1 image; baseline DINO {base['dino']:.3f}, "
          f"CLIP-I {base['clip_i']:.3f}, CLIP-T {base['clip_t']:.3f}. The PromptNet and the tune, with full Fusion "
          "Sampling:\n")
    table(tunes, tune)
    print("\nThe sampling on the chosen tune (the ablation of Fusion Sampling):\n")
    table(samplings, sampling)
    ti = ti_file_row(Path(tune["folder"]))
    print(f"\nS* alone, its Textual Inversion file in plain diffusers on the base model (the chosen tune's runs, no "
          f"tuned attention, no Fusion Sampling): DINO {ti['dino']:.3f}, CLIP-I {ti['clip_i']:.3f}, CLIP-T "
          f"{ti['clip_t']:.3f}, against the chosen row's {tune['dino']:.3f}, {tune['clip_i']:.3f}, "
          f"{tune['clip_t']:.3f}.")
    choice = {"tune": tune["args"], "sampling": sampling["args"], "ti_file": ti}
    (out / "choice.json").write_text(json.dumps({"chosen": choice, "tunes": tunes, "samplings": samplings},
                                                indent=1) + "\n")
    print(f"\nChosen by the rule: tune `{' '.join(tune['args']) or 'defaults'}`, sampling "
          f"`{' '.join(sampling['args']) or 'defaults'}`.")
    return choice


@torch.no_grad()
def ti_file_row(folder: Path) -> dict:
    """S* alone, as its Textual Inversion file loads in plain diffusers: the base model with learned_embeds.safetensors
    (no tuned attention, no per-step S*, no Fusion Sampling), plain guidance, the same prompts and seeds as `folder`."""
    from subjectgen.eval.metrics import load_evaluators, score_images
    from subjectgen.eval.prompts import read_benchmark
    from subjectgen.models import load_model
    from subjectgen.photos import open_photo, photo_paths
    from subjectgen.sampling import generate
    from subjectgen.subjects import expand_subject

    bench, evaluators = read_benchmark(Path(VALIDATION)), load_evaluators("builtin", "builtin")
    rows = []
    for subject in sorted(bench.classes):
        noun, run = bench.classes[subject], folder / "pairs" / "profusion" / subject / "run"
        components = load_model("builtin")
        components.pipeline().load_textual_inversion(str(run / "learned_embeds.safetensors"))
        templates = bench.prompts_for(subject)[:5]
        images = generate(components, [expand_subject(t, "<s*>") for t in templates], [0] * len(templates))
        photos = [open_photo(p) for p in photo_paths(Path(VALIDATION) / subject)]
        scores = [score_images(evaluators, [im], photos, expand_subject(t, noun)) for im, t in zip(images, templates)]
        rows.append({m: sum(sc[m] for sc in scores) / len(scores) for m in ("dino", "clip_i", "clip_t")})
    return {m: sum(r[m] for r in rows) / len(rows) for m in ("dino", "clip_i", "clip_t")}


TUNED = ["--train-steps", "100", "--train-lr", "2e-4"]  # the best tuned validation row (9/16 wins, CLIP-T -46 %)


def emojibench(workers: str, tuned_row: bool) -> None:
    """ProFusion at the built-in defaults (the encoder alone, `--steps 0`, chosen on validation) joins the starting
    point's folder; with `tuned_row`, also ProFusion tuned (TUNED) in a folder of its own."""
    from subjectgen.eval.report import gain

    bench(["--bench", "emoji", "--methods", "profusion", "--images-per-prompt", "1", "--out", EMOJIBENCH,
           "--workers", workers])
    tuned = Path(EMOJIBENCH + "-profusion-tuned")
    if tuned_row:
        bench(["--bench", "emoji", "--methods", "profusion", "--images-per-prompt", "1", *TUNED,
               "--out", str(tuned), "--runs-from", EMOJIBENCH, "--workers", workers])
    results = json.loads((Path(EMOJIBENCH) / "results.json").read_text())
    print("EmojiBench, 25 prompts x 1 image, the built-in evaluators; ProFusion at the defaults chosen above "
          "beside the starting point's rows:\n")
    print((Path(EMOJIBENCH) / "table.md").read_text().split("\nGain:")[0].rstrip())
    if tuned_row:
        r = row(tuned, "profusion tuned", TUNED)
        print(f"| profusion, {' '.join(TUNED)} | {r['dino']:.3f} | {r['clip_i']:.3f} | {r['clip_t']:.3f} | "
              f"{r['gain']:.2f} | | {r['clip_t_vs_baseline']:+.1%} | {r['subjects']} | {r['train_seconds']:.1f} | "
              f"{r['generate_seconds']:.1f} |")
    print("\n(The profusion row is the encoder alone, `--steps 0`: the built-in default"
          + ("" if tuned_row else "; the tuned row was not run yet: `--only emojibench-tuned`") + ".)\n")
    pairs = results["pairs"]
    base, perfect = pairs["baseline"], pairs["perfect"]
    print("| method | beats baseline on DINO and CLIP-I | gain above 1 on | CLIP-T vs DreamBooth's, TI's |")
    print("|---|---|---|---|")
    for method in ("profusion", "lora", "dreambooth", "textual-inversion"):
        mine = pairs[method]
        won = sum(mine[s]["dino"] > base[s]["dino"] and mine[s]["clip_i"] > base[s]["clip_i"] for s in mine)
        over = sum((gain(mine[s]["dino"], base[s]["dino"], perfect[s]["dino"]) or 0) > 1 for s in mine)
        t = results["summary"][method]["clip_t"]
        vs = (f"{t - results['summary']['dreambooth']['clip_t']:+.3f}, "
              f"{t - results['summary']['textual-inversion']['clip_t']:+.3f}")
        print(f"| {method} | {won}/{len(mine)} | {over} | {vs} |")


def time_to_subject(out: Path) -> None:
    """DreamBooth-full and ProFusion, alternately on the same subjects, in this one process's runs."""
    from timing import alternate

    alternate(out / "timed", TIMED_SUBJECTS, {"dreambooth": [], "profusion": []}, ("DreamBooth-full", "ProFusion"))


def subject_class(name: str) -> str:
    from subjectgen.world.build import subject_class as of

    return of(name)


def records() -> None:
    from subjectgen.assets import IMAGE_ENCODER, PROMPTNET

    if not (PROMPTNET / "training.json").is_file():
        print("No PromptNet is shipped yet (src/subjectgen/assets/promptnet).\n")
        return
    pre = json.loads((PROMPTNET / "training.json").read_text())
    enc = json.loads((IMAGE_ENCODER / "training.json").read_text())
    s = pre["settings"]
    flags = []
    if s.get("captions"):
        flags.append("--captions")
    if s.get("references", "self") != "self":
        flags.append(f"--references {s['references']}")
    if s.get("noisy_input") is False:
        flags.append("--no-noisy-input")
    flags = " ".join(flags)
    print(f"The shipped PromptNet (`subjectgen profusion pretrain {flags + ' ' if flags else ''}--out DIR`, then "
          f"config.json, its weights and "
          f"training.json copied to src/subjectgen/assets/promptnet): {s['steps']} steps, batch {s['batch_size']}, "
          f"lr {s['lr']:g}, {pre['images']} world training images (hash {pre['data_hash']}), final loss "
          f"{pre['metrics']['final_loss']:.4f}, {pre['metrics']['train_seconds'] / 60:.1f} min of training "
          f"({pre['metrics']['time_to_subject_seconds'] / 60:.1f} min in all; a resumed run counts from its last "
          f"resume) on this CPU. Its image "
          f"encoder (`subjectgen world train-image-encoder`): {enc['config']['steps']} steps, {enc['images']} images "
          f"(hash {enc['data_hash']}), loss {enc['loss']:.3f}, {enc['seconds'] / 60:.1f} min.\n")


@torch.no_grad()
def encoder_check(promptnet: str = "builtin", name: str = "builtin") -> None:
    """Does the pretrained PromptNet's S* carry the subject? On each validation subject, S* from its first photo
    conditions the denoising of its *other* photos (fixed noise, t = 200..800); compared with the class noun's
    prompt and with S* from another subject's photo (the next one in the list, a control)."""
    from subjectgen.config import TrainConfig
    from subjectgen.eval.prompts import read_benchmark
    from subjectgen.methods.profusion import ProFusion, encode_views
    from subjectgen.models import load_model
    from subjectgen.subjects import load_subject
    from subjectgen.vision import load_image_encoder
    from diffusers import DDPMScheduler

    components = load_model("builtin")
    encoder = load_image_encoder("builtin")
    bench = read_benchmark(Path(VALIDATION))
    folders = [Path(VALIDATION) / name for name in sorted(bench.classes)]
    classes = bench.classes
    cfg = TrainConfig(method="profusion", subject_dir=str(folders[0]), class_noun="dog", out="/tmp/unused",
                      promptnet=promptnet, steps=0, lr=1e-4, batch_size=1)
    subjects = [load_subject(f, classes[f.name], components.resolution) for f in folders]
    views = [encode_views(components, encoder, s.images) for s in subjects]
    method = ProFusion(cfg, components, subjects[0], views[0])
    method.promptnet.eval()
    scheduler = DDPMScheduler.from_config(components.scheduler.config)
    unet, g = components.unet, torch.Generator().manual_seed(0)
    losses = {"S* of its own first photo": [], "the class noun": [], "S* of another subject": []}
    for i, (subject, view) in enumerate(zip(subjects, views)):
        other = views[(i + 1) % len(views)]
        z = view.latents.mean * view.latents.scale
        for target in range(1, len(z)):
            for t in (200, 400, 600, 800):
                x0 = z[target:target + 1]
                noise = torch.randn(x0.shape, generator=g)
                tt = torch.tensor([t])
                xt = scheduler.add_noise(x0, noise, tt)
                conds = {"S* of its own first photo": (z[:1], view.states[:1]),
                         "S* of another subject": (other.latents.mean[:1] * other.latents.scale, other.states[:1])}
                for condition, (ref, states) in conds.items():
                    vectors = method.promptnet(ref, tt, states.float(), xt)
                    hidden = method.text(["a <s*>"], vectors)
                    losses[condition].append(((unet(xt, tt, encoder_hidden_states=hidden).sample - noise) ** 2)
                                             .mean())
                hidden = method.text([f"a {subject.class_noun}"], vectors)
                losses["the class noun"].append(((unet(xt, tt, encoder_hidden_states=hidden).sample - noise) ** 2)
                                                .mean())
    print(f"Does the {name} PromptNet's S* carry the subject? The denoising loss of each validation subject's other "
          "photos (t = 200, 400, 600, 800; fixed noise), conditioned on:\n")
    print("| condition | mean ε-MSE |\n|---|---|")
    for condition, values in losses.items():
        print(f"| {condition} | {torch.stack(values).mean():.5f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/v3/profusion")
    parser.add_argument("--workers", default="2")
    parser.add_argument("--only", choices=("check", "validation", "references", "clean", "emojibench",
                                           "emojibench-tuned", "time"),
                        action="append", help="run these parts (default: all)")
    args = parser.parse_args()
    out, started = Path(args.out), time.perf_counter()
    parts = args.only or ["check", "validation", "references", "clean", "emojibench", "emojibench-tuned", "time"]
    records()
    if "check" in parts or "validation" in parts:
        pretrain_missing(["template", "captions"])
    if "check" in parts:
        for name in ("template", "captions"):
            encoder_check(PROMPTNETS[name], name)
    if "validation" in parts:
        validation(out, args.workers)
    if "references" in parts:
        references(out, args.workers)
    if "clean" in parts:
        clean(out, args.workers)
    if "emojibench" in parts:
        print()
        emojibench(args.workers, "emojibench-tuned" in parts)
    if "time" in parts:
        time_to_subject(out)
    print(f"\nWall clock of this invocation: {(time.perf_counter() - started) / 60:.1f} min (finished pairs are "
          "reused).")


if __name__ == "__main__":
    main()
