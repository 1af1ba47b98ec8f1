"""What a training step draws from: cached latent distributions, cached text embeddings, class images."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..assets import cache_dir
from ..models import Components
from ..safeio import atomic_dir
from ..sampling import generate
from ..photos import center_crop, open_photo
from ..subjects import to_tensor


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
    """Latents drawn from a cache, with their images' latent masks (or None) and per-image conditioning
    (the family's, e.g. SDXL's time ids; empty for most)."""

    latents: torch.Tensor
    masks: torch.Tensor | None
    conditioning: dict


class LatentCache:
    """The VAE posterior (mean, std) of each image, encoded once; a draw samples from it. With masks
    ((N, 1, H, W) in [0, 1]), each image also keeps its mask averaged down to the latent grid. `sizes`: each
    image's (original height, width, crop top, crop left), for a family that conditions on them (SDXL);
    default: as generated at the model's resolution."""

    def __init__(self, components: Components, images: list[Image.Image], masks: torch.Tensor | None = None,
                 batch_size: int = 8, sizes: list[tuple[int, int, int, int]] | None = None):
        family = components.backbone
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = torch.stack([to_tensor(im) for im in images[start:start + batch_size]])
                mean, std = family.posterior(components, pixels)
                means.append(mean.float().cpu())
                stds.append(std.float().cpu())
        self.mean, self.std = torch.cat(means), torch.cat(stds)
        self.scale, self.shift = family.latent_scaling(components)
        self.masks = None if masks is None else F.interpolate(masks.float(), size=self.mean.shape[-2:], mode="area")
        size = components.resolution
        self.conditioning = family.image_conditioning(sizes or [(size, size, 0, 0)] * len(images), size)

    def __len__(self) -> int:
        return len(self.mean)

    def draw(self, count: int, generator: torch.Generator) -> Draw:
        """`count` latents sampled from random images' posteriors, with those images' masks and conditioning."""
        index = torch.randint(len(self), (count,), generator=generator)
        masks = None if self.masks is None else self.masks[index]
        return Draw(self.sample(index, generator), masks, {k: v[index] for k, v in self.conditioning.items()})

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One latent from each indexed image's posterior, scaled as the denoiser sees latents."""
        noise = torch.randn(self.mean[index].shape, generator=generator)
        latents = self.mean[index] + self.std[index] * noise
        return (latents - self.shift) * self.scale if self.shift else latents * self.scale


class TextCache:
    """The text conditioning of fixed prompts, when no text encoder trains: computed once, kept per prompt."""

    def __init__(self, components: Components, prompts: list[str]):
        with torch.no_grad():
            cond = components.backbone.encode_text(components, prompts)
        self.by_prompt = {p: {k: v[i] for k, v in cond.items()} for i, p in enumerate(prompts)}

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([self.by_prompt[p][k] for p in prompts]) for k in self.by_prompt[prompts[0]]}


def class_image_key(model_ref: str, prompt: str, count: int, seed: int, resolution: int, steps: int,
                    guidance: float) -> str:
    path = Path(model_ref)
    model = str(path.resolve()) if path.exists() else model_ref
    spec = {"model": model, "prompt": prompt, "count": count, "seed": seed, "resolution": resolution,
            "steps": steps, "guidance": guidance}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def class_images(components: Components, prompt: str, count: int, seed: int, steps: int, guidance: float,
                 is_main: bool = True, wait=lambda: None, progress: bool = True) -> tuple[list[Image.Image], Path]:
    """Images of the class from the frozen base model, cached on disk by (model, prompt, count, seed, ...)."""
    key = class_image_key(components.ref, prompt, count, seed, components.resolution, steps, guidance)
    folder = cache_dir() / "class_images" / key
    if is_main and not (folder / "done.json").is_file():
        with atomic_dir(folder) as tmp:
            seeds = [seed * 100_003 + i for i in range(count)]
            bar = tqdm(total=count, desc=f"class images '{prompt}'", disable=not progress)
            for start in range(0, count, 8):
                chunk = seeds[start:start + 8]
                for i, image in enumerate(generate(components, [prompt] * len(chunk), chunk, steps, guidance)):
                    image.save(tmp / f"{start + i:04d}.png")
                bar.update(len(chunk))
            bar.close()
            (tmp / "done.json").write_text(json.dumps({"model": components.ref, "prompt": prompt, "count": count}))
    wait()
    paths = sorted(folder.glob("*.png"))
    return [center_crop(open_photo(p), components.resolution) for p in paths], folder
