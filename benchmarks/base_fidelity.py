"""Prompt fidelity of the built-in base model, judged by the built-in eval CLIP (zero-shot).

For each of DreamBench's 15 classes and each context its prompts use (20 scenes + 5 edits, and the
10 outfits for cat and dog), generate N images from the class prompt ('a dog on the beach'), then ask
the eval CLIP (a) which class, among the 15, with the requested context: 'a {c} on the beach';
(b) which context, among all 35, with the requested class: 'a dog {x}'. The same questions on freshly
rendered world scenes give the evaluator's own ceiling. Writes a contact sheet for looking.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from subjectgen.eval.metrics import load_evaluators, zero_shot_predictions
from subjectgen.models import load_model
from subjectgen.sampling import generate, make_grid
from subjectgen.world.catalog import DREAMBENCH_CLASSES, EDITS, OUTFITS, SCENES, caption, contexts_for

ALL_CONTEXTS = SCENES + OUTFITS + EDITS


def requests(n: int) -> list[tuple[str, str, int]]:
    return [(c, x, k) for c in DREAMBENCH_CLASSES for x in contexts_for(c) for k in range(n)]


def accuracy(evaluators, images, asked) -> dict:
    class_pick = zero_shot_predictions(evaluators, images, [[caption(c, x) for c in DREAMBENCH_CLASSES]
                                                            for c, x, _ in asked])
    context_pick = zero_shot_predictions(evaluators, images, [[caption(c, y) for y in ALL_CONTEXTS]
                                                              for c, x, _ in asked])
    n = len(asked)
    return {"class": sum(DREAMBENCH_CLASSES[p] == c for p, (c, _, _) in zip(class_pick, asked)) / n,
            "context": sum(ALL_CONTEXTS[p] == x for p, (_, x, _) in zip(context_pick, asked)) / n, "images": n}


def rendered(asked):
    """Ground-truth scenes of training instances, with seeds neither model trained on."""
    from subjectgen.world.catalog import training_instances
    from subjectgen.world.scene import render_scene

    instances = training_instances()
    return [render_scene(instances[c][k % len(instances[c])], x, 9000 + k) for c, x, k in asked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("-n", type=int, default=2, help="images per (class, context)")
    parser.add_argument("--sheet", default="docs/images/base_fidelity.png")
    args = parser.parse_args()
    components, evaluators = load_model(args.model), load_evaluators("builtin", "builtin")
    asked = requests(args.n)
    started = time.perf_counter()
    images = generate(components, [caption(c, x) for c, x, _ in asked], [k for *_, k in asked], 25, 7.5,
                      batch_size=32)
    seconds = time.perf_counter() - started
    generated, truth = accuracy(evaluators, images, asked), accuracy(evaluators, rendered(asked), asked)
    firsts = [img for img, (c, x, k) in zip(images, asked) if k == 0 and x in SCENES[:8] + EDITS[:2]]
    Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
    make_grid(firsts, 10).save(args.sheet)
    print(json.dumps({"generated": generated, "rendered": truth, "generate_seconds": round(seconds, 1)}))
    print(f"\nZero-shot accuracy of the built-in eval CLIP, {generated['images']} base-model images "
          f"({args.n} per class prompt; 15 classes x their contexts), generated in {seconds:.0f} s:\n")
    print("| images | class (of 15) | context (of 35) |\n|---|---|---|")
    print(f"| base model, class prompts | {generated['class']:.1%} | {generated['context']:.1%} |")
    print(f"| rendered world scenes (the evaluator's ceiling) | {truth['class']:.1%} | {truth['context']:.1%} |")
    print(f"\nTargets: class ≥ 60 %, context ≥ 50 %. Contact sheet: `{args.sheet}` (rows: classes; columns: "
          "8 scenes, red, purple).")


if __name__ == "__main__":
    main()
