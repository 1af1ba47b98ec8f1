"""`subjectgen world build`: render the training set of the built-in world and the EmojiBench subjects.

Training pairs: every class instance x (plain + DreamBench's contexts for its class) x seeds, captioned in
DreamBench's wording ("a dog on the beach", "a red dog", "a dog wearing a santa hat"), now and then naming an
attribute ("a striped dog"). Nothing of the reserved region (EmojiBench, the validation subjects, any later
test set) is ever rendered into the training or evaluator sets.
"""

from __future__ import annotations

import hashlib
import json
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..assets import ASSETS, EMOJIBENCH  # noqa: F401 - EMOJIBENCH is world.build's to name
from ..safeio import check_output_dir, output_dir, read_json
from ..photos import MASK_FOLDER
from .catalog import SUBJECTS, attribute_phrase, caption, contexts_for, training_instances
from .render import PHOTO_SETTINGS, colour_name
from .scene import photo_count, render_photo, render_scene

PROMPTS_FILE = ASSETS / "dreambench_prompts_and_classes.txt"  # DreamBench's file, verbatim (CC-BY-4.0)


def training_items(seeds: int, instances: dict | None = None, first_seed: int = 0) -> list[tuple]:
    """(class, instance, context, seed): each class's plain emoji in plain + every context of its class + every
    photo place (`seeds` plain renders, half as many per context), and each composed instance `seeds` times in a
    context drawn for it. Never a reserved instance (catalog.training_instances)."""
    items = []
    for noun, insts in (instances or training_instances()).items():
        contexts = contexts_for(noun) + PHOTO_SETTINGS
        for inst in insts:
            if not inst.attributes():
                for context in [None] + contexts:
                    for s in range(seeds if context is None else max(1, seeds // 2)):
                        items.append((noun, inst, context, first_seed + s))
                continue
            rng = random.Random(f"contexts|{inst}|{first_seed}")
            for s in range(seeds):
                items.append((noun, inst, rng.choice([None, None, *contexts]), first_seed + s))
    return items


def evaluator_items(seeds: int) -> list[tuple]:
    """The evaluators' data: the training world rendered with seeds the generator never used. No benchmark
    subject and nothing else from the reserved region, as no real CLIP or DINO saw the DreamBench subjects."""
    return training_items(seeds, first_seed=1000)


def _render(item) -> tuple[np.ndarray, str]:
    noun, inst, context, seed = item
    named = attribute_phrase(inst, colour_name(inst), random.Random(f"caption|{inst}|{context}|{seed}"))
    return np.asarray(render_scene(inst, context, seed)), caption(noun, context, named=named)


def render_training_set(seeds: int = 4, workers: int = 2, items: list[tuple] | None = None) -> tuple[np.ndarray, list[str]]:
    items = items if items is not None else training_items(seeds)
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_render, items, chunksize=64))
    return np.stack([r[0] for r in results]), [r[1] for r in results]


def data_hash(images: np.ndarray, captions: list[str]) -> str:
    digest = hashlib.sha256(images.tobytes())
    digest.update("\n".join(captions).encode())
    return digest.hexdigest()[:16]


TRAINING_SET_MANIFEST, BENCH_MANIFEST = "info.json", "subjects.json"


def write_training_set(out: Path, seeds: int = 4, workers: int = 2, overwrite: bool = False) -> dict:
    check_output_dir(out, TRAINING_SET_MANIFEST, overwrite, "--training-set")
    images, captions = render_training_set(seeds, workers)
    info = {"count": len(captions), "seeds": seeds, "hash": data_hash(images, captions),
            "captions": len(set(captions))}
    with output_dir(Path(out), TRAINING_SET_MANIFEST, overwrite, "--training-set") as tmp:
        np.save(tmp / "images.npy", images)
        (tmp / "captions.json").write_text(json.dumps(captions))
        (tmp / "info.json").write_text(json.dumps(info, indent=1))
    return info


def subject_class(name: str) -> str:
    """The class noun of an EmojiBench subject; a one-line error for an unknown name."""
    from ..errors import UserError

    if name not in SUBJECTS:
        raise UserError(f"unknown EmojiBench subject '{name}'; choose one of: {', '.join(SUBJECTS)}")
    return SUBJECTS[name][0]


