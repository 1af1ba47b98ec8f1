"""Choose the demo's subject and prompts on the validation subjects, by a rule fixed before the runs.

Input: the validation bench of benchmarks/starting_point.py (LoRA with its defaults, 25 prompts per subject).
The rule (written 2026-12-01, before that bench finished):
1. Candidates: validation subjects where LoRA beats the baseline on DINO and CLIP-I and keeps CLIP-T at 90 %
   of the baseline's or more.
2. The subject: the candidate with the highest gain (its DINO's share of the way from the baseline to the
   perfect render), counting a gain above 1 as 1 (above 1 is copying the photos, not a better demo); ties by name.
3. The prompts: of that subject's prompts, the three scene prompts and the one other prompt (outfit or property)
   with the highest DINO x CLIP-T for LoRA on it, in the prompt file's order.
Writes OUT/demo_choice.json, which `subjectgen demo` ships (src/subjectgen/assets/demo/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SCENE_WORDS = (" in the ", " on ", " with ", " floating ")


def is_scene(template: str) -> bool:
    rest = template.split("{subject}", 1)[1]
    return rest.startswith(SCENE_WORDS) and "wearing" not in rest and " outfit" not in rest


def choose(results: dict) -> dict | None:
    from subjectgen.eval.report import gain

    pairs = results["pairs"]
    base, perfect, lora = pairs["baseline"], pairs["perfect"], pairs["lora"]
    candidates = {}
    for name, mine in lora.items():
        b, p = base[name], perfect[name]
        if mine["dino"] > b["dino"] and mine["clip_i"] > b["clip_i"] and mine["clip_t"] >= 0.9 * b["clip_t"]:
            candidates[name] = min(1.0, gain(mine["dino"], b["dino"], p["dino"]) or 0.0)
    if not candidates:
        return None
    subject = max(sorted(candidates), key=lambda n: candidates[n])
    rows = lora[subject]["prompts"]
    value = {r["template"]: r["dino"] * r["clip_t"] for r in rows}
    scenes = sorted((r["template"] for r in rows if is_scene(r["template"])), key=lambda t: -value[t])[:3]
    other = sorted((r["template"] for r in rows if not is_scene(r["template"])), key=lambda t: -value[t])[:1]
    order = [r["template"] for r in rows]
    prompts = sorted(scenes + other, key=order.index)
    return {"subject": subject, "class": lora[subject]["class"], "gain": candidates[subject],
            "candidates": candidates, "prompts": prompts,
            "scores": {t: {k: next(r[k] for r in rows if r["template"] == t) for k in ("dino", "clip_t")}
                       for t in prompts}}


def ship(choice: dict | None) -> None:
    """The chosen validation subject's photos and prompts into the package; with no choice, the demo stays on
    EmojiBench's dog with its earlier prompts, and its report says that no validation subject met the rule."""
    from subjectgen.demo import DEMO, PROMPTS
    from subjectgen.world.build import write_emojibench
    from subjectgen.world.catalog import SUBJECTS, VALIDATION

    chooser = "benchmarks/demo_choice.py on the validation bench of benchmarks/starting_point.py"
    if choice is None:
        write_emojibench(DEMO, {"dog": SUBJECTS["dog"]}, overwrite=True)
        spec = {"subject": "dog", "class": "dog", "prompts": PROMPTS, "chosen_by": chooser,
                "note": "EmojiBench's dog: no validation subject met the rule (LoRA beating the baseline on DINO "
                        "and CLIP-I with CLIP-T at 90 % of the baseline's or more)"}
    else:
        write_emojibench(DEMO, {choice["subject"]: VALIDATION[choice["subject"]]}, overwrite=True)
        spec = {"subject": choice["subject"], "class": choice["class"], "prompts": choice["prompts"],
                "chosen_by": chooser, "note": "a validation subject, chosen with its prompts on the validation set"}
    (DEMO / "demo.json").write_text(json.dumps(spec, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="benchmarks/out/v3/validation", help="the validation bench folder")
    parser.add_argument("--out", default="benchmarks/out/v3")
    parser.add_argument("--ship", action="store_true", help="render the chosen subject's photos into the package "
                        "(src/subjectgen/assets/demo/), where `subjectgen demo` reads them")
    args = parser.parse_args()
    choice = choose(json.loads((Path(args.bench) / "results.json").read_text()))
    (Path(args.out) / "demo_choice.json").write_text(json.dumps(choice, indent=1) + "\n")
    if args.ship:
        ship(choice)
    if choice is None:
        print("No validation subject meets the rule: LoRA never beats the baseline on likeness while keeping "
              "90 % of its CLIP-T. The demo stays on its earlier subject, and says so.")
        return
    print(f"Candidates (LoRA beats the baseline on DINO and CLIP-I, CLIP-T >= 90 % of the baseline's), with their "
          f"gain: {', '.join(f'{n} {g:.2f}' for n, g in sorted(choice['candidates'].items()))}.\n")
    print(f"Chosen: **{choice['subject']}** ({choice['class']}), gain {choice['gain']:.2f}; prompts:\n")
    for t in choice["prompts"]:
        s = choice["scores"][t]
        print(f"- `{t}`: DINO {s['dino']:.3f}, CLIP-T {s['clip_t']:.3f}")


if __name__ == "__main__":
    main()
