"""A contact sheet of a bench folder, to look at the images behind its numbers.

One row per subject: its first photo, then for each chosen prompt the first image of every method (baseline,
perfect, then the methods), in that order. `python benchmarks/sheet.py BENCH_DIR --prompts 0,2,12 --out x.png`.
`compare` puts columns of several bench folders on the same subjects side by side (benchmarks/fair.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

CELL = 64


def sheet(folder: Path, prompts: list[int], subjects: list[str] | None, scale: int) -> Image.Image:
    """One bench folder: its baseline, perfect and methods side by side."""
    results = json.loads((folder / "results.json").read_text())
    return compare([(m[:8], folder, m) for m in results["pairs"] if m != "oracle"], prompts, subjects, scale)


def compare(columns: list[tuple[str, Path, str]], prompts: list[int], subjects: list[str] | None,
            scale: int) -> Image.Image:
    """Columns (label, bench folder, method) from one or more bench folders on the same subjects: for each prompt,
    each column's first image; the rows are the first folder's subjects, each after its first photo."""
    pairs = [json.loads((folder / "results.json").read_text())["pairs"][method] for _, folder, method in columns]
    names = subjects or sorted(pairs[0])
    width = 1 + len(prompts) * len(columns)
    canvas = Image.new("RGB", (width * CELL, len(names) * CELL + 14), "white")
    draw = ImageDraw.Draw(canvas)
    for p_index, p in enumerate(prompts):
        for c_index, (label, _, _) in enumerate(columns):
            draw.text(((1 + p_index * len(columns) + c_index) * CELL + 2, 1), f"{label} p{p}", fill="black")
    first = columns[0][1]
    for row, name in enumerate(names):
        photo = sorted((first / "photos" / name).glob("*.png"))[0]
        canvas.paste(Image.open(photo).convert("RGB").resize((CELL, CELL)), (0, 14 + row * CELL))
        for p_index, p in enumerate(prompts):
            for c_index, ((_, folder, _), subject_pairs) in enumerate(zip(columns, pairs)):
                pair = subject_pairs.get(name)
                if pair is None:
                    continue
                image = Image.open(folder / pair["prompts"][p]["files"][0]).convert("RGB").resize((CELL, CELL))
                canvas.paste(image, ((1 + p_index * len(columns) + c_index) * CELL, 14 + row * CELL))
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench")
    parser.add_argument("--prompts", default="0,2", help="prompt indices (the subject's prompt list order)")
    parser.add_argument("--subjects", help="comma-separated subset (default: all)")
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    image = sheet(Path(args.bench), [int(p) for p in args.prompts.split(",")],
                  args.subjects.split(",") if args.subjects else None, args.scale)
    image.save(args.out)
    print(f"{args.out}: {image.width}x{image.height}")


if __name__ == "__main__":
    main()
