"""`subjectgen demo`: personalize the built-in model on one EmojiBench subject on the CPU and show the result.

Writes DIR/photos/ (the subject), DIR/run/ (the LoRA run), DIR/base/ and DIR/personalized/ (images),
DIR/grid.png (rows: base model, personalized) and DIR/report.html.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from PIL import Image

from .assets import ASSETS
from .config import TrainConfig
from .generation import generate_to_folder
from .sampling import make_grid
from .safeio import OUTPUT_MARK, atomic_save_image, check_output_dir, atomic_write_bytes, atomic_write_json
from .subjects import expand_subject
from .training import train

METRICS = ("dino", "clip_i", "clip_t")
PROMPT_SHARE = 0.9  # a prompt is followed when its CLIP-T keeps this share of the base model's (the bench's budget)
PROMPTS = ["a {subject}", "a {subject} on the beach", "a {subject} in the snow", "a red {subject}"]
DEMO = ASSETS / "demo"  # demo.json and the demo subject's photos: benchmarks/demo_choice.py --ship writes them


def demo_subject(subject: str | None) -> tuple[Path, str, list[str], str, str]:
    """(photo folder, class noun, prompts, what it is, how it was chosen) of the shipped demo subject (None:
    chosen with its prompts on the validation subjects) or of an EmojiBench subject by name."""
    from .world.build import EMOJIBENCH, subject_class

    if subject is None:
        spec = json.loads((DEMO / "demo.json").read_text())
        what = f"the sample subject '{spec['subject']}' (a {spec['class']})"
        return DEMO / spec["subject"], spec["class"], spec["prompts"], what, spec["note"]
    return EMOJIBENCH / subject, subject_class(subject), PROMPTS, f"EmojiBench '{subject}'", "named by --subject"


def run_demo(out: Path, subject: str | None = None, model: str = "builtin", steps: int | None = None,
             progress: bool = True) -> Path:
    """DreamBooth-LoRA on the demo subject (or an EmojiBench one); base-model vs personalized images side by
    side, same prompts and seeds."""
    out = Path(out)
    photos_dir, class_noun, prompts, what, chosen = demo_subject(subject)
    # the settings are checked before anything is touched: a bad flag never costs the previous demo
    cfg = TrainConfig(method="lora", model=model, subject_dir=str(photos_dir), class_noun=class_noun,
                      out=str(out / "run"), steps=steps)
    check_output_dir(out, "report.html", overwrite=True)  # a previous demo is replaced, nothing else
    if out.exists():
        shutil.rmtree(out)
    atomic_write_bytes(out / OUTPUT_MARK, b"written by subjectgen demo\n")  # a demo cut short is still ours
    def phase(text: str) -> None:
        if progress:
            print(f"demo: {text}", file=sys.stderr, flush=True)

    phase(f"1/4 training LoRA on {what}")
    result = train(cfg, progress=progress)
    shutil.copytree(photos_dir, out / "photos", ignore=shutil.ignore_patterns("masks"))
    base_prompts = [expand_subject(p, class_noun) for p in prompts]
    phase("2/4 the base model's images (class prompts)")
    base = generate_to_folder(model, base_prompts, out / "base", n=2, progress=progress)
    phase("3/4 the personalized images (same prompts and seeds)")
    mine = generate_to_folder(str(result.run_dir), prompts, out / "personalized", n=2, progress=progress)
    phase("4/4 scoring with the built-in evaluators")
    base_rows, mine_rows = [Image.open(p) for p in base.files], [Image.open(p) for p in mine.files]
    atomic_save_image(out / "grid.png", make_grid(base_rows + mine_rows, len(base.files)))
    photos = [Image.open(p) for p in sorted((out / "photos").glob("*.png"))]
    scores = {"base": score_prompts(base_rows, photos, base_prompts, n=2),
              "personalized": score_prompts(mine_rows, photos, base_prompts, n=2)}
    lines = summary(result.manifest, prompts, scores, what)
    atomic_write_json(out / "scores.json", {**scores, "summary": lines})
    write_report(out, result.manifest, prompts, scores, what, chosen, plain=lines)
    return out


def score_prompts(images: list, photos: list, prompts: list[str], n: int) -> dict:
    """DINO / CLIP-I / CLIP-T (built-in evaluators) per prompt and their mean; CLIP-T uses the class prompt."""
    from .eval.metrics import load_evaluators, score_images

    evaluators = load_evaluators("builtin", "builtin")
    rows = [score_images(evaluators, images[i * n:(i + 1) * n], photos, prompt) for i, prompt in enumerate(prompts)]
    per_prompt = [{"prompt": p, **{m: r[m] for m in METRICS}} for p, r in zip(prompts, rows)]
    return {"mean": {m: sum(r[m] for r in rows) / len(rows) for m in METRICS}, "prompts": per_prompt}


def summary(manifest: dict, prompts: list[str], scores: dict, what: str) -> list[str]:
    """The report's first lines, in plain words: what the demo did, what to look at, and what its own scores say
    happened, worse included."""
    base, mine = scores["base"]["mean"], scores["personalized"]["mean"]
    phrase, noun = manifest["subject"], manifest["class"]
    did = (f"The demo trained LoRA for {trained(manifest)} on the photos of {what}, then drew "
           f"{len(prompts)} prompts with the same seeds twice: with the base model ('a {noun}') and with the "
           f"personalized one ('{expand_subject('a {subject}', phrase)}'{sampled(manifest)}). Look down each row: the "
           f"personalized images should show this {noun}, as in its photos, in the prompt's scene.")
    return [did, likeness(base, mine), prompt_following(prompts, scores, phrase)]


def trained(manifest: dict) -> str:
    """How long the run trained and which step it kept (with eval points, the step the rule chose, and why)."""
    from .training.evaluation import CLIP_T_SHARE

    steps, evaluation = manifest["settings"]["steps"], manifest.get("evaluation")
    if not evaluation or evaluation["select"] != "best":
        return f"{steps} steps"
    kept = next(p for p in evaluation["curve"] if p["step"] == evaluation["chosen_step"])
    why = (f"the most likeness that keeps {CLIP_T_SHARE:.0%} of the base model's prompt-following"
           if kept["clip_t"] >= CLIP_T_SHARE * evaluation["base"]["clip_t"] else
           f"the one that kept the most of the base model's prompt-following (none kept {CLIP_T_SHARE:.0%} of it)")
    return f"{steps} steps and kept step {kept['step']}, {why} (docs/BENCHMARK.md)"


def sampled(manifest: dict) -> str:
    """The run's own --subject-start, in words: the first steps draw the scene without the subject."""
    start = manifest["settings"].get("subject_start") or 0
    return f", its first {start:.0%} of the steps drawn without the subject so the scene comes first" if start else ""


