"""`subjectgen demo`: personalize the built-in model on one EmojiBench subject on the CPU and show the result.

Writes DIR/photos/ (the subject), DIR/run/ (the LoRA run), DIR/base/ and DIR/personalized/ (images),
DIR/grid.png (rows: base model, personalized) and DIR/report.html.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from PIL import Image

from .config import TrainConfig
from .errors import UserError
from .generation import generate_to_folder
from .sampling import make_grid
from .safeio import atomic_save_image, atomic_write_bytes, atomic_write_json
from .subjects import expand_subject
from .training import train

METRICS = ("dino", "clip_i", "clip_t")
PROMPTS = ["a {subject}", "a {subject} on the beach", "a {subject} in the snow", "a red {subject}"]


def run_demo(out: Path, subject: str = "dog", model: str = "builtin", steps: int | None = None,
             progress: bool = True) -> Path:
    """DreamBooth-LoRA on one EmojiBench subject; base-model vs personalized images side by side."""
    from .world.build import EMOJIBENCH, subject_class

    out = Path(out)
    class_noun = subject_class(subject)
    # the settings are checked before anything is touched: a bad flag never costs the previous demo
    cfg = TrainConfig(method="lora", model=model, subject_dir=str(EMOJIBENCH / subject), class_noun=class_noun,
                      out=str(out / "run"), steps=steps)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / "report.html").is_file():
            raise UserError(f"--out {out} is not empty and holds no demo; choose a new folder")
        shutil.rmtree(out)  # a previous demo: replace it
    result = train(cfg, progress=progress)
    shutil.copytree(EMOJIBENCH / subject, out / "photos")
    base_prompts = [expand_subject(p, class_noun) for p in PROMPTS]
    base = generate_to_folder(model, base_prompts, out / "base", n=2)
    mine = generate_to_folder(str(result.run_dir), PROMPTS, out / "personalized", n=2)
    base_rows, mine_rows = [Image.open(p) for p in base.files], [Image.open(p) for p in mine.files]
    atomic_save_image(out / "grid.png", make_grid(base_rows + mine_rows, len(base.files)))
    photos = [Image.open(p) for p in sorted((out / "photos").glob("*.png"))]
    scores = {"base": score_prompts(base_rows, photos, base_prompts, n=2),
              "personalized": score_prompts(mine_rows, photos, base_prompts, n=2)}
    atomic_write_json(out / "scores.json", scores)
    write_report(out, result.manifest, PROMPTS, scores)
    return out


def score_prompts(images: list, photos: list, prompts: list[str], n: int) -> dict:
    """DINO / CLIP-I / CLIP-T (built-in evaluators) per prompt and their mean; CLIP-T uses the class prompt."""
    from .eval.metrics import load_evaluators, score_images

    evaluators = load_evaluators("builtin", "builtin")
    rows = [score_images(evaluators, images[i * n:(i + 1) * n], photos, prompt) for i, prompt in enumerate(prompts)]
    per_prompt = [{"prompt": p, **{m: r[m] for m in METRICS}} for p, r in zip(prompts, rows)]
    return {"mean": {m: sum(r[m] for r in rows) / len(rows) for m in METRICS}, "prompts": per_prompt}


def write_report(out: Path, manifest: dict, prompts: list[str], scores: dict) -> None:
    def imgs(folder: str) -> str:
        return "".join(f'<img src="{folder}/{p.name}" width="128">' for p in sorted((out / folder).glob("*.png"))
                       if p.name != "grid.png")

    def table() -> str:
        head = "<tr><th></th>" + "".join(f"<th>{h}</th>" for h in ("DINO", "CLIP-I", "CLIP-T")) + "</tr>"
        rows = "".join(f"<tr><td>{name}</td>" + "".join(f"<td>{s['mean'][m]:.3f}</td>" for m in METRICS) + "</tr>"
                       for name, s in scores.items())
        return f"<table border=1 style='border-collapse:collapse'>{head}{rows}</table>"

    body = [f"<h1>subjectgen demo</h1><p>method: LoRA on <code>{html.escape(manifest['model'])}</code>, "
            f"subject phrase <code>{html.escape(manifest['subject'])}</code>, "
            f"{manifest['settings']['steps']} steps in {manifest['metrics']['train_seconds']:.0f} s</p>",
            f"<h2>Subject photos</h2>{imgs('photos')}",
            "<h2>Scores</h2><p>Built-in evaluators, DreamBench's protocol: DINO and CLIP-I against every photo, "
            f"CLIP-T against the prompt without the identifier.</p>{table()}",
            f"<h2>Base model, class prompt</h2><p>{html.escape(', '.join(prompts))}</p>{imgs('base')}",
            f"<h2>Personalized</h2>{imgs('personalized')}"]
    atomic_write_bytes(out / "report.html", ("<!doctype html><meta charset='utf-8'>" + "".join(body)).encode())
