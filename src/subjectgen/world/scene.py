"""Compose one 64x64 picture: a background for the context, the object placed on it, outfit or edit."""

from __future__ import annotations

import random

from PIL import Image

from .catalog import EDITS, OUTFITS, SCENES, Instance
from .dressing import EDIT_FUNCTIONS, OUTFIT_PAINTERS
from .render import SCENE_PAINTERS, SIZE, object_image, plain_background

PHOTO_HEIGHT = (0.55, 0.78)  # EmojiBench photos: the subject's height as a fraction of the image
GROUNDED = {"on top of a mirror", "floating on top of water", "floating in an ocean of milk"}


def render_scene(instance: Instance, context: str | None, seed: int,
                 object_height: tuple[float, float] | None = None) -> Image.Image:
    """The instance in the context ('on the beach', 'wearing a red hat', 'red', or None for plain).
    `object_height`: the object's height range as a fraction of the image (default: the training set's)."""
    rng = random.Random(f"{instance}|{context}|{seed}")
    canvas = SCENE_PAINTERS[context](rng) if context in SCENES else plain_background(rng)
    obj = object_image(instance)
    if context in EDITS:
        obj = EDIT_FUNCTIONS[context](obj, rng)
    small = context in SCENES or context in OUTFITS
    low, high = object_height or ((0.42, 0.55) if small else (0.5, 0.72))
    height = int(SIZE * rng.uniform(low, high))
    width = max(1, int(obj.width * height / obj.height))
    if width > SIZE * 0.8:
        width, height = int(SIZE * 0.8), max(1, int(obj.height * SIZE * 0.8 / obj.width))
    obj = obj.resize((width, height), Image.Resampling.LANCZOS).rotate(rng.uniform(-8, 8), expand=True,
                                                                       resample=Image.Resampling.BICUBIC)
    x = int((SIZE - obj.width) / 2 + rng.uniform(-6, 6))
    y = int(SIZE - obj.height - rng.uniform(2, 8)) if context in SCENES else int((SIZE - obj.height) / 2 + rng.uniform(-4, 6))
    if context in OUTFITS:
        y = max(y, int(obj.height * 0.35))  # room for hats
    if context == "on top of a mirror":
        reflection = obj.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        reflection.putalpha(reflection.getchannel("A").point(lambda a: a * 0.4))
        canvas.alpha_composite(reflection, (x, min(SIZE - 1, y + obj.height)))
    if context in ("floating on top of water", "floating in an ocean of milk"):
        y = int(SIZE * 0.62 - obj.height * 0.6)
    canvas.alpha_composite(obj, (x, y))
    if context in ("floating on top of water", "floating in an ocean of milk"):
        liquid = canvas.crop((0, int(SIZE * 0.62), SIZE, SIZE))
        tint = (40, 100, 200, 120) if "water" in context else (248, 246, 238, 170)
        liquid.alpha_composite(Image.new("RGBA", liquid.size, tint))
        canvas.paste(liquid, (0, int(SIZE * 0.62)))
    if context in OUTFITS:
        OUTFIT_PAINTERS[context](canvas, (x, y, obj.width, obj.height), rng)
    return canvas.convert("RGB")


def render_photo(instance: Instance, seed: int) -> tuple[Image.Image, Image.Image]:
    """A 'photo' of a subject for EmojiBench: varied scale, position and tilt on a plain or simple background;
    with its subject mask (L, 255 on the object), which a masked loss uses to leave the background unlearned."""
    rng = random.Random(f"photo|{instance}|{seed}")
    canvas = plain_background(rng)
    obj = object_image(instance)
    height = int(SIZE * rng.uniform(*PHOTO_HEIGHT))
    width = min(int(SIZE * 0.85), max(1, int(obj.width * height / obj.height)))
    obj = obj.resize((width, height), Image.Resampling.LANCZOS).rotate(rng.uniform(-10, 10), expand=True,
                                                                       resample=Image.Resampling.BICUBIC)
    x = int((SIZE - obj.width) / 2 + rng.uniform(-5, 5))
    y = int((SIZE - obj.height) / 2 + rng.uniform(-5, 5))
    canvas.alpha_composite(obj, (x, y))
    mask = Image.new("L", canvas.size, 0)
    mask.paste(obj.getchannel("A"), (x, y))
    return canvas.convert("RGB"), mask
