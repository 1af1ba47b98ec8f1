"""A deterministic renderer of 64x64 scenes: one object (an emoji instance) composited on a context.

Scenes paint a background (procedural textures plus emoji elements); outfits draw accessories on the
object; edits change the object itself (colour, shine, wetness, shape). Same (instance, context, seed)
-> same pixels.
"""

from __future__ import annotations

import random
from functools import lru_cache

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


def two_tone(image: Image.Image, degrees: int) -> Image.Image:
    """The lower half of the object rotated `degrees` further in hue."""
    if degrees % 360 == 0:
        return image
    out = image.copy()
    half = image.height // 2
    out.paste(hue_shift(image.crop((0, half, image.width, image.height)), degrees), (0, half))
    return out


def patterned(image: Image.Image, pattern: str) -> Image.Image:
    """A texture over the object's own pixels: stripes, dots or checks, darker than what they cover."""
    if not pattern:
        return image
    w, h = image.size
    period = max(4, min(w, h) // 6)
    yy, xx = np.mgrid[0:h, 0:w]
    if pattern == "stripes":
        on = ((xx + yy) // (period // 2)) % 2 == 0
    elif pattern == "checks":
        on = ((xx // period) + (yy // period)) % 2 == 0
    else:  # dots
        cx, cy = xx % period - period / 2, yy % period - period / 2
        on = cx ** 2 + cy ** 2 < (period * 0.28) ** 2
    rgba = np.asarray(image).astype(np.float32)
    dark = rgba[..., :3].mean(-1, keepdims=True) < 110  # on a dark object the marks are light, else dark
    ink = np.where(dark, np.array([235, 235, 245]), np.array([20, 20, 40]))
    shade = np.where(on[..., None], 0.45, 1.0)
    rgba[..., :3] = rgba[..., :3] * shade + (1 - shade) * ink
    return Image.fromarray(rgba.clip(0, 255).astype(np.uint8), "RGBA")


def accessory(image: Image.Image, kind: str) -> Image.Image:
    """What a live subject wears as part of itself: a red collar with a tag, a blue bandana, a pink bow."""
    if not kind:
        return image
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    if kind == "collar":
        draw.rectangle((w * 0.22, h * 0.62, w * 0.78, h * 0.70), fill=(220, 30, 40, 255))
        draw.ellipse((w * 0.46, h * 0.68, w * 0.56, h * 0.78), fill=(250, 210, 40, 255))
    elif kind == "bandana":
        draw.polygon([(w * 0.2, h * 0.6), (w * 0.8, h * 0.6), (w * 0.5, h * 0.9)], fill=(40, 90, 220, 255))
    else:  # bow
        cx, cy, r = w * 0.78, h * 0.16, w * 0.13
        draw.polygon([(cx, cy), (cx - r, cy - r), (cx - r, cy + r)], fill=(250, 90, 180, 255))
        draw.polygon([(cx, cy), (cx + r, cy - r), (cx + r, cy + r)], fill=(250, 90, 180, 255))
    return out


def object_image(instance: Instance) -> Image.Image:
    return _object_image(instance).copy()


@lru_cache(maxsize=4096)
def _object_image(instance: Instance) -> Image.Image:
    """The instance's own picture: the emoji, hue-rotated, two-toned, patterned, with its sticker and accessory."""
    image = hue_shift(emoji_image(instance.emoji, instance.style), instance.hue)
    image = patterned(two_tone(image, instance.tone), instance.pattern)
    alpha = emoji_image(instance.emoji, instance.style).getchannel("A")
    image.putalpha(alpha)
    if instance.overlay:
        badge = emoji_image(instance.overlay, instance.style)
        side = max(8, int(min(image.size) * 0.45), int(max(image.size) * 0.3))  # seen on wide objects too
        badge = badge.resize((side, side), Image.Resampling.LANCZOS)
        image = image.copy()
        image.alpha_composite(badge, ((image.width - side) // 2, (image.height - side) // 2 + image.height // 8))
    return accessory(image, instance.accessory)


COLOUR_NAMES = ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (250, "blue"), (290, "purple"),
                (340, "pink"), (360, "red"))


@lru_cache(maxsize=4096)
def colour_name(instance: Instance) -> str | None:
    """The object's dominant colour in a word, when most of it is one saturated hue; else None."""
    hsv = np.asarray(_object_image(instance).convert("RGB").convert("HSV")).astype(float)
    alpha = np.asarray(_object_image(instance).getchannel("A")) > 128
    hue, sat = hsv[..., 0][alpha] * 360 / 255, hsv[..., 1][alpha]
    coloured = hue[sat > 80]
    if len(coloured) < 0.5 * len(hue):
        return None
    angle = np.degrees(np.arctan2(np.sin(np.radians(coloured)).mean(), np.cos(np.radians(coloured)).mean())) % 360
    spread = np.hypot(np.sin(np.radians(coloured)).mean(), np.cos(np.radians(coloured)).mean())
    return next(name for limit, name in COLOUR_NAMES if angle < limit) if spread > 0.8 else None


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


# --- the places where a subject's photos are taken (none of them a prompt's context) ---------------
def wall_and_surface(wall, surface, horizon, rng) -> Image.Image:
    return split(tuple(c + rng.randint(-8, 8) for c in wall), tuple(c + rng.randint(-8, 8) for c in surface),
                 horizon)


def photo_tiled_floor(rng):
    image = noise_texture((200, 200, 195), 4, rng)
    step = rng.choice([10, 12, 14])
    return lines(lines(image, (150, 150, 150), step, start=rng.randint(0, 6)), (150, 150, 150), step, False,
                 rng.randint(0, 6))


def photo_table_top(rng):
    image = wall_and_surface((225, 215, 200), (190, 140, 95), rng.randint(22, 32), rng)
    draw = ImageDraw.Draw(image)
    for y in range(36, SIZE, 7):
        draw.line((0, y, SIZE, y + rng.randint(-2, 2)), fill=(170, 120, 80), width=1)
    return image


def photo_lawn(rng):
    image = wall_and_surface((185, 215, 235), (95, 165, 70), rng.randint(16, 26), rng)
    draw = ImageDraw.Draw(image)
    for x in range(-8, SIZE, 16):  # mowing stripes
        draw.polygon([(x, SIZE), (x + 8, SIZE), (x + 12, 26), (x + 8, 26)], fill=(110, 180, 80))
    ImageDraw.Draw(image).rectangle((0, 14, SIZE, 22), fill=(60, 120, 50))  # a hedge
    return image


def photo_kitchen_counter(rng):
    image = wall_and_surface((235, 235, 230), (225, 225, 220), rng.randint(26, 34), rng)
    draw = ImageDraw.Draw(image)
    for y in range(0, 26, 6):  # backsplash tiles
        for x in range(-3 * (y // 6 % 2), SIZE, 8):
            draw.rectangle((x, y, x + 7, y + 5), outline=(190, 205, 215))
    for _ in range(6):  # marble veins
        x, y = rng.randint(0, SIZE), rng.randint(34, SIZE)
        draw.line((x, y, x + rng.randint(-14, 14), y + rng.randint(2, 8)), fill=(180, 180, 185), width=1)
    return image


def photo_sofa(rng):
    image = wall_and_surface((120, 90, 140), (140, 105, 160), rng.randint(30, 38), rng)
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((2, 4, 30, 34), 6, fill=(155, 120, 175))
    draw.rounded_rectangle((34, 4, 62, 34), 6, fill=(155, 120, 175))
    return image


def photo_carpet(rng):
    image = noise_texture((175, 150, 120), 5, rng)
    draw = ImageDraw.Draw(image)
    for r in range(6, 60, 10):
        draw.rectangle((32 - r, 32 - r, 32 + r, 32 + r), outline=(140, 110, 85), width=2)
    return image


PHOTO_PAINTERS = {
    "on a tiled floor": photo_tiled_floor, "on a table top": photo_table_top, "on a lawn": photo_lawn,
    "on a kitchen counter": photo_kitchen_counter, "on a sofa": photo_sofa, "on a carpet": photo_carpet,
}
PHOTO_SETTINGS = list(PHOTO_PAINTERS)
