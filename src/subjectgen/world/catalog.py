"""What exists in the built-in world: classes and their instances, the EmojiBench subjects, the contexts.

An instance is an emoji in a style, made particular along a few axes (hue, pattern, sticker, two-tone
colouring, an accessory for live classes). A fixed rule reserves a region of the instance space that no
training or evaluator set renders; EmojiBench and the validation subjects are drawn from it.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import MISSING, dataclass, fields, replace
from typing import Callable, Iterator

from ..errors import UserError

# class noun -> emoji short names. The 15 DreamBench classes first, then classes for a richer prior.
CLASSES: dict[str, list[str]] = {
    "backpack": ["school_satchel"],
    "stuffed animal": ["teddy_bear", "sloth", "wolf"],
    "bowl": ["bowl_with_spoon", "ramen", "stew", "green_salad"],
    "can": ["canned_food"],
    "candle": ["candle", "diya_lamp"],
    "cat": ["cat", "cat2", "black_cat", "smiley_cat"],
    "clock": ["alarm_clock", "mantelpiece_clock", "clock3", "clock9", "stopwatch"],
    "sneaker": ["athletic_shoe", "mans_shoe"],
    "dog": ["dog", "dog2", "poodle", "guide_dog", "service_dog"],
    "toy": ["yo-yo", "kite", "robot_face", "duck", "racing_car", "nesting_dolls", "pinata", "hankey"],
    "boot": ["boot", "hiking_boot"],
    "glasses": ["eyeglasses", "dark_sunglasses", "goggles"],
    "cartoon": ["grinning", "joy", "alien", "ghost", "japanese_ogre", "clown_face", "space_invader"],
    "teapot": ["teapot"],
    "vase": ["amphora"],
    "apple": ["apple"], "banana": ["banana"], "car": ["car"], "bird": ["bird"], "fish": ["tropical_fish", "fish"],
    "flower": ["hibiscus", "rose"], "ball": ["soccer", "basketball", "tennis"], "guitar": ["guitar"],
    "cake": ["cake"], "butterfly": ["butterfly"], "rabbit": ["rabbit2"], "horse": ["racehorse"],
    "frog": ["frog"], "mushroom": ["mushroom"], "balloon": ["balloon"], "turtle": ["turtle"],
    "penguin": ["penguin"], "owl": ["owl"], "crab": ["crab"], "strawberry": ["strawberry"],
}
DREAMBENCH_CLASSES = list(CLASSES)[:15]
LIVE_CLASSES = {"cat", "dog"}
STYLES = ("twemoji", "noto")

# The axes along which an instance is particular (World v3): every class in many instances, so that the prior
# composes ("this dog, but green with a star sticker" is near things seen, not outside everything).
HUES = tuple(range(0, 360, 15))                # degrees of hue rotation of the whole emoji
PATTERNS = ("", "stripes", "dots", "checks")   # a texture over the object
STICKERS = ("", "star", "heart", "four_leaf_clover", "zap", "cherries", "dog", "strawberry")  # a sticker on it
TONES = (0, 90, 180)                           # two-tone: the lower half's extra hue rotation
ACCESSORIES = ("", "collar", "bandana", "bow")  # live classes only
# (emoji, style) pairs with under 20 % saturated pixels: a hue rotation of them is the same picture, so they
# take no hue or two-tone axis (a test recomputes this list from the emoji).
ACHROMATIC = {("sloth", "twemoji"), ("sloth", "noto"), ("wolf", "twemoji"), ("wolf", "noto"),
              ("black_cat", "twemoji"), ("black_cat", "noto"), ("clock3", "twemoji"), ("clock3", "noto"),
              ("clock9", "twemoji"), ("clock9", "noto"), ("stopwatch", "twemoji"), ("stopwatch", "noto"),
              ("poodle", "twemoji"), ("poodle", "noto"), ("robot_face", "noto"), ("dark_sunglasses", "twemoji"),
              ("dark_sunglasses", "noto"), ("goggles", "twemoji"), ("alien", "twemoji"), ("ghost", "twemoji"),
              ("ghost", "noto"), ("soccer", "twemoji"), ("soccer", "noto"), ("rabbit2", "twemoji"),
              ("rabbit2", "noto"), ("penguin", "twemoji"), ("penguin", "noto")}


@dataclass(frozen=True)
class Instance:
    emoji: str
    style: str
    hue: int = 0            # degrees of hue rotation
    overlay: str = ""       # a sticker: a second emoji stuck on it
    pattern: str = ""
    tone: int = 0           # two-tone colouring: the lower half rotated this much further
    accessory: str = ""     # worn by live subjects: collar, bandana, bow

    def attributes(self) -> dict:
        """The fields that make it particular (those not at their plain value)."""
        return {f.name: getattr(self, f.name) for f in fields(self)  # emoji and style have no default: never here
                if f.default is not MISSING and getattr(self, f.name) != f.default}


# --- the reserved region ---------------------------------------------------------------------------
# A fixed rule: an instance is in the reserved core when a hash of its attributes (hue taken in 30-degree bins)
# falls in the lowest 10 %. The reserved region is the core plus its near neighbours: the same instance 15 degrees
# of hue away. No training or evaluator set ever renders a reserved instance; EmojiBench, the validation subjects
# and every later test set are drawn from the core.
RESERVED_FRACTION = 0.10
NEIGHBOUR_HUES = (-15, 0, 15)


def _bucket(inst: Instance) -> float:
    key = "|".join(str(v) for v in (inst.emoji, inst.style, inst.hue % 360 // 30, inst.overlay, inst.pattern,
                                    inst.tone, inst.accessory))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64


def in_reserved_core(inst: Instance) -> bool:
    return _bucket(inst) < RESERVED_FRACTION


def is_reserved(inst: Instance) -> bool:
    """In the core, or a near neighbour of a core instance (a few degrees of hue away)."""
    return any(in_reserved_core(replace(inst, hue=(inst.hue + d) % 360)) for d in NEIGHBOUR_HUES)


def class_of(emoji: str) -> str:
    return next(noun for noun, names in CLASSES.items() if emoji in names)


def random_instance(emoji: str, style: str, rng: random.Random) -> Instance:
    """A composed instance: each axis away from plain with its own probability."""
    live, coloured = class_of(emoji) in LIVE_CLASSES, (emoji, style) not in ACHROMATIC
    hue = rng.choice(HUES[1:]) if rng.random() < 0.6 else 0
    overlay = rng.choice(STICKERS[1:]) if rng.random() < 0.35 else ""
    pattern = rng.choice(PATTERNS[1:]) if rng.random() < 0.35 else ""
    tone = rng.choice(TONES[1:]) if rng.random() < 0.25 else 0
    wears = rng.choice(ACCESSORIES[1:]) if rng.random() < 0.5 else ""
    return Instance(emoji, style, hue if coloured else 0, overlay, pattern, tone if coloured else 0,
                    wears if live else "")


def instance_space(noun: str) -> Iterator[Instance]:
    """Every instance `random_instance` can draw for this class, each once."""
    for emoji, style in itertools.product(CLASSES[noun], STYLES):
        coloured = (emoji, style) not in ACHROMATIC
        for hue, overlay, pattern, tone, wears in itertools.product(
                HUES if coloured else (0,), STICKERS, PATTERNS, TONES if coloured else (0,),
                ACCESSORIES if noun in LIVE_CLASSES else ("",)):
            yield Instance(emoji, style, hue, overlay, pattern, tone, wears)


def draws_per_class(count: int, cycle: list[str]) -> dict[str, int]:
    """How many of `count` draws, cycling through the classes `cycle`, fall to each class."""
    need = dict.fromkeys(cycle, 0)
    for i, noun in enumerate(cycle):
        need[noun] += max(0, -(-(count - i) // len(cycle)))
    return need


def check_draw(count: int, cycle: list[str], eligible: Callable[[Instance], bool], where: str) -> None:
    """A one-line error, at once, when `count` distinct draws cycling through `cycle` ask a class for more eligible
    instances than the world holds (the draw would loop forever); it names how many there are."""
    need = draws_per_class(count, cycle)
    have = {noun: sum(1 for _ in itertools.islice(filter(eligible, instance_space(noun)), n)) for noun, n in need.items()}
    short = [noun for noun in need if have[noun] < need[noun]]
    if not short:
        return
    low, high = 0, count  # the largest count every short class can serve (the others serve more than `count`)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if all(draws_per_class(mid, cycle)[n] <= have[n] for n in short) else (low, mid)
    noun = short[0]
    raise UserError(f"--count {count}: {where} holds only {have[noun]} {noun} subjects and this count needs "
                    f"{need[noun]}; ask for at most {low}")


COMPOSED_PER_EMOJI = 12  # composed training instances per (emoji, style), besides the plain one


def training_instances(per_emoji: int = COMPOSED_PER_EMOJI) -> dict[str, list[Instance]]:
    """Every class's instances for training (the base model, the evaluators): per (emoji, style) the plain
    emoji and `per_emoji` composed ones, never a reserved instance."""
    out = {}
    for noun, names in CLASSES.items():
        insts = []
        for name, style in ((n, s) for n in names for s in STYLES):
            rng = random.Random(f"train|{name}|{style}")
            found = [] if is_reserved(Instance(name, style)) else [Instance(name, style)]
            for _ in range(per_emoji * 20):
                if len(found) > per_emoji:
                    break
                inst = random_instance(name, style, rng)
                if inst not in found and not is_reserved(inst):
                    found.append(inst)
            insts += found
        out[noun] = insts
    return out


def sample_reserved(noun: str, rng: random.Random, emoji: str | None = None, min_attributes: int = 2) -> Instance:
    """An instance of the reserved core of this class (of one emoji if given), particular along at least
    `min_attributes` axes, as a real subject is (a hue and a sticker, a pattern and a collar)."""
    names = [emoji] if emoji else CLASSES[noun]
    while True:
        inst = random_instance(rng.choice(names), rng.choice(STYLES), rng)
        if len(inst.attributes()) >= min_attributes and in_reserved_core(inst):
            return inst


# EmojiBench (v3): DreamBench's 30 subject names and classes, each an instance of the reserved core drawn by
# sample_reserved(class, random.Random(f"emojibench-v3|{name}"), emoji) with the emoji its name suggests, so that
# no training or evaluator set has seen it (a test checks both the rule and the draw).
SUBJECTS: dict[str, tuple[str, Instance]] = {
    "backpack": ("backpack", Instance("school_satchel", "twemoji", hue=15, overlay="dog")),
    "backpack_dog": ("backpack", Instance("school_satchel", "twemoji", hue=45, overlay="heart", tone=90)),
    "bear_plushie": ("stuffed animal", Instance("teddy_bear", "noto", hue=210, overlay="cherries")),
    "berry_bowl": ("bowl", Instance("bowl_with_spoon", "noto", hue=15, overlay="dog")),
    "can": ("can", Instance("canned_food", "twemoji", hue=45, pattern="dots")),
    "candle": ("candle", Instance("candle", "noto", hue=45, overlay="zap")),
    "cat": ("cat", Instance("cat2", "twemoji", hue=30, accessory="bow")),
    "cat2": ("cat", Instance("cat", "twemoji", hue=120, pattern="stripes", accessory="collar")),
    "clock": ("clock", Instance("mantelpiece_clock", "noto", hue=45, overlay="four_leaf_clover", pattern="checks")),
    "colorful_sneaker": ("sneaker", Instance("athletic_shoe", "noto", hue=240, overlay="dog", pattern="dots",
                                             tone=180)),
    "dog": ("dog", Instance("dog2", "noto", pattern="dots", accessory="bow")),
    "dog2": ("dog", Instance("poodle", "twemoji", pattern="stripes", accessory="collar")),
    "dog3": ("dog", Instance("dog", "twemoji", hue=45, tone=90, accessory="bow")),
    "dog5": ("dog", Instance("guide_dog", "twemoji", hue=180, overlay="strawberry", pattern="dots",
                             accessory="collar")),
    "dog6": ("dog", Instance("dog", "twemoji", hue=120, tone=90)),
    "dog7": ("dog", Instance("dog2", "noto", hue=165, pattern="dots", accessory="collar")),
    "dog8": ("dog", Instance("service_dog", "twemoji", hue=270, overlay="heart", accessory="bandana")),
    "duck_toy": ("toy", Instance("duck", "twemoji", overlay="star", pattern="stripes")),
    "fancy_boot": ("boot", Instance("boot", "noto", hue=105, pattern="checks", tone=90)),
    "grey_sloth_plushie": ("stuffed animal", Instance("sloth", "noto", overlay="cherries", pattern="dots")),
    "monster_toy": ("toy", Instance("space_invader", "noto", hue=45, overlay="four_leaf_clover", pattern="checks")),
    "pink_sunglasses": ("glasses", Instance("dark_sunglasses", "twemoji", overlay="heart", pattern="checks")),
    "poop_emoji": ("toy", Instance("hankey", "noto", hue=150, pattern="dots", tone=180)),
    "rc_car": ("toy", Instance("racing_car", "twemoji", hue=345, pattern="stripes")),
    "red_cartoon": ("cartoon", Instance("japanese_ogre", "noto", hue=30, overlay="strawberry")),
    "robot_toy": ("toy", Instance("robot_face", "twemoji", hue=285, pattern="stripes")),
    "shiny_sneaker": ("sneaker", Instance("mans_shoe", "twemoji", overlay="four_leaf_clover", pattern="dots")),
    "teapot": ("teapot", Instance("teapot", "twemoji", hue=300, overlay="cherries", pattern="dots")),
    "vase": ("vase", Instance("amphora", "noto", hue=255, overlay="zap")),
    "wolf_plushie": ("stuffed animal", Instance("wolf", "twemoji", overlay="strawberry", pattern="dots")),
}

# Validation subjects (v3): drawn the same way (sample_reserved(class, random.Random(f"validation-v3|{name}"))),
# with DreamBench's mix of live and object classes. Settings are chosen on these, so EmojiBench stays a test set.
VALIDATION: dict[str, tuple[str, Instance]] = {
    "val_dog": ("dog", Instance("service_dog", "noto", overlay="heart", accessory="collar")),
    "val_dog2": ("dog", Instance("dog", "twemoji", hue=90, pattern="checks", accessory="collar")),
    "val_dog3": ("dog", Instance("dog2", "noto", hue=180, overlay="heart", accessory="collar")),
    "val_cat": ("cat", Instance("smiley_cat", "twemoji", hue=345, overlay="dog")),
    "val_cat2": ("cat", Instance("cat2", "twemoji", pattern="dots", accessory="collar")),
    "val_sneaker": ("sneaker", Instance("athletic_shoe", "noto", hue=90, overlay="cherries")),
    "val_boot": ("boot", Instance("boot", "noto", hue=315, overlay="dog")),
    "val_toy": ("toy", Instance("pinata", "twemoji", hue=105, overlay="dog", pattern="dots")),
    "val_toy2": ("toy", Instance("pinata", "noto", hue=195, pattern="dots", tone=90)),
    "val_plushie": ("stuffed animal", Instance("wolf", "noto", overlay="strawberry", pattern="checks")),
    "val_bowl": ("bowl", Instance("ramen", "noto", hue=270, overlay="zap")),
    "val_cartoon": ("cartoon", Instance("joy", "noto", hue=195, tone=180)),
    "val_clock": ("clock", Instance("mantelpiece_clock", "noto", hue=75, pattern="checks")),
    "val_glasses": ("glasses", Instance("dark_sunglasses", "twemoji", overlay="cherries", pattern="checks")),
    "val_backpack": ("backpack", Instance("school_satchel", "noto", hue=225, pattern="stripes", tone=180)),
    "val_candle": ("candle", Instance("diya_lamp", "noto", hue=135, overlay="four_leaf_clover")),
}

# DreamBench's contexts: the phrase that follows "a {class}" in its prompts, by kind.
SCENES = [
    "in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
    "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
    "with a blue house in the background", "on top of a purple rug in a forest",
    "with a wheat field in the background", "with a tree and autumn leaves in the background",
    "with the Eiffel Tower in the background", "floating on top of water", "floating in an ocean of milk",
    "on top of green grass with sunflowers around it", "on top of a mirror",
    "on top of the sidewalk in a crowded street", "on top of a dirt road", "on top of a white rug",
]
OUTFITS = [
    "wearing a red hat", "wearing a santa hat", "wearing a rainbow scarf", "wearing a black top hat and a monocle",
    "in a chef outfit", "in a firefighter outfit", "in a police outfit", "wearing pink glasses",
    "wearing a yellow shirt", "in a purple wizard outfit",
]
EDITS = ["red", "purple", "shiny", "wet", "cube shaped"]  # these go before the class: "a red dog"


def caption(class_noun: str, context: str | None, article: str = "a", named: str = "") -> str:
    """'a dog on the beach', 'a red dog', 'a dog' — DreamBench's wording; `named` (from attribute_phrase) puts
    one of the instance's attributes in: 'a striped dog on the beach', 'a dog with a star sticker'."""
    if context in EDITS:
        return f"{article} {context} {class_noun}"
    noun = f"{named[1:]} {class_noun}" if named.startswith("<") else f"{class_noun} {named}".strip()
    return f"{article} {noun} {context}" if context else f"{article} {noun}"


