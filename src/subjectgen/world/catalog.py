"""What exists in the built-in world: classes and their instances, the EmojiBench subjects, the contexts.

An instance is (emoji, style, hue shift). EmojiBench subjects are instances the base model never sees:
each subject's (emoji, style) pair is held out of training, or it wears a hue no training instance has.
"""

from __future__ import annotations

from dataclasses import dataclass

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
TRAIN_HUES = (0, 60, 150, 270)  # colour variants that thin classes get in training
THIN = 2  # classes with at most this many emoji get the colour variants


@dataclass(frozen=True)
class Instance:
    emoji: str
    style: str
    hue: int = 0            # degrees of hue rotation
    overlay: str = ""       # a second emoji stuck on it (a unique, never-seen instance)


# EmojiBench: DreamBench's 30 subject names and classes, each mapped to a never-seen instance.
SUBJECTS: dict[str, tuple[str, Instance]] = {
    "backpack": ("backpack", Instance("school_satchel", "noto")),
    "backpack_dog": ("backpack", Instance("school_satchel", "twemoji", 200, overlay="dog")),
    "bear_plushie": ("stuffed animal", Instance("teddy_bear", "noto")),
    "berry_bowl": ("bowl", Instance("bowl_with_spoon", "twemoji", 0, overlay="strawberry")),
    "can": ("can", Instance("canned_food", "noto")),
    "candle": ("candle", Instance("candle", "noto")),
    "cat": ("cat", Instance("cat2", "noto")),
    "cat2": ("cat", Instance("cat", "twemoji", 200)),
    "clock": ("clock", Instance("mantelpiece_clock", "noto")),
    "colorful_sneaker": ("sneaker", Instance("athletic_shoe", "twemoji", 110)),
    "dog": ("dog", Instance("dog2", "noto")),
    "dog2": ("dog", Instance("poodle", "twemoji")),
    "dog3": ("dog", Instance("dog", "noto", 200)),
    "dog5": ("dog", Instance("guide_dog", "noto")),
    "dog6": ("dog", Instance("dog", "twemoji", 110)),
    "dog7": ("dog", Instance("dog2", "twemoji", 300)),
    "dog8": ("dog", Instance("service_dog", "twemoji", 200)),
    "duck_toy": ("toy", Instance("duck", "noto")),
    "fancy_boot": ("boot", Instance("boot", "noto")),
    "grey_sloth_plushie": ("stuffed animal", Instance("sloth", "noto")),
    "monster_toy": ("toy", Instance("space_invader", "noto")),
    "pink_sunglasses": ("glasses", Instance("dark_sunglasses", "noto", 300)),
    "poop_emoji": ("toy", Instance("hankey", "noto")),
    "rc_car": ("toy", Instance("racing_car", "noto")),
    "red_cartoon": ("cartoon", Instance("japanese_ogre", "noto")),
    "robot_toy": ("toy", Instance("robot_face", "noto")),
    "shiny_sneaker": ("sneaker", Instance("mans_shoe", "noto", 200)),
    "teapot": ("teapot", Instance("teapot", "noto")),
    "vase": ("vase", Instance("amphora", "noto")),
    "wolf_plushie": ("stuffed animal", Instance("wolf", "noto")),
}

# Validation subjects: never-seen instances that are neither EmojiBench subjects nor in training (a hue no
# training instance wears, or an overlay), with DreamBench's mix of live and object classes. Settings such as
# sampling defaults are chosen on these, so that EmojiBench stays a test set.
VALIDATION: dict[str, tuple[str, Instance]] = {
    "val_dog": ("dog", Instance("poodle", "noto", 0, overlay="star")),
    "val_dog2": ("dog", Instance("guide_dog", "twemoji", 250)),
    "val_dog3": ("dog", Instance("dog", "twemoji", 250)),
    "val_cat": ("cat", Instance("smiley_cat", "noto", 120)),
    "val_cat2": ("cat", Instance("cat2", "twemoji", 240)),
    "val_sneaker": ("sneaker", Instance("athletic_shoe", "noto", 200)),
    "val_boot": ("boot", Instance("hiking_boot", "twemoji", 200)),
    "val_kite": ("toy", Instance("kite", "noto", 200)),
    "val_dolls": ("toy", Instance("nesting_dolls", "twemoji", 0, overlay="star")),
    "val_teddy": ("stuffed animal", Instance("teddy_bear", "twemoji", 100)),
    "val_bowl": ("bowl", Instance("ramen", "noto", 0, overlay="strawberry")),
    "val_ogre": ("cartoon", Instance("japanese_ogre", "twemoji", 120)),
    "val_clock": ("clock", Instance("alarm_clock", "twemoji", 160)),
    "val_glasses": ("glasses", Instance("eyeglasses", "noto", 160)),
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


def caption(class_noun: str, context: str | None, article: str = "a") -> str:
    """'a dog on the beach', 'a red dog', 'a dog' — DreamBench's wording."""
    if context in EDITS:
        return f"{article} {context} {class_noun}"
    return f"{article} {class_noun} {context}" if context else f"{article} {class_noun}"


def held_out() -> set[tuple[str, str]]:
    """(emoji, style) pairs that training never shows at hue 0 or at a subject's hue."""
    return {(inst.emoji, inst.style) for _, inst in SUBJECTS.values() if inst.hue == 0 and not inst.overlay}


def training_instances() -> dict[str, list[Instance]]:
    """Every class's instances for base-model training; no EmojiBench subject among them."""
    subjects = {inst for _, inst in SUBJECTS.values()}
    hidden = held_out()
    out = {}
    for noun, names in CLASSES.items():
        hues = TRAIN_HUES if len(names) <= THIN else (0,)
        out[noun] = [Instance(n, s, h) for n in names for s in ("twemoji", "noto") for h in hues
                     if (n, s) not in hidden and Instance(n, s, h) not in subjects]
    return out


def contexts_for(class_noun: str) -> list[str]:
    return SCENES + EDITS + (OUTFITS if class_noun in LIVE_CLASSES else [])
