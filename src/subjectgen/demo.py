"""`subjectgen demo`: personalize the built-in model on one subject on the CPU and show the result.

Writes DIR/photos/ (the subject), DIR/run/ (the LoRA run), DIR/base/ and DIR/personalized/ (images),
DIR/grid.png (rows: base model, personalized) and DIR/report.html.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from .config import TrainConfig
from .generation import generate_to_folder
from .sampling import make_grid
from .safeio import atomic_save_image, atomic_write_bytes
from .training import train

PROMPTS = ["a {subject} on the beach", "a {subject} in the snow", "a {subject} in the jungle"]


def draw_demo_subject(folder: Path, count: int = 4) -> Path:
    """A stand-in subject (a red ball with a yellow star) at a few positions and sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (64, 64), (235, 235, 235))
        draw = ImageDraw.Draw(image)
        r, cx, cy = 18 + 2 * (i % 2), 30 + 3 * i - 4, 32 - 2 * i + 3
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(205, 40, 40))
        draw.regular_polygon((cx, cy, r // 2), 5, fill=(250, 220, 40))
        image.save(folder / f"{i:02d}.png")
    return folder


def run_demo(out: Path, model: str = "builtin", steps: int | None = None, progress: bool = True) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    photos = draw_demo_subject(out / "photos")
    cfg = TrainConfig(method="lora", model=model, subject_dir=str(photos), class_noun="toy", out=str(out / "run"),
                      steps=steps)
    result = train(cfg, progress=progress)
    base_prompts = [p.replace("{subject}", "toy") for p in PROMPTS]
    base = generate_to_folder(model, base_prompts, out / "base", n=2)
    mine = generate_to_folder(str(result.run_dir), PROMPTS, out / "personalized", n=2)
    rows = [Image.open(p) for p in base.files] + [Image.open(p) for p in mine.files]
    atomic_save_image(out / "grid.png", make_grid(rows, len(base.files)))
    write_report(out, result.manifest, PROMPTS)
    return out


def write_report(out: Path, manifest: dict, prompts: list[str]) -> None:
    def imgs(folder: str) -> str:
        return "".join(f'<img src="{folder}/{p.name}" width="128">' for p in sorted((out / folder).glob("*.png"))
                       if p.name != "grid.png")

    body = [f"<h1>subjectgen demo</h1><p>method: LoRA on <code>{html.escape(manifest['model'])}</code>, "
            f"subject phrase <code>{html.escape(manifest['subject'])}</code>, "
            f"{manifest['settings']['steps']} steps in {manifest['metrics']['train_seconds']:.0f} s</p>",
            f"<h2>Subject photos</h2>{imgs('photos')}",
            f"<h2>Base model, class prompt</h2><p>{html.escape(', '.join(prompts))}</p>{imgs('base')}",
            f"<h2>Personalized</h2>{imgs('personalized')}"]
    atomic_write_bytes(out / "report.html", ("<!doctype html><meta charset='utf-8'>" + "".join(body)).encode())