def write_emojibench(out: Path = EMOJIBENCH, subjects: dict | None = None, overwrite: bool = False) -> Path:
    """EmojiBench in DreamBench's layout: one folder of photos per subject plus prompts_and_classes.txt;
    each subject folder also holds masks/ (the subject's pixels in each photo) for --masked-loss.
    `subjects` (default: EmojiBench's) writes another subject set, such as VALIDATION, in the same layout."""
    subjects = SUBJECTS if subjects is None else subjects
    with output_dir(Path(out), BENCH_MANIFEST, overwrite) as tmp:
        for name, (_, inst) in subjects.items():
            (tmp / name / MASK_FOLDER).mkdir(parents=True)
            for k in range(photo_count(inst)):
                photo, mask = render_photo(inst, k)
                photo.save(tmp / name / f"{k:02d}.png", optimize=True)
                mask.save(tmp / name / MASK_FOLDER / f"{k:02d}.png", optimize=True)
        (tmp / "prompts_and_classes.txt").write_text(prompts_file(subjects))
        mapping = {name: {"class": noun, **asdict(inst)} for name, (noun, inst) in subjects.items()}
        (tmp / "subjects.json").write_text(json.dumps(mapping, indent=1))
    return Path(out)


def prompts_file(subjects: dict) -> str:
    """DreamBench's prompts_and_classes.txt (verbatim for EmojiBench) with these subjects in its class list."""
    text = PROMPTS_FILE.read_text()
    if subjects is SUBJECTS:
        return text
    _, rest = text.split("\nPrompts\n", 1)
    rows = "".join(f"{name},{noun}\n" for name, (noun, _) in subjects.items())
    return f"Classes\n\nsubject_name,class\n{rows}\nPrompts\n{rest}"


def bench_instances(root: Path) -> dict[str, tuple[str, object]] | None:
    """A world-made bench folder's subjects as (class, Instance), from its subjects.json; None for a folder the
    world did not make (no subjects.json, or one that names no instances). A one-line error for an instance
    the world cannot render."""
    from ..errors import UserError
    from .catalog import CLASSES, STYLES, Instance
    from .emoji import catalog as emoji_catalog

    path = Path(root) / "subjects.json"
    if not path.is_file():
        return None
    mapping = read_json(path, "rebuild it with 'subjectgen world reserved'")
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) and "emoji" in v for v in mapping.values()):
        return None
    out = {}
    for name, entry in mapping.items():
        fields = {k: v for k, v in entry.items() if k != "class"}
        try:
            inst = Instance(**fields)
        except TypeError:
            raise UserError(f"{path}: subject '{name}' has fields the world does not know "
                            f"({', '.join(sorted(fields))})") from None
        if not valid_axes(inst):
            raise UserError(f"{path}: subject '{name}' has an attribute the world does not have ({inst}); the "
                            "axes are hue (0-345 in 15s), overlay, pattern, tone (0, 90, 180) and accessory")
        if entry.get("class") not in CLASSES or inst.style not in STYLES or inst.emoji not in emoji_catalog():
            raise UserError(f"{path}: subject '{name}' names an instance the world cannot render (class "
                            f"{entry.get('class')!r}, emoji {inst.emoji!r}, style {inst.style!r})")
        out[name] = (entry["class"], inst)
    return out


def valid_axes(inst) -> bool:
    """Each attribute of an instance is a value of its axis (a bench folder's subjects.json may say anything)."""
    from .catalog import ACCESSORIES, HUES, PATTERNS, STICKERS, TONES

    allowed = {"hue": HUES, "overlay": STICKERS, "pattern": PATTERNS, "tone": TONES, "accessory": ACCESSORIES}
    return all(not isinstance(getattr(inst, k), bool) and getattr(inst, k) in values for k, values in allowed.items())


def render_prompt(noun: str, inst, prompt: str, seed: int):
    """The world's own picture of this instance in a DreamBench prompt's context ('a dog on the beach'): what a
    perfect method would draw."""
    from ..errors import UserError

    context_of = {caption(noun, c): c for c in [None, *contexts_for(noun)]}
    if prompt not in context_of:
        raise UserError(f"the prompt '{prompt}' is not one of the world's contexts for a {noun}; a perfect render "
                        "needs DreamBench's prompts")
    return render_scene(inst, context_of[prompt], seed)
