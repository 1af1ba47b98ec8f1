"""Two small charts drawn with Pillow (no plotting library needed): scores per method, and the
DINO-against-CLIP-T trade-off (one dot per subject, a ring at each method's mean; where the runs scored eval points,
each method's eval curve and a diamond at its chosen point)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from ..safeio import atomic_save_image

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
W, H, LEFT, BOTTOM, TOP = 560, 360, 56, 48, 24


def _axes(draw: ImageDraw.ImageDraw, lo: float, hi: float, label: str) -> None:
    """The y axis from lo to hi with five ticks, and its label."""
    draw.line([(LEFT, TOP), (LEFT, H - BOTTOM), (W - 10, H - BOTTOM)], fill="black")
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        y = _y(value, lo, hi)
        draw.line([(LEFT - 4, y), (LEFT, y)], fill="black")
        draw.text((4, y - 6), f"{value:.3f}", fill="black")
    draw.text((4, 4), label, fill="black")


def _y(value: float, lo: float, hi: float) -> float:
    return H - BOTTOM - (value - lo) / ((hi - lo) or 1) * (H - BOTTOM - TOP)


def _legend(draw: ImageDraw.ImageDraw, names: list[str]) -> None:
    for i, name in enumerate(names):
        x = W - 150
        draw.rectangle([x, TOP + 14 * i, x + 10, TOP + 14 * i + 10], fill=COLOURS[i % len(COLOURS)])
        draw.text((x + 14, TOP + 14 * i), name, fill="black")


def bar_chart(path: Path, values: dict[str, list[float | None]], groups: list[str]) -> None:
    """Grouped bars: one group per metric, one bar per method, from 0 up or down to any finite score
    (a cosine similarity can be negative); a missing or non-finite score draws no bar."""
    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    finite = [v for vs in values.values() for v in vs if _finite(v)] or [0.0]
    lo, hi = min(0.0, min(finite)) * 1.1, max(0.0, max(finite)) * 1.1
    hi = hi if hi > lo else lo + 1.0
    _axes(draw, lo, hi, "score")
    slot = (W - LEFT - 170) / len(groups)
    width = slot * 0.8 / max(len(values), 1)
    for g, group in enumerate(groups):
        x0 = LEFT + 10 + g * slot
        draw.text((x0, H - BOTTOM + 6), group, fill="black")
        for m, scores in enumerate(values.values()):
            if not _finite(scores[g]):
                continue
            x = x0 + m * width
            top, bottom = sorted((_y(scores[g], lo, hi), _y(0.0, lo, hi)))
            draw.rectangle([x, top, x + width - 2, bottom], fill=COLOURS[m % len(COLOURS)])
    _legend(draw, list(values))
    atomic_save_image(Path(path), image)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def scatter_plot(path: Path, points: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
                 curves: dict[str, list[tuple[float, float]]] | None = None,
                 chosen: dict[str, tuple[float, float]] | None = None, mean_rings: bool = True) -> None:
    """One dot per (x, y) point, coloured by method; a ring marks each method's mean (`mean_rings`). `curves`: a line
    per method through its points in order (an eval curve); `chosen`: a diamond at a method's chosen point."""
    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    points = {m: [(x, y) for x, y in pts if _finite(x) and _finite(y)] for m, pts in points.items()}
    curves = {m: [(x, y) for x, y in pts if _finite(x) and _finite(y)] for m, pts in (curves or {}).items()}
    chosen = {m: xy for m, xy in (chosen or {}).items() if all(map(_finite, xy))}
    every = [xy for pts in [*points.values(), *curves.values()] for xy in pts] + list(chosen.values())
    xs = [x for x, _ in every] or [0.0]
    ys = [y for _, y in every] or [0.0]
    (x_lo, x_hi), (y_lo, y_hi) = _span(xs), _span(ys)
    _axes(draw, y_lo, y_hi, y_label)
    right = W - 170

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / ((x_hi - x_lo) or 1) * (right - LEFT)

    for i in range(5):
        value = x_lo + (x_hi - x_lo) * i / 4
        draw.text((px(value) - 12, H - BOTTOM + 6), f"{value:.3f}", fill="black")
    draw.text((right - 40, H - 18), x_label, fill="black")
    for m, name in enumerate(points):
        colour = COLOURS[m % len(COLOURS)]
        line = [(px(x), _y(y, y_lo, y_hi)) for x, y in curves.get(name, [])]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.rectangle([x - 2, y - 2, x + 2, y + 2], outline=colour)
        if name in chosen:
            x, y = px(chosen[name][0]), _y(chosen[name][1], y_lo, y_hi)
            draw.polygon([(x, y - 7), (x + 7, y), (x, y + 7), (x - 7, y)], fill=colour, outline="black")
    for m, pts in enumerate(points.values()):
        colour = COLOURS[m % len(COLOURS)]
        for x, y in pts:
            draw.ellipse([px(x) - 3, _y(y, y_lo, y_hi) - 3, px(x) + 3, _y(y, y_lo, y_hi) + 3], fill=colour)
        if pts and mean_rings:
            mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            draw.ellipse([px(mx) - 8, _y(my, y_lo, y_hi) - 8, px(mx) + 8, _y(my, y_lo, y_hi) + 8], outline=colour,
                         width=3)
    _legend(draw, list(points))
    atomic_save_image(Path(path), image)


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or 0.05
    return lo - pad, hi + pad
