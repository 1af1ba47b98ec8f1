"""`subjectgen world build`: render the training set of the built-in world and the EmojiBench subjects.

Training pairs: every class instance x (plain + DreamBench's contexts for its class) x seeds, captioned in
DreamBench's wording ("a dog on the beach", "a red dog", "a dog wearing a santa hat"). EmojiBench subjects
and the validation subjects (catalog.VALIDATION) are never rendered into the training set.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..safeio import atomic_dir
from ..subjects import MASK_FOLDER
from .catalog import SUBJECTS, caption, contexts_for, training_instances
from .scene import render_photo, render_scene

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PROMPTS_FILE = ASSETS / "dreambench_prompts_and_classes.txt"  # DreamBench's file, verbatim (CC-BY-4.0)
EMOJIBENCH = ASSETS / "emojibench"
PHOTOS_PER_SUBJECT = 5


def training_items(seeds: int, instances: dict | None = None, first_seed: int = 0) -> list[tuple]:
    """(class, instance, context, seed) for every instance x (plain + its class's contexts) x seeds."""
    items = []
    for noun, insts in (instances or training_instances()).items():
        for inst in insts:
            for context in [None] + contexts_for(noun):
                for s in range(seeds if context is None else max(1, seeds // 2)):
                    items.append((noun, inst, context, first_seed + s))
    return items


def evaluator_items(seeds: int) -> list[tuple]:
    """The evaluators' data: the whole world, EmojiBench subjects included (an evaluator should know
    every object, as real CLIP and DINO have seen dogs), rendered with seeds the generator never used."""
    instances = training_instances()
    for noun, inst in SUBJECTS.values():
        instances[noun] = instances[noun] + [inst]
    return training_items(seeds, instances, first_seed=1000)


def _render(item) -> tuple[np.ndarray, str]:
    noun, inst, context, seed = item
    return np.asarray(render_scene(inst, context, seed)), caption(noun, context)


def render_training_set(seeds: int = 4, workers: int = 2, items: list[tuple] | None = None) -> tuple[np.ndarray, list[str]]:
    items = items if items is not None else training_items(seeds)
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_render, items, chunksize=64))
    return np.stack([r[0] for r in results]), [r[1] for r in results]


def data_hash(images: np.ndarray, captions: list[str]) -> str:
    digest = hashlib.sha256(images.tobytes())
    digest.update("\n".join(captions).encode())
    return digest.hexdigest()[:16]


def write_training_set(out: Path, seeds: int = 4, workers: int = 2) -> dict:
    images, captions = render_training_set(seeds, workers)
    info = {"count": len(captions), "seeds": seeds, "hash": data_hash(images, captions),
            "captions": len(set(captions))}
    with atomic_dir(Path(out)) as tmp:
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


def write_emojibench(out: Path = EMOJIBENCH, subjects: dict | None = None) -> Path:
    """EmojiBench in DreamBench's layout: one folder of photos per subject plus prompts_and_classes.txt;
    each subject folder also holds masks/ (the subject's pixels in each photo) for --masked-loss.
    `subjects` (default: EmojiBench's) writes another subject set, such as VALIDATION, in the same layout."""
    subjects = SUBJECTS if subjects is None else subjects
    with atomic_dir(Path(out)) as tmp:
        for name, (_, inst) in subjects.items():
            (tmp / name / MASK_FOLDER).mkdir(parents=True)
            for k in range(PHOTOS_PER_SUBJECT):
                photo, mask = render_photo(inst, k)
                photo.save(tmp / name / f"{k:02d}.png", optimize=True)
                mask.save(tmp / name / MASK_FOLDER / f"{k:02d}.png", optimize=True)
        (tmp / "prompts_and_classes.txt").write_text(prompts_file(subjects))
        mapping = {name: {"class": noun, "emoji": inst.emoji, "style": inst.style, "hue": inst.hue,
                          "overlay": inst.overlay} for name, (noun, inst) in subjects.items()}
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
