"""What DreamBench's live-subject and property prompts change on the object itself.

Outfits draw an accessory relative to the object's box (x, y, w, h) on the canvas; edits return a
changed object image (colour, shine, wetness, cube shape).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from .render import set_hue, stamp


def hat(canvas, box, color, brim=True):
    x, y, w, h = box
    draw = ImageDraw.Draw(canvas)
    top = max(0, y - h // 4)
    draw.rectangle((x + w * 0.3, top, x + w * 0.7, y + h * 0.08), fill=color)
    if brim:
        draw.rectangle((x + w * 0.15, y + h * 0.04, x + w * 0.85, y + h * 0.12), fill=color)


def red_hat(canvas, box, rng):
    hat(canvas, box, (215, 30, 35))


def santa_hat(canvas, box, rng):
    x, y, w, h = box
    draw = ImageDraw.Draw(canvas)
    draw.polygon([(x + w * 0.2, y + h * 0.12), (x + w * 0.8, y + h * 0.12), (x + w * 0.62, max(0, y - h * 0.3))],
                 fill=(210, 25, 30))
    draw.rectangle((x + w * 0.15, y + h * 0.08, x + w * 0.85, y + h * 0.16), fill=(250, 250, 250))
    cx, cy = x + w * 0.62, max(2, y - h * 0.3)
    draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=(250, 250, 250))


def rainbow_scarf(canvas, box, rng):
    x, y, w, h = box
    draw = ImageDraw.Draw(canvas)
    colors = [(230, 40, 40), (245, 140, 30), (245, 225, 40), (60, 180, 70), (50, 110, 230), (140, 60, 190)]
    band = max(1, h // 24)
    top = y + h * 0.55
    for i, color in enumerate(colors):
        draw.rectangle((x + w * 0.1, top + i * band, x + w * 0.9, top + (i + 1) * band), fill=color)


def top_hat_monocle(canvas, box, rng):
    x, y, w, h = box
    hat(canvas, box, (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = x + w * 0.62, y + h * 0.38, max(3, w * 0.12)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(230, 190, 40), width=2)


def chef_outfit(canvas, box, rng):
    x, y, w, h = box
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((x + w * 0.2, max(0, y - h * 0.3), x + w * 0.8, y + h * 0.1), fill=(252, 252, 252), outline=(200, 200, 200))
    draw.rectangle((x + w * 0.25, y + h * 0.6, x + w * 0.75, y + h), fill=(252, 252, 252), outline=(200, 200, 200))


def firefighter_outfit(canvas, box, rng):
    x, y, w, h = box
    draw = ImageDraw.Draw(canvas)
    draw.pieslice((x + w * 0.15, max(0, y - h * 0.22), x + w * 0.85, y + h * 0.3), 180, 360, fill=(200, 30, 20))
    draw.rectangle((x + w * 0.25, y + h * 0.6, x + w * 0.75, y + h), fill=(200, 150, 30))
    draw.line((x + w * 0.25, y + h * 0.8, x + w * 0.75, y + h * 0.8), fill=(240, 240, 120), width=2)


def police_outfit(canvas, box, rng):
    x, y, w, h = box
    hat(canvas, box, (25, 45, 120))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x + w * 0.25, y + h * 0.6, x + w * 0.75, y + h), fill=(30, 60, 150))
    draw.ellipse((x + w * 0.55, y + h * 0.66, x + w * 0.65, y + h * 0.76), fill=(240, 200, 40))


def pink_glasses(canvas, box, rng):
    x, y, w, h = box
    draw = ImageDraw.Draw(canvas)
    r, cy = max(3, w * 0.12), y + h * 0.38
    for cx in (x + w * 0.36, x + w * 0.64):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250, 140, 200), outline=(220, 60, 150), width=1)


def yellow_shirt(canvas, box, rng):
    x, y, w, h = box
    ImageDraw.Draw(canvas).rectangle((x + w * 0.2, y + h * 0.58, x + w * 0.8, y + h), fill=(250, 215, 30))


def wizard_outfit(canvas, box, rng):
    x, y, w, h = box
    draw = ImageDraw.Draw(canvas)
    draw.polygon([(x + w * 0.2, y + h * 0.12), (x + w * 0.8, y + h * 0.12), (x + w * 0.5, max(0, y - h * 0.4))],
                 fill=(110, 40, 170))
    draw.rectangle((x + w * 0.2, y + h * 0.6, x + w * 0.8, y + h), fill=(120, 50, 180))
    stamp(canvas, "star", (int(x + w * 0.5), int(max(4, y - h * 0.1)), 6))


OUTFIT_PAINTERS = {
    "wearing a red hat": red_hat, "wearing a santa hat": santa_hat, "wearing a rainbow scarf": rainbow_scarf,
    "wearing a black top hat and a monocle": top_hat_monocle, "in a chef outfit": chef_outfit,
    "in a firefighter outfit": firefighter_outfit, "in a police outfit": police_outfit,
    "wearing pink glasses": pink_glasses, "wearing a yellow shirt": yellow_shirt,
    "in a purple wizard outfit": wizard_outfit,
}


# --- edits of the object ---------------------------------------------------------------------------
def spots(image: Image.Image, rng: random.Random, count: int, xs: tuple, ys: tuple, radius: float, fill,
          stretch: float = 1.0) -> None:
    """Random round marks (highlights, drops) inside the object's box; `stretch` makes them drop-shaped."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(count):
        cx, cy, r = rng.uniform(*xs) * w, rng.uniform(*ys) * h, max(2, w * radius)
        draw.ellipse((cx - r, cy - r * stretch, cx + r, cy + r), fill=fill)


def shiny(image: Image.Image, rng: random.Random) -> Image.Image:
    out = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(1.15)).enhance(1.4)
    spots(out, rng, 3, (0.25, 0.75), (0.2, 0.6), 0.06, (255, 255, 255, 235))
    out.putalpha(image.getchannel("A"))
    return out


def wet(image: Image.Image, rng: random.Random) -> Image.Image:
    out = ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(0.8)).enhance(1.3)
    spots(out, rng, 6, (0.15, 0.85), (0.1, 0.9), 0.05, (90, 170, 255, 255), stretch=1.4)
    out.putalpha(image.getchannel("A"))
    return out


def cube_shaped(image: Image.Image, rng: random.Random) -> Image.Image:
    """The object's texture on the front face of a cube, with two shaded faces."""
    side = max(image.size)
    front = int(side * 0.75)
    depth = side - front
    rgb = Image.new("RGBA", image.size, (0, 0, 0, 0))
    rgb.alpha_composite(image)
    mean = tuple(int(v) for v in np.asarray(image.convert("RGB"))[np.asarray(image.getchannel("A")) > 128].mean(0)) \
        if (np.asarray(image.getchannel("A")) > 128).any() else (128, 128, 128)
    out = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(out)
    draw.polygon([(0, depth), (depth, 0), (side, 0), (front, depth)], fill=tuple(min(255, c + 50) for c in mean))
    draw.polygon([(front, depth), (side, 0), (side, front), (front, side)], fill=tuple(max(0, c - 50) for c in mean))
    face = Image.new("RGBA", (front, front), mean + (255,))
    face.alpha_composite(image.resize((front, front)))
    out.alpha_composite(face, (0, depth))
    return out


EDIT_FUNCTIONS = {
    "red": lambda image, rng: set_hue(image, 0), "purple": lambda image, rng: set_hue(image, 280),
    "shiny": shiny, "wet": wet, "cube shaped": cube_shaped,
}