def likeness(base: dict, mine: dict) -> str:
    scores = (f"DINO {mine['dino']:.3f} against {base['dino']:.3f}, "
              f"CLIP-I {mine['clip_i']:.3f} against {base['clip_i']:.3f}")
    if mine["dino"] > base["dino"] and mine["clip_i"] > base["clip_i"]:
        return f"Likeness: the personalized images look more like the photos than the base model's do ({scores})."
    if mine["dino"] <= base["dino"] and mine["clip_i"] <= base["clip_i"]:
        return (f"Likeness: the personalized images do not look more like the photos than the base model's generic "
                f"ones ({scores}): the subject was not learned here.")
    return (f"Likeness: mixed — one evaluator finds the personalized images closer to the photos, the other not "
            f"({scores}).")


def prompt_following(prompts: list[str], scores: dict, phrase: str) -> str:
    pairs = zip(prompts, scores["base"]["prompts"], scores["personalized"]["prompts"])
    followed = [expand_subject(t, phrase) for t, b, m in pairs if m["clip_t"] >= PROMPT_SHARE * b["clip_t"]]
    base, mine = scores["base"]["mean"]["clip_t"], scores["personalized"]["mean"]["clip_t"]
    text = (f"Prompts: the personalized images follow {len(followed)} of {len(prompts)} prompts as well as the base "
            f"model's (CLIP-T at {PROMPT_SHARE:.0%} of its or more{': ' + ', '.join(followed) if followed else ''}); "
            f"CLIP-T {mine:.3f} against {base:.3f} on the whole.")
    if mine < PROMPT_SHARE * base:
        text += (" The scenes the prompts ask for are weaker or missing in the personalized images: fewer --steps, a "
                 "lower --lr, per-photo captions or --masked-loss help (docs/METHODS.md).")
    return text


def write_report(out: Path, manifest: dict, prompts: list[str], scores: dict, what: str, chosen: str,
                 plain: list[str]) -> None:
    """The photos first, the scores (which way is better), then per prompt the base model's images beside the
    personalized ones, same seeds, each labelled with its prompt and seed."""
    from .eval.html import esc, figure, metric_table, page, strip

    files = sorted((out / "photos").glob("*.png"))
    photos = [figure(f"photos/{p.name}", f"photo {k + 1}") for k, p in enumerate(files)]
    baseline = "baseline (base model, class prompt)"
    rows = {baseline: scores["base"]["mean"], "personalized": scores["personalized"]["mean"]}
    lines = []
    for i, template in enumerate(prompts):
        shown = expand_subject(template, manifest["subject"])
        figures = [figure(f"{folder}/p{i:02d}-{k}.png", f"{label} · seed {k}") for folder, label in
                   (("base", "base"), ("personalized", "personalized")) for k in range(2)]
        per = "<br>".join(f"{label}: DINO {scores[key]['prompts'][i]['dino']:.3f}, CLIP-T "
                          f"{scores[key]['prompts'][i]['clip_t']:.3f}" for key, label in
                          (("base", "base"), ("personalized", "personalized")))
        lines.append(f"<div class='row'><div class='label'><b>{esc(shown)}</b><br>{per}</div>{strip(figures)}</div>")
    parts = [f"<h1>subjectgen demo</h1><p class='lede'>{esc(what)} · LoRA on <code>{esc(manifest['model'])}</code> · "
             f"subject phrase <code>{esc(manifest['subject'])}</code> · {manifest['settings']['steps']} steps in "
             f"{manifest['metrics']['train_seconds']:.0f} s</p>",
             "<div class='card'><h2>What happened</h2>" + "".join(f"<p>{esc(line)}</p>" for line in plain) + "</div>",
             f"<div class='card'><h2>The subject's photos</h2>{strip(photos)}<p class='note'>How this subject "
             f"was chosen: {esc(chosen)}.</p></div>",
             f"<div class='card'><h2>Scores (built-in evaluators, DreamBench's protocol)</h2>"
             f"{metric_table(rows, references=(baseline,), baseline=baseline)}</div>",
             "<div class='card'><h2>Base model against personalized, same prompts and seeds</h2><p class='note'>The "
             "base model gets the class prompt; the personalized one the same prompt with the subject phrase.</p>"
             f"{''.join(lines)}</div>"]
    atomic_write_bytes(out / "report.html", page("subjectgen demo", parts).encode())
