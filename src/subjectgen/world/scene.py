"""Compose one 64x64 picture: a background for the context, the object placed on it, outfit or edit."""

from __future__ import annotations

import random

from PIL import Image

from .catalog import EDITS, OUTFITS, SCENES, Instance
from .dressing import EDIT_FUNCTIONS, OUTFIT_PAINTERS
from .render import PHOTO_PAINTERS, PHOTO_SETTINGS, SCENE_PAINTERS, SIZE, object_image, plain_background

PHOTO_HEIGHT = (0.45, 0.8)  # EmojiBench photos: the subject's height as a fraction of the image
GROUNDED = {"on top of a mirror", "floating on top of water", "floating in an ocean of milk"}


def render_scene(instance: Instance, context: str | None, seed: int,
                 object_height: tuple[float, float] | None = None) -> Image.Image:
    """The instance in the context ('on the beach', 'wearing a red hat', 'red', or None for plain).
    `object_height`: the object's height range as a fraction of the image (default: the training set's)."""
    rng = random.Random(f"{instance}|{context}|{seed}")
    grounded = context in SCENES or context in PHOTO_PAINTERS
    canvas = (SCENE_PAINTERS.get(context) or PHOTO_PAINTERS.get(context) or plain_background)(rng)
    obj = object_image(instance)
    if context in EDITS:
        obj = EDIT_FUNCTIONS[context](obj, rng)
    small = grounded or context in OUTFITS
    low, high = object_height or ((0.42, 0.55) if small else (0.5, 0.72))
    height = int(SIZE * rng.uniform(low, high))
    width = max(1, int(obj.width * height / obj.height))
    if width > SIZE * 0.8:
        width, height = int(SIZE * 0.8), max(1, int(obj.height * SIZE * 0.8 / obj.width))
    obj = obj.resize((width, height), Image.Resampling.LANCZOS).rotate(rng.uniform(-8, 8), expand=True,
                                                                       resample=Image.Resampling.BICUBIC)
    x = int((SIZE - obj.width) / 2 + rng.uniform(-6, 6))
    y = int(SIZE - obj.height - rng.uniform(2, 8)) if grounded else int((SIZE - obj.height) / 2 + rng.uniform(-4, 6))
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


def scene_words() -> list[str]:
    """The world's words for where a subject is: its prompts' scenes ('on the beach') and the places its photos are
    taken ('on a sofa'), the candidates of the built-in captioner (captions.SceneInterrogator)."""
    return SCENES + PHOTO_SETTINGS


def photo_settings(instance: Instance) -> list[str]:
    """The few places where this subject's photos are taken: two or three of PHOTO_SETTINGS, fixed per subject."""
    rng = random.Random(f"places|{instance}")
    return rng.sample(PHOTO_SETTINGS, rng.choice([2, 3]))


def photo_count(instance: Instance) -> int:
    """4 to 6 photos, as DreamBench's subjects have."""
    return 4 + random.Random(f"count|{instance}").randrange(3)


def render_photo(instance: Instance, seed: int) -> tuple[Image.Image, Image.Image]:
    """A 'photo' of a subject: in one of its few places (a floor, a table top, a lawn, a kitchen counter...),
    at varied scale, position and tilt; with its subject mask (L, 255 on the object), which a masked loss uses
    to leave the background unlearned."""
    rng = random.Random(f"photo|{instance}|{seed}")
    places = photo_settings(instance)
    canvas = PHOTO_PAINTERS[places[seed % len(places)]](rng)
    obj = object_image(instance)
    height = int(SIZE * rng.uniform(*PHOTO_HEIGHT))
    width = min(int(SIZE * 0.85), max(1, int(obj.width * height / obj.height)))
    obj = obj.resize((width, height), Image.Resampling.LANCZOS).rotate(rng.uniform(-10, 10), expand=True,
                                                                       resample=Image.Resampling.BICUBIC)
    x = int((SIZE - obj.width) / 2 + rng.uniform(-10, 10))
    y = int(SIZE - obj.height - rng.uniform(1, 10))  # standing on the surface, nearer or farther
    x, y = min(max(x, -4), SIZE - obj.width + 4), max(y, 0)
    canvas.alpha_composite(obj, (x, y))
    mask = Image.new("L", canvas.size, 0)
    mask.paste(obj.getchannel("A"), (x, y))
    return canvas.convert("RGB"), mask