PATTERN_WORDS = {"stripes": "striped", "dots": "polka-dot", "checks": "checked"}
STICKER_WORDS = {"four_leaf_clover": "clover", "zap": "lightning", "cherries": "cherry"}
ACCESSORY_WORDS = {"collar": "with a red collar", "bandana": "with a blue bandana", "bow": "with a pink bow"}


def attribute_phrase(inst: Instance, colour: str | None, rng: random.Random, p_named: float = 0.3) -> str:
    """Now and then one attribute in words, as web captions sometimes say it ('<green' goes before the noun,
    'with a star sticker' after it); mostly '' (the class noun must cover its variety)."""
    if rng.random() >= p_named:
        return ""
    said = {"hue": f"<{colour}" if colour else "", "pattern": f"<{PATTERN_WORDS.get(inst.pattern, '')}",
            "overlay": f"with a {STICKER_WORDS.get(inst.overlay, inst.overlay)} sticker", "tone": "<two-tone",
            "accessory": ACCESSORY_WORDS.get(inst.accessory, "")}
    choices = [said[k] for k in inst.attributes() if k in said and said[k].strip("<")]
    return rng.choice(choices) if choices else ""


def held_out_set(count: int, seed: int, classes: list[str] | None = None) -> dict[str, tuple[str, Instance]]:
    """`count` fresh subjects from the reserved core, cycling through `classes` (DreamBench's by default), none of
    them an EmojiBench or validation subject: a new held-out set built the way the validation subjects are."""
    classes = classes or DREAMBENCH_CLASSES
    known = {inst for _, inst in [*SUBJECTS.values(), *VALIDATION.values()]}
    check_draw(count, classes, lambda inst: in_reserved_core(inst) and len(inst.attributes()) >= 2 and
               inst not in known, "the reserved region")
    rng, out = random.Random(f"held-out|{seed}"), {}
    while len(out) < count:
        noun = classes[len(out) % len(classes)]
        inst = sample_reserved(noun, rng)
        if inst not in known:
            known.add(inst)
            out[f"{noun.replace(' ', '_')}_{len(out):02d}"] = (noun, inst)
    return out


def contexts_for(class_noun: str) -> list[str]:
    return SCENES + EDITS + (OUTFITS if class_noun in LIVE_CLASSES else [])
