"""World v3's base model against v2: the base model's class, context and attribute accuracy, and LoRA on the
validation subjects, for each model given (the shipped v2 first).

    python benchmarks/world_v3.py --model builtin --model benchmarks/out/world-v3/unet-probe --subjects probe

- Accuracy: the eval CLIP, zero-shot, on the base model's images of class prompts ('a dog on the beach': which
  class of 15, which context of 35; benchmarks/base_fidelity.py's questions) and of attribute prompts ('a striped
  backpack', 'a dog with a star sticker', 'a green dog', 'a dog with a pink bow': which value of that attribute,
  the class given), each beside the same judge on the world's own renders of the same prompts (its ceiling).
- LoRA: `subjectgen bench --methods lora` at its defaults on the validation subjects (25 prompts x 1 image), its
  gain ((DINO - baseline) / (perfect - baseline)) and CLIP-T against the baseline, each model its own baseline.

The rules for issue 35's UNet and text encoder, fixed before any of their runs (the VAE's are in
benchmarks/vae_fidelity.py):
1. The VAE carried into the UNet's continuation is the continued decoder (`world train-vae --part decoder`,
   1,928 steps): the better of the two measured by held-out photo error (0.0225 against the whole VAE's 0.0246)
   and the one that keeps the encoder, hence every latent the UNet learned from, bit-identical, so what the
   probe changes is the attributes, not a new latent space. The whole VAE stays a resumable candidate, continued
   only if a probe fails for a reason its reconstructions explain (looked at on the sheet).
2. The probe: one slice of `world train --init <the decoder's model folder>` of 30 minutes at one thread, then
   this benchmark with `--subjects probe` (4 validation subjects fixed here: the 1st, 5th, 9th and 13th of the
   sorted names, val_backpack, val_cartoon, val_dog, val_plushie) on v2 and on the slice.
3. A next slice (at most two hours) runs while the last one moved a number: attribute accuracy up by at least
   3 points, or LoRA's probe gain up by at least 0.03 with its CLIP-T against the baseline no more than
   2 points worse. Total budget about 8 one-thread CPU-hours with the VAE's (1.83 + 0.50 spent on it).
4. Ship (the issue's rule): on all 16 validation subjects (`--subjects all`), LoRA's gain and CLIP-T against the
   baseline both no worse than v2's in the same run, and the base model's attribute accuracy higher than v2's;
   otherwise v2 stays and the note says what was learned.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from base_fidelity import accuracy, rendered, requests  # noqa: E402 (benchmarks/ is on sys.path when run)
from starting_point import validation_folder  # noqa: E402
from vae_fidelity import continued, cpu_hours  # noqa: E402

from subjectgen.sampling import make_grid

PROBE_SUBJECTS = ["val_backpack", "val_cartoon", "val_dog", "val_plushie"]
SEED = 9000  # render and generation seeds: no training set's


def attribute_requests() -> tuple[list[tuple[str, str, int, object]], dict[tuple[str, str], list[str]]]:
    """(class, axis, index of the asked value, the world instance showing it) for every DreamBench class and every
    value it can take — patterns, stickers, accessories (live classes), the colours a hue rotation gives it — each
    instance outside the reserved region; and per (class, axis) the prompts of its values, in index order."""
    from subjectgen.world.catalog import (ACCESSORIES, ACCESSORY_WORDS, CLASSES, DREAMBENCH_CLASSES, LIVE_CLASSES,
                                          PATTERN_WORDS, PATTERNS, STICKER_WORDS, STICKERS, STYLES, Instance,
                                          caption, is_reserved)
    from subjectgen.world.render import colour_name

    asked, phrases = [], {}
    for noun in DREAMBENCH_CLASSES:
        bases = [(e, s) for e in CLASSES[noun] for s in STYLES]
        axes = {"pattern": [({"pattern": p}, "<" + PATTERN_WORDS[p]) for p in PATTERNS[1:]],
                "sticker": [({"overlay": o}, f"with a {STICKER_WORDS.get(o, o)} sticker") for o in STICKERS[1:]]}
        if noun in LIVE_CLASSES:
            axes["accessory"] = [({"accessory": a}, ACCESSORY_WORDS[a]) for a in ACCESSORIES[1:]]
        colours = {}
        for emoji, style in bases:
            for hue in range(0, 360, 15):
                inst = Instance(emoji, style, hue)
                name = colour_name(inst)
                if name and name not in colours and not is_reserved(inst):
                    colours[name] = inst
        if len(colours) >= 2:
            axes["colour"] = [(colours[n], "<" + n) for n in sorted(colours)]
        for axis, values in axes.items():
            phrases[noun, axis] = [caption(noun, None, named=named) for _, named in values]
            for index, (value, _) in enumerate(values):
                candidates = [value] if isinstance(value, Instance) else [Instance(e, s, **value) for e, s in bases]
                inst = next((i for i in candidates if not is_reserved(i)), None)
                if inst is not None:
                    asked.append((noun, axis, index, inst))
    return asked, phrases


ATTRIBUTES, PHRASES = attribute_requests()


def attribute_accuracy(evaluators, images, asked) -> dict:
    """Zero-shot: is the asked value the judge's pick among its axis's values (the class given)? Per axis and
    over all prompts."""
    from subjectgen.eval.metrics import zero_shot_predictions

    picks = zero_shot_predictions(evaluators, images, [PHRASES[c, axis] for c, axis, _, _ in asked])
    hits = [pick == index for pick, (_, _, index, _) in zip(picks, asked)]
    by_axis = {}
    for hit, (_, axis, _, _) in zip(hits, asked):
        by_axis.setdefault(axis, []).append(hit)
    return {"attribute": sum(hits) / len(hits), "attribute_images": len(hits),
            **{axis: sum(v) / len(v) for axis, v in by_axis.items()}}


def base_accuracy(model: str, evaluators, n: int, sheet: Path) -> dict:
    """The base model's class, context and attribute accuracy on n images per prompt, beside the renders'."""
    from subjectgen.models import load_model
    from subjectgen.sampling import generate
    from subjectgen.world.catalog import caption
    from subjectgen.world.scene import render_scene

    components, started = load_model(model), time.perf_counter()
    asked = requests(n)
    images = generate(components, [caption(c, x) for c, x, _ in asked], [SEED + k for *_, k in asked], 25, 7.5,
                      batch_size=32)
    attributes = [(a, k) for a in ATTRIBUTES for k in range(n)]
    prompts = [PHRASES[c, axis][i] for (c, axis, i, _), _ in attributes]
    drawn = generate(components, prompts, [SEED + k for _, k in attributes], 25, 7.5, batch_size=32)
    renders = [render_scene(inst, None, SEED + k) for (_, _, _, inst), k in attributes]
    sheet.parent.mkdir(parents=True, exist_ok=True)
    make_grid([img for img, ((_, axis, _, _), k) in zip(drawn, attributes) if k == 0 and axis != "sticker"][:60],
              10).save(sheet)
    return {"generated": {**accuracy(evaluators, images, asked),
                          **attribute_accuracy(evaluators, drawn, [a for a, _ in attributes])},
            "rendered": {**accuracy(evaluators, rendered(asked), asked),
                         **attribute_accuracy(evaluators, renders, [a for a, _ in attributes])},
            "generate_seconds": round(time.perf_counter() - started, 1)}


def lora_on_validation(model: str, subjects: list[str], out: Path) -> dict:
    """`subjectgen bench --methods lora` on the validation subjects: LoRA's and the baseline's summary rows."""
    subprocess.run([sys.executable, "-m", "subjectgen.cli", "bench", "--quiet", "--bench", validation_folder(),
                    "--model", model, "--methods", "lora", "--subjects", ",".join(subjects), "--images-per-prompt",
                    "1", "--dino", "builtin", "--clip", "builtin", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    results = json.loads((out / "results.json").read_text())
    pairs, lora = results["pairs"], results["summary"]["lora"]
    won = sum(pairs["lora"][s]["dino"] > pairs["baseline"][s]["dino"] and
              pairs["lora"][s]["clip_i"] > pairs["baseline"][s]["clip_i"] for s in pairs["lora"])
    return {"gain": lora["gain"], "clip_t_vs_baseline": lora["clip_t_vs_baseline"], "dino": lora["dino"],
            "clip_t": lora["clip_t"], "beats_baseline": f"{won}/{len(pairs['lora'])}"}


def stack_sheets(sheets: list[Path], out: Path) -> None:
    """The models' attribute sheets one above the other, a gap between."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sheets]
    stacked = Image.new("RGB", (max(i.width for i in images), sum(i.height + 8 for i in images)), "white")
    for k, image in enumerate(images):
        stacked.paste(image, (0, sum(i.height + 8 for i in images[:k])))
    out.parent.mkdir(parents=True, exist_ok=True)
    stacked.save(out, quality=85)


