"""What a training step draws from: cached latent distributions, cached text embeddings, class images."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..assets import cache_dir
from ..models import Components
from ..safeio import atomic_dir
from ..sampling import generate
from ..photos import center_crop, fit, open_photo
from ..subjects import crop_box, to_tensor


@dataclass
class SubjectData:
    """What a subject method's steps draw from: the photos' latents, and the class images' with their prompt
    when prior preservation is on. A method's `batch` hook turns a data source into a Batch; other sources
    (an image-caption dataset, demonstration triples) plug into the same loop the same way."""

    instance: "LatentCache"
    classes: "LatentCache | None" = None
    class_prompt: str = ""


@dataclass
class Draw:
    """Latents drawn from a cache, with their images' latent masks (or None), per-image conditioning (the
    family's, e.g. SDXL's time ids; empty for most) and the (width, height) of the bucket they came from."""

    latents: torch.Tensor
    masks: torch.Tensor | None
    conditioning: dict
    bucket: tuple[int, int]
    images: list[int]  # which image (its position in the cache's list) each latent came from


@dataclass
class Group:
    """The images of one size (one aspect-ratio bucket): their posteriors, masks and conditioning."""

    mean: torch.Tensor
    std: torch.Tensor
    masks: torch.Tensor | None
    conditioning: dict


class LatentCache:
    """The VAE posterior (mean, std) of each image, encoded once; a draw samples from it. With masks
    ((N, 1, H, W) in [0, 1]), each image also keeps its mask averaged down to the latent grid. `sizes`: each
    image's (original height, width, crop top, crop left), for a family that conditions on them (SDXL);
    default: as generated at the model's resolution. Images of several sizes (aspect-ratio buckets) are kept
    by size, and a draw takes all its latents from one size: that of a random image, or the `bucket` it is
    given. `fit_to`: buckets to fit every image to (the class images, cut to the photos' buckets)."""

    def __init__(self, components: Components, images: list[Image.Image], masks: list[Image.Image] | None = None,
                 batch_size: int = 8, sizes: list[tuple[int, int, int, int]] | None = None,
                 fit_to: list[tuple[int, int]] | None = None):
        if fit_to:
            images, sizes = [fit(im, b) for b in fit_to for im in images], \
                [crop_box(im.size, b) for b in fit_to for im in images]
        self.bucket_of = [im.size for im in images]  # (width, height) of each image
        self.members = {b: [i for i, size in enumerate(self.bucket_of) if size == b] for b in self.bucket_of}
        size = components.resolution
        sizes = sizes or [(size, size, 0, 0)] * len(images)
        self.groups = {}
        for bucket, index in self.members.items():
            self.groups[bucket] = self.encode(components, [images[i] for i in index],
                                              None if masks is None else [masks[i] for i in index],
                                              [sizes[i] for i in index], batch_size)
        self.scale, self.shift = components.backbone.latent_scaling(components)

    @staticmethod
    def encode(components: Components, images: list[Image.Image], masks, sizes, batch_size: int) -> Group:
        family = components.backbone
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = torch.stack([to_tensor(im) for im in images[start:start + batch_size]])
                mean, std = family.posterior(components, pixels)
                means.append(mean.float().cpu())
                stds.append(std.float().cpu())
        mean = torch.cat(means)
        latent_masks = None if masks is None else F.interpolate(
            torch.stack([torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None] for m in masks]),
            size=mean.shape[-2:], mode="area")
        return Group(mean, torch.cat(stds), latent_masks, family.image_conditioning(sizes, components.resolution))

    def __len__(self) -> int:
        return len(self.bucket_of)

    def draw(self, count: int, generator: torch.Generator, bucket: tuple[int, int] | None = None) -> Draw:
        """`count` latents sampled from random images' posteriors (all of one bucket), with those images' masks
        and conditioning."""
        if bucket is None and len(self.groups) > 1:
            bucket = self.bucket_of[int(torch.randint(len(self), (1,), generator=generator))]
        bucket = bucket or next(iter(self.groups))
        group = self.groups[bucket]
        index = torch.randint(len(group.mean), (count,), generator=generator)
        masks = None if group.masks is None else group.masks[index]
        latents = self.sample(index, generator, bucket)
        images = [self.members[bucket][i] for i in index.tolist()]
        return Draw(latents, masks, {k: v[index] for k, v in group.conditioning.items()}, bucket, images)

    def sample(self, index: torch.Tensor, generator: torch.Generator,
               bucket: tuple[int, int] | None = None) -> torch.Tensor:
        """One latent from each indexed image's posterior (indices within the bucket; default: the only one),
        scaled as the denoiser sees latents."""
        group = self.groups[bucket or next(iter(self.groups))]
        noise = torch.randn(group.mean[index].shape, generator=generator)
        latents = group.mean[index] + group.std[index] * noise
        return (latents - self.shift) * self.scale if self.shift else latents * self.scale

    @property
    def buckets(self) -> list[tuple[int, int]]:
        return list(self.groups)


