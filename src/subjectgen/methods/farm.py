"""SuTI's training data: the expert farm and its ΔCLIP filter (`subjectgen apprentice experts`, `... filter`).

The farm's layout (an expert is done when its expert.json exists; it is written last, so a killed farm resumes
where it stopped, an unfinished expert from its LoRA run's last checkpoint):

    FARM/farm.json                     the farm's settings and base model
    FARM/experts/NAME/photos/NN.png    the cluster's 3-5 photos: the apprentice's demonstrations
    FARM/experts/NAME/run/             the expert: an ordinary LoRA run folder (subjectgen's own method and loop)
    FARM/experts/NAME/images/          what it drew, one image per prompt (generate's layout)
    FARM/experts/NAME/expert.json      its prompts, seeds and timings
    FARM/filter.json                   the filter's thresholds, every image's scores, which were kept

The filter is SuTI's rule made concrete: keep an expert image when it follows its prompt clearly better than the
demonstrations do, CLIP-T(image, prompt) - mean CLIP-T(demos, prompt) >= tau_t, and is still the subject, its
mean image similarity to the demonstrations >= tau_s. Its CLIP is the generator side's (the built-in image
encoder and the base model's own text encoder), never the evaluators', so the apprentice is not taught the judge.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..adapters import MANIFEST
from ..config import FILTER_TAU_S, FILTER_TAU_T, FarmSettings
from ..errors import UserError
from ..photos import open_photo
from ..safeio import atomic_save_image, atomic_write_json, read_json
from ..settings import ANY_FINITE

FARM, EXPERTS, EXPERT, FILTER = "farm.json", "experts", "expert.json", "filter.json"
FARM_FIX = "the farm is damaged; restore the file, or make the farm again in a new --out"
EXPERT_FIX = "remove the expert's folder {folder} and rerun 'subjectgen apprentice experts' to redo it"
# the keys each record is read by: valid JSON without one is a damaged record, not a KeyError later
FARM_KEYS, EXPERT_KEYS, FILTER_KEYS = ("model",), ("class", "images", "prompts", "train_seconds",
                                                 "generate_seconds"), ("images",)


@dataclass
class Cluster:
    name: str
    noun: str
    photos: Callable[[], list]       # rendered or read when its expert runs
    prompts: list[str]               # templates with {subject}


def clusters_of(settings: FarmSettings) -> list[Cluster]:
    if settings.clusters == "world":
        from ..world.experts import expert_photos, expert_prompts, expert_subjects

        return [Cluster(name, noun, lambda inst=inst: expert_photos(inst), expert_prompts(noun))
                for name, noun, inst in expert_subjects(settings.count, settings.seed)]
    from ..eval.prompts import read_benchmark
    from ..photos import check_subject_folder

    bench = read_benchmark(Path(settings.clusters))
    check_cluster_sizes(bench)
    return [Cluster(name, noun, lambda name=name, noun=noun: check_subject_folder(bench.root / name, noun)[1],
                    bench.prompts_for(name)) for name, noun in bench.classes.items()]


def check_cluster_sizes(bench) -> None:
    """Each cluster of a --clusters folder is a subject of 3+ photos (the apprentice's fewest demonstrations)."""
    from ..photos import photo_paths
    from .apprentice import MIN_DEMOS

    for name in bench.classes:
        count = len(photo_paths(bench.root / name))
        if count < MIN_DEMOS:
            raise UserError(f"--clusters {bench.root}: subject {name} has {count} photo{'s' * (count != 1)}; each "
                            f"cluster needs {MIN_DEMOS} or more: add photos or remove the subject from the folder")


# --- the experts --------------------------------------------------------------------------------------------------
def run_farm(out: Path, settings: FarmSettings, progress: bool = True) -> dict:
    """Train and sample every cluster's expert that is not done; under a launcher (RANK / WORLD_SIZE) this process
    takes clusters rank, rank + world, ... . Returns the farm's throughput so far."""
    from ..eval.bench import process_rank

    out = Path(out)
    check_farm_settings(out, settings)
    rank, world = process_rank()
    clusters = clusters_of(settings)
    mine = [(i, c) for i, c in enumerate(clusters) if i % world == rank]
    for done, (index, cluster) in enumerate(mine):
        fresh = not (out / EXPERTS / cluster.name / EXPERT).is_file()
        record = run_expert(out / EXPERTS / cluster.name, cluster, settings, index, rank)
        if progress and fresh:  # a resumed farm reports only what it made now
            print(f"[farm {rank}/{world}] {done + 1}/{len(mine)} {cluster.name}: "
                  f"{record['train_seconds'] + record['generate_seconds']:.0f}s", flush=True)
    return throughput(out)


def check_farm_settings(out: Path, settings: FarmSettings) -> None:
    """farm.json: written once; a later call may grow --count, and must otherwise be the same farm."""
    from .. import assets

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the farm")
    path = out / FARM
    wanted = {**asdict(settings), "assets": [assets.record("model", settings.model)]}
    if path.is_file():
        saved = read_json(path, FARM_FIX.format(out=out), (*FARM_KEYS, "count"))
        differ = [k for k in wanted if k != "count" and saved.get(k) != wanted[k]]
        if differ:
            raise UserError(f"{out} holds a farm with another {differ[0]} ({saved.get(differ[0])!r}, not "
                            f"{wanted[differ[0]]!r}); use the same settings to resume or grow it, or another --out")
        if saved["count"] >= settings.count:
            return
    elif out.exists() and any(not e.name.startswith(".") for e in out.iterdir()):  # another rank's temp is fine
        raise UserError(f"--out {out} is not empty and holds no farm; choose a new or empty folder")
    atomic_write_json(path, wanted)


def run_expert(folder: Path, cluster: Cluster, settings: FarmSettings, index: int, rank: int = 0) -> dict:
    """One cluster's expert: its photos, a LoRA run on them (resumed if it was cut off), then its images."""
    from ..config import TrainConfig
    from ..generation import generate_to_folder
    from ..training import train

    if (folder / EXPERT).is_file():
        if settings.clusters != "world":  # a user's photos may change; the world's renders do not
            check_started_on(folder, cluster.photos())
        return read_json(folder / EXPERT, EXPERT_FIX.format(folder=folder), EXPERT_KEYS)
    photos = cluster.photos()
    check_started_on(folder, photos)
    cfg = TrainConfig(method="lora", model=settings.model, subject_dir=str(folder / "photos"),
                      class_noun=cluster.noun, out=str(folder / "run"), steps=settings.expert_steps,
                      seed=settings.seed + index, checkpoint_every=100)
    trains = not (folder / "run" / MANIFEST).is_file()
    if trains:
        check_same_experts(folder.parent, cfg)
    for k, photo in enumerate(photos):
        atomic_save_image(folder / "photos" / f"{k:02d}.png", photo)
    started = time.perf_counter()
    if trains:
        train(cfg, resume=True, progress=False, distributed=False)
    trained = time.perf_counter()
    rng = random.Random(f"prompts|{cluster.name}|{settings.seed}")
    templates = rng.sample(cluster.prompts, min(settings.images, len(cluster.prompts)))
    seed = 1000 * index
    result = generate_to_folder(str(folder / "run"), templates, folder / "images", n=1, seed=seed,
                                steps=settings.sample_steps, guidance=settings.guidance)
    record = {"name": cluster.name, "class": cluster.noun, "photos": len(photos), "templates": templates,
              "prompts": [t.replace("{subject}", cluster.noun) for t in templates],
              "images": [f"images/{f.name}" for f in result.files], "seed": seed, "rank": rank,
              "train_seconds": round(trained - started, 2), "generate_seconds": round(time.perf_counter() - trained, 2)}
    atomic_write_json(folder / EXPERT, record)
    return record


def check_same_experts(experts: Path, cfg) -> None:
    """An expert about to train gets the LoRA defaults the farm's finished experts got: a version whose LoRA
    defaults changed (the fair comparison's choice became them) would otherwise grow one farm of two kinds."""
    from ..config import defaults_changed

    done = min(experts.glob(f"*/run/{MANIFEST}"), default=None)
    changed = defaults_changed(None if done is None else read_json(done, EXPERT_FIX.format(folder=done.parent.parent),
                                                                     ("resolution",)), cfg)
    if changed:
        raise UserError(f"the farm's experts in {experts} were trained at other LoRA defaults than this version's "
                        f"({', '.join(changed)}); grow it with the version that began it, or start a new farm")


def check_started_on(folder: Path, photos: list) -> None:
    """An expert resumes (or a farm grows) only on the photos it started with: a cluster whose photos changed since
    is refused (before its folder is touched), not resumed on other data, nor kept beside experts of the new ones."""
    import numpy as np

    saved = sorted((folder / "photos").glob("*.png"))
    if not saved or not (folder / "run").is_dir():
        return
    if len(saved) != len(photos) or any(not np.array_equal(np.asarray(open_photo(p)), np.asarray(q.convert("RGB")))
                                        for p, q in zip(saved, photos)):
        raise UserError(f"the photos of cluster {folder.name} changed since its expert started in {folder}; restore "
                        "them, or remove that folder to redo the expert")


def done_experts(out: Path) -> list[tuple[Path, dict]]:
    folder = Path(out) / EXPERTS
    paths = sorted(folder.glob(f"*/{EXPERT}")) if folder.is_dir() else []
    return [(p.parent, read_json(p, EXPERT_FIX.format(folder=p.parent), EXPERT_KEYS)) for p in paths]


def throughput(out: Path) -> dict:
    """Experts and images per hour of one process, from the finished experts' own timings."""
    experts = [r for _, r in done_experts(out)]
    seconds = sum(r["train_seconds"] + r["generate_seconds"] for r in experts)
    images = sum(len(r["images"]) for r in experts)
    return {"experts": len(experts), "images": images, "seconds": round(seconds, 1),
            "experts_per_hour": round(3600 * len(experts) / seconds, 1) if seconds else None,
            "images_per_hour": round(3600 * images / seconds, 1) if seconds else None}


def read_farm(out: Path, need_filter: bool = True) -> dict:
    """The farm's settings; one-line errors for a folder that is no farm, has no expert yet, or is unfiltered."""
    out = Path(out)
    if not (out / FARM).is_file():
        raise UserError(f"{out} is not an expert farm (no {FARM}); make one with 'subjectgen apprentice experts "
                        f"--out {out}'")
    settings = read_json(out / FARM, FARM_FIX.format(out=out), FARM_KEYS)
    if not done_experts(out):
        raise UserError(f"the farm {out} has no finished expert yet; run 'subjectgen apprentice experts --out {out}'")
    if need_filter and not (out / FILTER).is_file():
        raise UserError(f"the farm {out} is not filtered yet; run 'subjectgen apprentice filter {out}' first")
    return settings


# --- the filter ---------------------------------------------------------------------------------------------------
class GeneratorClip:
    """The generator side's CLIP: the image encoder's projected features against the base text encoder's pooled
    state through the projection trained with it (world train-image-encoder's text_projection.safetensors)."""

    def __init__(self, encoder_ref: str, components):
        from safetensors.torch import load_file

        from ..assets import resolve
        from ..vision import load_image_encoder

        self.encoder = load_image_encoder(encoder_ref)
        path = Path(resolve("image_encoder", encoder_ref)) / "text_projection.safetensors"
        if not path.is_file() or not hasattr(self.encoder, "visual_projection"):
            raise UserError(f"the image encoder {encoder_ref} has no text projection beside it (text_projection."
                            "safetensors, as 'subjectgen world train-image-encoder' writes); the filter needs both")
        self.projection = load_file(str(path))["weight"].float()
        self.components = components
        width = components.text_encoder.config.hidden_size
        if self.projection.shape[1] != width:
            raise UserError(f"the image encoder {encoder_ref} was trained against a text encoder of width "
                            f"{self.projection.shape[1]}, and the farm's model {components.ref} has width {width}; "
                            "train one for that model with 'subjectgen world train-image-encoder --model "
                            f"{components.ref}' and pass it as --image-encoder")

    @torch.no_grad()
    def images(self, images: list) -> torch.Tensor:
        from .apprentice import image_processor

        pixels = image_processor(self.encoder)(images, return_tensors="pt").pixel_values
        return torch.nn.functional.normalize(self.encoder(pixel_values=pixels).image_embeds.float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        c = self.components
        ids = c.tokenizer(texts, padding="max_length", max_length=c.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
        pooled = c.text_encoder(ids.to(c.text_encoder.device)).pooler_output.float().cpu()
        return torch.nn.functional.normalize(pooled @ self.projection.t(), dim=-1)


def delta_clip(clip: GeneratorClip, images: list, demos: list, prompts: list[str]) -> tuple[list, list]:
    """Per image: CLIP-T(image, prompt) - mean CLIP-T(demos, prompt), and mean cosine(image, demos)."""
    out, ref, text = clip.images(images), clip.images(demos), clip.texts(prompts)
    follows = (out * text).sum(-1) - (text @ ref.t()).mean(-1)
    likeness = (out @ ref.t()).mean(-1)
    return follows.tolist(), likeness.tolist()


def keep(delta_t: float, similarity: float, tau_t: float, tau_s: float) -> bool:
    return delta_t >= tau_t and similarity >= tau_s


def filter_farm(out: Path, tau_t: float = FILTER_TAU_T, tau_s: float = FILTER_TAU_S,
                image_encoder: str = "builtin") -> dict:
    """Score every expert image, keep those that pass both thresholds; filter.json and kept/dropped sheets."""
    from .. import assets
    from ..models import load_model
    from ..sampling import make_grid

    ANY_FINITE.check("--tau-t", tau_t)
    ANY_FINITE.check("--tau-s", tau_s)
    settings = read_farm(out, need_filter=False)
    clip = GeneratorClip(image_encoder, load_model(settings["model"]))
    rows = []
    for folder, record in done_experts(out):
        images = [expert_image(folder, name) for name in record["images"]]
        demos = [expert_image(folder, p.relative_to(folder)) for p in sorted((folder / "photos").glob("*.png"))]
        follows, likeness = delta_clip(clip, images, demos, record["prompts"])
        for name, prompt, t, s in zip(record["images"], record["prompts"], follows, likeness):
            rows.append({"expert": folder.name, "image": name, "prompt": prompt, "delta_t": round(t, 4),
                         "similarity": round(s, 4), "kept": keep(t, s, tau_t, tau_s)})
    kept = [r for r in rows if r["kept"]]
    result = {"tau_t": tau_t, "tau_s": tau_s, "image_encoder": assets.record("image_encoder", image_encoder),
              "total": len(rows), "kept": len(kept), "kept_fraction": round(len(kept) / len(rows), 4),
              "experts_with_a_kept_image": len({r["expert"] for r in kept}), "images": rows}
    for label, chosen in (("kept", kept), ("dropped", [r for r in rows if not r["kept"]])):
        picked = random.Random(label).sample(chosen, min(64, len(chosen)))
        if picked:
            sheet = make_grid([open_photo(Path(out) / EXPERTS / r["expert"] / r["image"]) for r in picked], 8)
            atomic_save_image(Path(out) / f"{label}.png", sheet)
    atomic_write_json(Path(out) / FILTER, result)
    return result


def expert_image(folder: Path, name):
    """One image an expert made or holds; a missing or damaged one is a line naming the file and the expert to redo
    (removing the image would not do: the expert's record lists it)."""
    try:
        return open_photo(folder / name)
    except UserError as exc:
        problem = str(exc).split(";")[0]
        raise UserError(f"{problem}; {EXPERT_FIX.format(folder=folder)}") from None


# --- what the apprentice learns from -----------------------------------------------------------------------------
RECONSTRUCTION_VIEWS = 8  # views of each photo, the conditioning of IP-Adapter's reconstruction objective


def triples(out: Path, objective: str, components, encoder, seed: int = 0, progress: bool = False):
    """The farm as (demonstrations, prompt, target) triples (methods.apprentice.Triples). apprenticeship: each kept
    expert image with its prompt and its cluster's photos; reconstruction (IP-Adapter's way, the ablation): each
    photo is the target, with views of itself as the demonstrations and 'a {class}' as its prompt."""
    import hashlib

    from ..photos import center_crop
    from ..subjects import to_tensor
    from ..training.data import LatentCache
    from .apprentice import Triples, demo_states
    from .profusion import photo_views

    size = components.resolution
    kept = set()
    if objective == "apprenticeship":
        rows = read_json(Path(out) / FILTER, f"run 'subjectgen apprentice filter {out}' again", FILTER_KEYS)["images"]
        kept = {(r["expert"], r["image"]) for r in rows if r["kept"]}
        unfiltered = {f.name for f, _ in done_experts(out)} - {r["expert"] for r in rows}
        if unfiltered:
            warnings.warn(f"{len(unfiltered)} experts of {out} finished after its filter ran and are left out; run "
                          f"'subjectgen apprentice filter {out}' again to use them")
    targets, prompts, demos_of, demo_sets, digest, zero = [], [], [], [], hashlib.sha256(), None
    experts = done_experts(out)
    for folder, record in experts:
        photos = [center_crop(expert_image(folder, p.relative_to(folder)), size)
                  for p in sorted((folder / "photos").glob("*.png"))]
        if objective == "apprenticeship":
            chosen = [(n, p) for n, p in zip(record["images"], record["prompts"]) if (folder.name, n) in kept]
            if not chosen:
                continue
            states, zero = demo_states(encoder, photos)
            demo_sets.append(states.half())
            for name, prompt in chosen:
                targets.append(center_crop(expert_image(folder, name), size))
                prompts.append(prompt)
                demos_of.append(len(demo_sets) - 1)
                digest.update(f"{folder.name}/{name}|{prompt}".encode())
        else:
            for k, photo in enumerate(photos):
                views = photo_views(to_tensor(photo), RECONSTRUCTION_VIEWS, seed + k)
                states, zero = demo_states(encoder, views)
                demo_sets.append(states.half())
                targets.append(photo)
                prompts.append(f"a {record['class']}")
                demos_of.append(len(demo_sets) - 1)
                digest.update(f"{folder.name}/{k}".encode())
    if not targets:
        raise UserError(f"the farm {out} has no kept image to learn from (filter.json keeps none); lower the "
                        "filter's thresholds or grow the farm")
    if progress:
        print(f"apprentice: {len(targets)} {objective} triples from {len(experts)} experts", flush=True)
    record = {"farm": str(out), "objective": objective, "experts": len(experts), "targets": len(targets),
              "data_hash": digest.hexdigest()[:16]}
    return Triples(LatentCache(components, targets), prompts, demos_of, demo_sets, zero[0].half(), record)
