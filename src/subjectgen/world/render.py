"""A deterministic renderer of 64x64 scenes: one object (an emoji instance) composited on a context.

Scenes paint a background (procedural textures plus emoji elements); outfits draw accessories on the
object; edits change the object itself (colour, shine, wetness, shape). Same (instance, context, seed)
-> same pixels.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from .catalog import Instance
from .emoji import emoji_image

SIZE = 64


# --- the object ------------------------------------------------------------------------------------
def hue_shift(image: Image.Image, degrees: int) -> Image.Image:
    if degrees % 360 == 0:
        return image
    alpha = image.getchannel("A")
    hsv = np.asarray(image.convert("RGB").convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + round(degrees / 360 * 255)) % 256
    out = Image.fromarray(hsv, "HSV").convert("RGBA")
    out.putalpha(alpha)
    return out


def set_hue(image: Image.Image, hue_degrees: int) -> Image.Image:
    """Recolour to one hue, keeping shading: for 'a red dog', 'a purple dog'."""
    alpha = image.getchannel("A")
    hsv = np.asarray(image.convert("RGB").convert("HSV")).copy()
    hsv[..., 0] = round(hue_degrees / 360 * 255)
    hsv[..., 1] = np.maximum(hsv[..., 1], 170)
    hsv[..., 2] = np.maximum(hsv[..., 2], 90)
    out = Image.fromarray(hsv, "HSV").convert("RGBA")
    out.putalpha(alpha)
    return out


def object_image(instance: Instance) -> Image.Image:
    image = hue_shift(emoji_image(instance.emoji, instance.style), instance.hue)
    if instance.overlay:
        badge = emoji_image(instance.overlay, instance.style)
        side = max(8, int(min(image.size) * 0.45))
        badge = badge.resize((side, side), Image.Resampling.LANCZOS)
        image = image.copy()
        image.alpha_composite(badge, ((image.width - side) // 2, (image.height - side) // 2 + image.height // 8))
    return image


# --- backgrounds -----------------------------------------------------------------------------------
def gradient(top, bottom) -> Image.Image:
    t = np.linspace(0, 1, SIZE)[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.repeat(rows, SIZE, axis=1).astype(np.uint8), "RGB").convert("RGBA")


def split(sky, ground, horizon=30) -> Image.Image:
    image = Image.new("RGBA", (SIZE, SIZE), sky)
    ImageDraw.Draw(image).rectangle((0, horizon, SIZE, SIZE), fill=ground)
    return image


def stamp(canvas: Image.Image, name: str, box: tuple[int, int, int], style: str = "twemoji") -> None:
    """Paste emoji `name` with its centre at (x, y), `size` px tall."""
    x, y, size = box
    image = emoji_image(name, style)
    w = max(1, int(image.width * size / image.height))
    image = image.resize((w, size), Image.Resampling.LANCZOS)
    canvas.alpha_composite(image, (int(x - w / 2), int(y - size / 2)))


def noise_texture(base, amount: int, rng: random.Random) -> Image.Image:
    np_rng = np.random.default_rng(rng.randrange(1 << 30))
    pixels = np.array(base, dtype=np.int16)[None, None, :] + np_rng.integers(-amount, amount + 1, (SIZE, SIZE, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").convert("RGBA")


def lines(image, color, step, horizontal=True, start=0, width=1) -> Image.Image:
    draw = ImageDraw.Draw(image)
    for v in range(start, SIZE, step):
        draw.line((0, v, SIZE, v) if horizontal else (v, 0, v, SIZE), fill=color, width=width)
    return image


def bg_jungle(rng):
    image = gradient((40, 110, 40), (20, 70, 25))
    for x in (6, 58, 18, 46):
        stamp(image, rng.choice(["palm_tree", "deciduous_tree", "herb"]), (x, rng.randint(10, 26), rng.randint(20, 28)))
    return image


def bg_snow(rng):
    image = split((200, 220, 240), (250, 250, 255), 34)
    for _ in range(5):
        stamp(image, "snowflake", (rng.randint(4, 60), rng.randint(4, 30), 8))
    return image


def bg_beach(rng):
    image = split((120, 190, 245), (240, 215, 150), 30)
    ImageDraw.Draw(image).rectangle((0, 24, SIZE, 30), fill=(40, 120, 200))
    stamp(image, "beach_with_umbrella", (rng.choice([10, 54]), 14, 16))
    return image


def bg_cobblestone(rng):
    image = Image.new("RGBA", (SIZE, SIZE), (95, 95, 100))
    draw = ImageDraw.Draw(image)
    for row in range(0, SIZE, 8):
        for col in range(-4 * (row // 8 % 2), SIZE, 10):
            shade = rng.randint(120, 160)
            draw.rounded_rectangle((col + 1, row + 1, col + 9, row + 7), 2, fill=(shade, shade, shade + 5))
    return image


def bg_pink_fabric(rng):
    image = noise_texture((240, 150, 190), 6, rng)
    draw = ImageDraw.Draw(image)
    for y in range(4, SIZE, 9):
        draw.arc((-10, y - 6, 74, y + 6), 0, 180, fill=(215, 110, 160), width=2)
    return image


def bg_wooden_floor(rng):
    image = noise_texture((170, 110, 60), 8, rng)
    return lines(image, (110, 65, 30), 9, start=rng.randint(0, 8), width=2)


def bg_with_element(name, sky, ground, y=16, size=30, style="twemoji"):
    def paint(rng):
        image = split(sky, ground, 36)
        stamp(image, name, (rng.choice([14, 50]), y, size), style)
        return image
    return paint


def bg_blue_house(rng):
    image = split((170, 210, 245), (120, 180, 90), 36)
    house = hue_shift(emoji_image("house", "twemoji"), 0)
    house = set_hue(house, 220).resize((30, 28))
    image.alpha_composite(house, (rng.choice([2, 32]), 6))
    return image


def bg_purple_rug_forest(rng):
    image = gradient((50, 120, 60), (35, 90, 40))
    for x in (8, 56):
        stamp(image, "evergreen_tree", (x, 18, 28))
    ImageDraw.Draw(image).ellipse((8, 40, 56, 60), fill=(140, 60, 180))
    return image


def bg_wheat(rng):
    image = split((150, 200, 245), (225, 190, 90), 30)
    for x in range(4, SIZE, 9):
        stamp(image, "ear_of_rice", (x, rng.randint(34, 40), 14))
    return image


def bg_autumn(rng):
    image = split((230, 200, 150), (190, 120, 60), 40)
    stamp(image, "deciduous_tree", (rng.choice([12, 52]), 20, 34))
    for _ in range(5):
        stamp(image, rng.choice(["maple_leaf", "fallen_leaf"]), (rng.randint(4, 60), rng.randint(4, 60), 8))
    return image


def bg_water(rng):
    image = gradient((110, 180, 235), (30, 90, 180))
    return lines(image, (200, 230, 255), 7, start=rng.randint(0, 6))


def bg_milk(rng):
    image = gradient((250, 248, 240), (235, 230, 215))
    return lines(image, (215, 210, 195), 8, start=rng.randint(0, 7))


def bg_sunflowers(rng):
    image = split((150, 205, 245), (80, 170, 60), 34)
    for x in (6, 20, 44, 58):
        stamp(image, "sunflower", (x, rng.randint(36, 50), 14))
    return image


def bg_mirror(rng):
    image = split((200, 200, 205), (225, 230, 235), 36)
    ImageDraw.Draw(image).line((0, 36, SIZE, 36), fill=(150, 150, 160), width=1)
    return image


def bg_crowded(rng):
    image = split((200, 200, 200), (150, 150, 150), 34)
    for x in (6, 18, 46, 58):
        stamp(image, rng.choice(["walking", "man-walking", "woman-walking"]), (x, 20, 24))
    return image


def bg_dirt_road(rng):
    image = split((160, 200, 235), (150, 110, 70), 26)
    draw = ImageDraw.Draw(image)
    draw.polygon([(24, 26), (40, 26), (64, 64), (0, 64)], fill=(175, 135, 90))
    return image


def bg_white_rug(rng):
    image = noise_texture((170, 120, 80), 6, rng)
    ImageDraw.Draw(image).ellipse((4, 30, 60, 62), fill=(248, 248, 248))
    return image


SCENE_PAINTERS = {
    "in the jungle": bg_jungle, "in the snow": bg_snow, "on the beach": bg_beach,
    "on a cobblestone street": bg_cobblestone, "on top of pink fabric": bg_pink_fabric,
    "on top of a wooden floor": bg_wooden_floor,
    "with a city in the background": bg_with_element("cityscape", (150, 190, 235), (120, 120, 125), 18, 32),
    "with a mountain in the background": bg_with_element("snow_capped_mountain", (150, 200, 245),
                                                         (110, 160, 90), 18, 34),
    "with a blue house in the background": bg_blue_house, "on top of a purple rug in a forest": bg_purple_rug_forest,
    "with a wheat field in the background": bg_wheat, "with a tree and autumn leaves in the background": bg_autumn,
    "with the Eiffel Tower in the background": bg_with_element("tokyo_tower", (170, 210, 245),
                                                               (200, 190, 160), 16, 34),
    "floating on top of water": bg_water, "floating in an ocean of milk": bg_milk,
    "on top of green grass with sunflowers around it": bg_sunflowers, "on top of a mirror": bg_mirror,
    "on top of the sidewalk in a crowded street": bg_crowded, "on top of a dirt road": bg_dirt_road,
    "on top of a white rug": bg_white_rug,
}
PLAIN_COLORS = [(245, 245, 245), (235, 230, 220), (220, 235, 245), (230, 245, 225), (245, 230, 235), (255, 255, 255)]


def plain_background(rng) -> Image.Image:
    return Image.new("RGBA", (SIZE, SIZE), rng.choice(PLAIN_COLORS))