class TextCache:
    """The text conditioning of fixed prompts, when no text encoder trains: computed once, kept per prompt."""

    def __init__(self, components: Components, prompts: list[str]):
        with torch.no_grad():
            cond = components.backbone.encode_text(components, prompts)
        self.by_prompt = {p: {k: v[i] for k, v in cond.items()} for i, p in enumerate(prompts)}

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([self.by_prompt[p][k] for p in prompts]) for k in self.by_prompt[prompts[0]]}


def generation_key(model_ref: str, **spec) -> str:
    """A cache key for images the frozen base model makes: the model by its files' hash where it is local (so new
    weights under the same name or path, e.g. an upgraded built-in model, never reuse old images), else its
    reference (a hub id), and every setting that decides the images."""
    from ..assets import fingerprint

    path = Path(model_ref)
    model = fingerprint("model", model_ref) or (str(path.resolve()) if path.exists() else model_ref)
    return hashlib.sha256(json.dumps({"model": model, **spec}, sort_keys=True).encode()).hexdigest()[:20]


def cached_images(kind: str, key: str, make: Callable[[], list[Image.Image]], about: dict, is_main: bool = True,
                  wait=lambda: None) -> tuple[list[Image.Image], Path]:
    """The images under cache_dir()/kind/key and that folder: made by `make` the first time and written all at once
    (by the main process; the others `wait` for it, then read), with done.json saying what they are (`about`)."""
    folder = cache_dir() / kind / key
    if is_main and not (folder / "done.json").is_file():
        with atomic_dir(folder) as tmp:
            images = make()
            for i, image in enumerate(images):
                image.save(tmp / f"{i:04d}.png")
            (tmp / "done.json").write_text(json.dumps({**about, "count": len(images)}))
    wait()
    return [open_photo(p) for p in sorted(folder.glob("*.png"))], folder


def class_images(components: Components, prompt: str, count: int, seed: int, steps: int, guidance: float,
                 is_main: bool = True, wait=lambda: None, progress: bool = True) -> tuple[list[Image.Image], Path]:
    """Images of the class from the frozen base model, cached on disk by (model, prompt, count, seed, ...)."""
    def make() -> list[Image.Image]:
        seeds, images = [seed * 100_003 + i for i in range(count)], []
        bar = tqdm(total=count, desc=f"class images '{prompt}'", disable=not progress)
        for start in range(0, count, 8):
            chunk = seeds[start:start + 8]
            images += generate(components, [prompt] * len(chunk), chunk, steps, guidance)
            bar.update(len(chunk))
        bar.close()
        return images

    key = generation_key(components.ref, prompt=prompt, count=count, seed=seed, resolution=components.resolution,
                         steps=steps, guidance=guidance)
    images, folder = cached_images("class_images", key, make, {"model": components.ref, "prompt": prompt}, is_main,
                                   wait)
    return [center_crop(image, components.resolution) for image in images], folder
