"""The built-in world's clusters for the apprentice's expert farm (`subjectgen apprentice experts --clusters world`).

A cluster is one subject's 3-5 photos, taken the way EmojiBench's are (scene.render_photo: in two or three
places, at varied scale and position), and the prompts its expert draws it in: the world's contexts for its
class, in DreamBench's wording. The subjects are composed instances drawn fresh from outside the reserved
region (catalog.is_reserved: never an EmojiBench, validation or later test subject, nor a near neighbour of
one), particular along at least two axes, as a test subject is.
"""

from __future__ import annotations

import random

from .catalog import CLASSES, STYLES, Instance, caption, check_draw, contexts_for, is_reserved, random_instance
from .scene import render_photo

PHOTO_SEED = 30_000  # photo seeds no training or evaluator set uses


def expert_subjects(count: int, seed: int = 0) -> list[tuple[str, str, Instance]]:
    """`count` (name, class, instance) triples, cycling through the classes; deterministic in `seed`."""
    rng, names = random.Random(f"farm|{seed}"), list(CLASSES)
    check_draw(count, names, lambda inst: len(inst.attributes()) >= 2 and not is_reserved(inst),
               "the world outside its reserved region")
    out, seen = [], set()
    while len(out) < count:
        noun = names[len(out) % len(names)]
        emoji, style = rng.choice(CLASSES[noun]), rng.choice(STYLES)
        inst = random_instance(emoji, style, rng)
        if len(inst.attributes()) >= 2 and not is_reserved(inst) and inst not in seen:
            seen.add(inst)
            out.append((f"{noun.replace(' ', '_')}_{len(out):05d}", noun, inst))
    return out


def expert_photos(inst: Instance) -> list:
    """3 to 5 photos of the subject in its places."""
    count = 3 + random.Random(f"farm-count|{inst}").randrange(3)
    return [render_photo(inst, PHOTO_SEED + k)[0] for k in range(count)]


def expert_prompts(noun: str) -> list[str]:
    """The class's contexts as prompt templates: 'a {subject} on the beach', 'a red {subject}'."""
    return [caption("{subject}", context) for context in contexts_for(noun)]
