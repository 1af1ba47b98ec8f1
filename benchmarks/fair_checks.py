"""The fair comparison's checks on the built-in model: what DreamBooth's PRES and DIV add to a bench pair under the
default protocol, and how well the built-in captioner (`train --captions auto`) names where EmojiBench's photos
were taken. `python benchmarks/fair_checks.py`; `benchmarks/run_all.py` puts it in docs/RESULTS.md.

Costs are this process's CPU seconds at one thread (time.process_time), not wall clock: the machine is shared, and
what is asked is a share (the checks' work against the pair's own sampling and scoring), which a busy neighbour
would distort in wall-clock time but not in CPU time.
"""

from __future__ import annotations

import time

import torch

SUBJECT = "dog"  # one EmojiBench subject: 25 prompts (the live list), its 4 photos


def cpu_seconds(work) -> tuple[float, object]:
    started = time.process_time()
    result = work()
    return time.process_time() - started, result


def pair_costs() -> None:
    """One bench pair of the base model (the baseline) sampled and scored as `bench` does it by default."""
    from subjectgen.config import BenchConfig, default_sample_steps
    from subjectgen.eval.bench import PROMPTS_PER_BATCH, class_prompt
    from subjectgen.eval.metrics import load_evaluators, prior_preservation, score_images
    from subjectgen.eval.prompts import read_benchmark, resolve_bench
    from subjectgen.models import load_model
    from subjectgen.photos import open_photo, photo_paths
    from subjectgen.sampling import generate
    from subjectgen.subjects import expand_subject

    protocol, bench = BenchConfig("emoji", ""), read_benchmark(resolve_bench("emoji"))
    k, pres, noun = protocol.images_per_prompt, protocol.pres_images, bench.classes[SUBJECT]
    components, ev = load_model("builtin"), load_evaluators("builtin", "builtin")
    steps, guidance = default_sample_steps(components.resolution), components.backbone.default_guidance
    prompts = [expand_subject(t, noun) for t in bench.prompts_for(SUBJECT)]
    photos = [open_photo(p) for p in photo_paths(bench.root / SUBJECT)]
    sampling, images = 0.0, []
    for start in range(0, len(prompts), PROMPTS_PER_BATCH):  # the bench's batches: 8 prompts x K images
        chunk = [p for p in prompts[start:start + PROMPTS_PER_BATCH] for _ in range(k)]
        seconds, made = cpu_seconds(lambda: generate(components, chunk, [j % k for j in range(len(chunk))], steps,
                                                     guidance, batch_size=len(chunk)))
        sampling, images = sampling + seconds, images + made
    class_sampling, class_images = cpu_seconds(lambda: generate(components, [class_prompt(noun)] * pres,
                                                                list(range(pres)), steps, guidance, batch_size=pres))
    scoring, scores = cpu_seconds(lambda: [score_images(ev, images[i * k:(i + 1) * k], photos, p)
                                           for i, p in enumerate(prompts)])
    class_scoring, _ = cpu_seconds(lambda: prior_preservation(ev, class_images, photos))
    print(f"PRES and DIV in one bench pair of the default protocol (EmojiBench's {SUBJECT}: {len(prompts)} prompts x "
          f"{k} images, {pres} PRES images of '{class_prompt(noun)}'; the built-in model, {steps} sampler steps, "
          "CPU seconds at one thread):\n")
    print("| work | the pair's own | PRES adds | share |\n|---|---|---|---|")
    print(f"| sampling | {sampling:.1f} s ({len(images)} images) | {class_sampling:.1f} s ({pres} images) | "
          f"{class_sampling / sampling:+.1%} |")
    print(f"| scoring (DINO, CLIP-I, CLIP-T) | {scoring:.1f} s | {class_scoring:.2f} s | "
          f"{class_scoring / scoring:+.1%} |")
    print(f"| all | {sampling + scoring:.1f} s | {class_sampling + class_scoring:.1f} s | "
          f"{(class_sampling + class_scoring) / (sampling + scoring):+.1%} |")
    print(f"\nDIV needs no model call: each prompt's DINO embeddings are computed for its DINO score already, and DIV "
          f"is their pairwise cosine ({len(scores)} prompts here, DIV {sum(s['div'] for s in scores) / len(scores):.3f}"
          " for the base model).\n")


def captioner_accuracy() -> None:
    """The built-in captioner on every EmojiBench photo, whose place the world knows (world/scene.py)."""
    from collections import Counter

    from subjectgen.captions import SceneInterrogator
    from subjectgen.models import load_model
    from subjectgen.photos import open_photo, photo_paths
    from subjectgen.world.build import EMOJIBENCH, bench_instances
    from subjectgen.world.catalog import caption
    from subjectgen.world.scene import photo_settings, scene_words

    components, misses, total, seconds = load_model("builtin"), Counter(), 0, 0.0
    for name, (noun, instance) in bench_instances(EMOJIBENCH).items():
        paths = photo_paths(EMOJIBENCH / name)
        places = photo_settings(instance)  # photo k is taken at places[k % len(places)]
        spent, got = cpu_seconds(lambda: SceneInterrogator(components, noun)([open_photo(p) for p in paths]))
        seconds, total = seconds + spent, total + len(paths)
        for k, text in enumerate(got):
            want = caption("{subject}", places[k % len(places)])
            if text != want:
                misses[want.removeprefix("a {subject} "), text.removeprefix("a {subject} ")] += 1
    print(f"The built-in captioner (`train --captions auto` on the built-in model: of the world's {len(scene_words())} "
          "scene words, the one the generator side's image encoder finds closest) on EmojiBench's photos, whose "
          f"places the world knows: **{total - sum(misses.values())} of {total}** named right, "
          f"{seconds / total * 1000:.0f} ms of CPU per photo (its encoder loaded once per subject).\n")
    if misses:
        print("| the photo's place | captioned as | photos |\n|---|---|---|")
        for (want, got), n in misses.most_common():
            print(f"| {want} | {got} | {n} |")
        print()


def main() -> None:
    torch.set_num_threads(1)
    pair_costs()
    captioner_accuracy()


if __name__ == "__main__":
    main()