def measured(path: Path, measure) -> dict:
    """The JSON in `path`, else measure() written there."""
    if path.is_file():
        return json.loads(path.read_text())
    value = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))
    return value


def tag(model: str) -> str:
    return Path(model).name if "/" in model else model


def main() -> None:
    from subjectgen.eval.metrics import load_evaluators
    from subjectgen.world.catalog import VALIDATION

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a model (repeat; the shipped v2 first)")
    parser.add_argument("--subjects", choices=("probe", "all"), default="probe")
    parser.add_argument("-n", type=int, default=2, help="images per accuracy prompt")
    parser.add_argument("--out", default="benchmarks/out/world-v3/ship")
    parser.add_argument("--sheet", default="docs/images/world_v3_attributes.jpg")
    args = parser.parse_args()
    subjects = PROBE_SUBJECTS if args.subjects == "probe" else sorted(VALIDATION)
    evaluators, rows, started = load_evaluators("builtin", "builtin"), {}, time.perf_counter()
    for model in args.model:  # resumable: what was measured before is read back, not measured again
        folder = Path(args.out) / tag(model)
        rows[model] = {"base": measured(folder / f"base-{args.n}.json",
                                        lambda: base_accuracy(model, evaluators, args.n, folder / "attributes.png")),
                       "lora": measured(folder / f"lora-{args.subjects}.json",
                                        lambda: lora_on_validation(model, subjects, folder / f"validation-{args.subjects}"))}
    print_tables(rows, subjects, args)
    print_verdicts(rows, args.subjects)
    stack_sheets([Path(args.out) / tag(m) / "attributes.png" for m in args.model], Path(args.sheet))
    print(f"\nSheet: `{args.sheet}` (per model, in the order above: the first image of each class's pattern, colour "
          "and accessory prompts, a row per class).")
    print(f"\nWall clock of this invocation: {(time.perf_counter() - started) / 60:.1f} min (models measured "
          "before are reused).")


