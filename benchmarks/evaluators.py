"""Do the built-in evaluators generalize? The same tests on instances they trained on and on held-out ones.

Held-out instances: fresh draws from the world's reserved region (`catalog.held_out_set`, seed 1000), which no
evaluator ever saw; training instances: composed instances from the evaluators' own training list. Both: the
same classes (DreamBench's 15), the same number per class, rendered with seeds no training set used (5000+).

- Instance retrieval (DINO): each instance's photo against another photo of every instance of its class, taken
  in another of its places (and, for scale, in the same place), at another scale and position; top-1 = its own
  instance is the nearest. Chance: 1 / instances per class.
- Zero-shot class (CLIP): the instance on a plain background and in a scene, among the world's 35 class captions.
- Zero-shot context (CLIP): the instance in one of its class's contexts, among all of them ("a dog on the beach",
  "a dog wearing a santa hat", "a red dog", ...).

`--evaluators DIR` (default: the shipped ones) takes any folder with clip/ and dino/, e.g. an older build.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch.nn.functional as F

PER_CLASS = 8
EVAL_SEED = 5000


def instance_sets(per_class: int) -> dict[str, list[tuple[str, object]]]:
    from subjectgen.world.catalog import DREAMBENCH_CLASSES, held_out_set, training_instances

    held = held_out_set(per_class * len(DREAMBENCH_CLASSES), seed=1000)
    train, rng = training_instances(), random.Random("evaluator-benchmark")
    trained = [(noun, inst) for noun in DREAMBENCH_CLASSES
               for inst in rng.sample([i for i in train[noun] if i.attributes()], per_class)]
    return {"held-out (reserved region)": list(held.values()), "training instances": trained}


def retrieval(ev, instances: list[tuple[str, object]], same_place: bool) -> float:
    """Photo k and photo k+1 (another place: every subject has 2-3) or k+6 (the same place, another shot)."""
    from subjectgen.world.scene import render_photo

    other = EVAL_SEED + (6 if same_place else 1)
    queries = F.normalize(ev.dino_embed([render_photo(i, EVAL_SEED)[0] for _, i in instances]), dim=-1)
    gallery = F.normalize(ev.dino_embed([render_photo(i, other)[0] for _, i in instances]), dim=-1)
    hits = 0
    for q, (noun, _) in enumerate(instances):
        same = [g for g, (other, _) in enumerate(instances) if other == noun]
        best = max(same, key=lambda g: float(queries[q] @ gallery[g]))
        hits += best == q
    return hits / len(instances)


def zero_shot(ev, instances: list[tuple[str, object]]) -> tuple[float, float]:
    from subjectgen.eval.metrics import zero_shot_predictions
    from subjectgen.world.catalog import CLASSES, SCENES, caption, contexts_for
    from subjectgen.world.scene import render_scene

    rng = random.Random("zero-shot")
    class_images, truth = [], []
    for noun, inst in instances:
        for context in (None, rng.choice(SCENES)):
            class_images.append(render_scene(inst, context, EVAL_SEED))
            truth.append(list(CLASSES).index(noun))
    picks = zero_shot_predictions(ev, class_images, [[f"a {c}" for c in CLASSES]] * len(class_images))
    class_accuracy = sum(p == t for p, t in zip(picks, truth)) / len(truth)
    context_images, candidates, truth = [], [], []
    for noun, inst in instances:
        contexts = contexts_for(noun)
        k = rng.randrange(len(contexts))
        context_images.append(render_scene(inst, contexts[k], EVAL_SEED + 2))
        candidates.append([caption(noun, c) for c in contexts])
        truth.append(k)
    picks = zero_shot_predictions(ev, context_images, candidates)
    return class_accuracy, sum(p == t for p, t in zip(picks, truth)) / len(truth)


PREVIOUS = Path("benchmarks/out/v3/evaluators-previous")  # the evaluators shipped before the last retrain, if kept


def main() -> None:
    from subjectgen.assets import EVALUATORS
    from subjectgen.eval.metrics import load_evaluators

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluators", action="append", help="folder with clip/ and dino/ (repeatable; default: the "
                        f"shipped ones, and {PREVIOUS} when it exists)")
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    args = parser.parse_args()
    folders = args.evaluators or [str(EVALUATORS)] + ([str(PREVIOUS)] if PREVIOUS.is_dir() else [])
    sets = instance_sets(args.per_class)
    print(f"{args.per_class} instances per DreamBench class (15 classes), rendered with seeds no training set used; "
          f"the shipped evaluators (`{EVALUATORS.name}`) first:\n")
    print(f"| evaluators | instances | DINO instance retrieval, top-1, photos in another place (chance "
          f"{1 / args.per_class:.1%}) | the same, photos in the same place | CLIP zero-shot class (of 35) | "
          "CLIP zero-shot context (of 25–35) |")
    print("|---|---|---|---|---|---|")
    for folder in folders:
        ev = load_evaluators(str(Path(folder) / "dino"), str(Path(folder) / "clip"))
        record = json.loads((Path(folder) / "training.json").read_text())["config"]
        name = "DINO with instance views + InfoNCE" if record.get("dino_instance_nce") else \
            "DINO with instance views" if record.get("dino_instance_views") else "DINO on one image's crops"
        for label, instances in sets.items():
            across, same = retrieval(ev, instances, False), retrieval(ev, instances, True)
            cls, ctx = zero_shot(ev, instances)
            print(f"| {Path(folder).name}: {name} | {label} | {across:.1%} | {same:.1%} | {cls:.1%} | {ctx:.1%} |")


if __name__ == "__main__":
    main()