def print_tables(rows: dict, subjects: list[str], args) -> None:
    first = next(iter(rows.values()))
    print(f"Base-model accuracy of the eval CLIP, zero-shot ({len(requests(args.n))} class-prompt and "
          f"{args.n * len(ATTRIBUTES)} attribute-prompt images per model, {args.n} per prompt; the renders' row is "
          "the judge's ceiling; chance: pattern 1/3, sticker 1/7, colour about 1/6, accessory 1/3):\n")
    axes = [a for a in ("attribute", "pattern", "sticker", "colour", "accessory") if a in first["base"]["rendered"]]
    print("| images | class (of 15) | context (of 35) | " + " | ".join(axes) + " |")
    print("|---" * (3 + len(axes)) + "|")
    print("| world renders (ceiling) | " + " | ".join(f"{first['base']['rendered'][k]:.1%}"
                                                  for k in ("class", "context", *axes)) + " |")
    for model, row in rows.items():
        print(f"| {model} | " + " | ".join(f"{row['base']['generated'][k]:.1%}" for k in ("class", "context", *axes))
              + " |")
    print(f"\nLoRA at its defaults on {len(subjects)} validation subjects ({', '.join(subjects)}), 25 prompts x 1 "
          "image, built-in evaluators:\n")
    print("| model | LoRA gain | LoRA CLIP-T vs baseline | beats baseline on DINO and CLIP-I |\n|---|---|---|---|")
    for model, row in rows.items():
        lora = row["lora"]
        print(f"| {model} | {lora['gain']:.2f} | {lora['clip_t_vs_baseline']:+.1%} | {lora['beats_baseline']} |")


def print_verdicts(rows: dict, subjects: str) -> None:
    """Rules 3 and 4 for each model against the first (v2), and each continued model's slices."""
    first, *others = rows
    v2 = rows[first]
    print()
    for model in others:
        row = rows[model]
        attribute = row["base"]["generated"]["attribute"] - v2["base"]["generated"]["attribute"]
        gain = row["lora"]["gain"] - v2["lora"]["gain"]
        clip_t = row["lora"]["clip_t_vs_baseline"] - v2["lora"]["clip_t_vs_baseline"]
        moved = attribute >= 0.03 or (gain >= 0.03 and clip_t >= -0.02)
        ships = attribute > 0 and gain >= 0 and clip_t >= 0
        ship = ("passes rule 4 on these subjects" + ("" if subjects == "all" else " (the ship check needs all 16)")
                if ships else "fails rule 4 (v2 stays)")
        print(f"- {model}: attribute accuracy {attribute * 100:+.1f} points, LoRA gain {gain:+.2f}, CLIP-T vs "
              f"baseline {clip_t * 100:+.1f} points against {first}: {'moved' if moved else 'did not move'} "
              f"(rule 3: {'a next slice' if moved else 'no next slice'}); {ship}.")
    for model in rows:
        for key, command in (("vae_continued", "world train-vae"), ("unet_continued", "world train --init")):
            record = continued(model, key)
            if record:
                print(f"- {model}: `{command}` at step {record['step']} of {record['config']['steps']}, "
                      f"{sum(p['samples'] for p in record['slices']):,} samples in {len(record['slices'])} slice(s), "
                      f"{cpu_hours(record):.2f} CPU-hours.")


if __name__ == "__main__":
    main()
