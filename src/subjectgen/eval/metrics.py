"""DreamBench's metrics with any transformers CLIP / DINO model.

DINO: ViT CLS embedding (Resize 256 bicubic, CenterCrop 224, ImageNet mean/std). CLIP-I: CLIP image
embeddings. Both: cosine of each generated image with *every* real photo, averaged. CLIP-T: cosine of
each image with its prompt, the identifier removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def preprocess(images: list[Image.Image], resize: int, crop: int, mean, std) -> torch.Tensor:
    """Resize the short side (bicubic), centre-crop, normalise: the evaluators' own preprocessing."""
    out = []
    for image in images:
        image = image.convert("RGB")
        scale = resize / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = (image.width - crop) // 2, (image.height - crop) // 2
        array = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
        out.append((torch.from_numpy(array) - torch.tensor(mean)) / torch.tensor(std))
    return torch.stack(out).permute(0, 3, 1, 2)


def mean_cosine_to_references(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """For each generated embedding, its cosine similarity with every reference, averaged: shape (G,)."""
    return (F.normalize(generated, dim=-1) @ F.normalize(references, dim=-1).T).mean(dim=1)


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """The cosine similarity of every pair of distinct rows (the self-pairs left out), averaged."""
    sims = F.normalize(embeddings, dim=-1) @ F.normalize(embeddings, dim=-1).T
    n = len(embeddings)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def oracle_scores(references: torch.Tensor) -> float:
    """Each real photo against the subject's other photos (the self-pairs left out), averaged."""
    return mean_pairwise_cosine(references)


def diversity(embeddings: torch.Tensor) -> float | None:
    """DreamBooth's DIV with DINO in place of LPIPS: 1 − the mean cosine similarity of every pair of distinct images
    (one subject, one prompt); None for fewer than two images."""
    return None if len(embeddings) < 2 else 1.0 - mean_pairwise_cosine(embeddings)


@dataclass
class Evaluators:
    """A DINO ViT and a CLIP model, loaded with transformers from a folder or a hub id."""

    dino: object
    clip: object
    clip_tokenizer: object
    clip_size: int
    dino_size: int

    @torch.no_grad()
    def dino_embed(self, images: list[Image.Image]) -> torch.Tensor:
        size = self.dino_size
        pixels = preprocess(images, round(size * 256 / 224), size, IMAGENET_MEAN, IMAGENET_STD)
        return self.dino(pixel_values=pixels.to(self.dino.device)).last_hidden_state[:, 0].cpu()

    @torch.no_grad()
    def clip_image_embed(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = preprocess(images, self.clip_size, self.clip_size, CLIP_MEAN, CLIP_STD)
        return _as_tensor(self.clip.get_image_features(pixel_values=pixels.to(self.clip.device))).cpu()

    @torch.no_grad()
    def clip_text_embed(self, texts: list[str]) -> torch.Tensor:
        tokens = self.clip_tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.clip.device)
        return _as_tensor(self.clip.get_text_features(**tokens)).cpu()


def _as_tensor(features) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    return features if torch.is_tensor(features) else features.pooler_output


def evaluator_refs(dino_ref: str, clip_ref: str) -> tuple[str, str]:
    """The evaluators' references resolved (built-in names to folders) and checked without loading them: a local
    path that is not there first (the user's own mistake), then a hub id an offline machine cannot have."""
    from ..assets import missing_local_path, resolve
    from ..errors import UserError
    from ..hub import check_reachable

    dino_ref, clip_ref = resolve("dino", dino_ref), resolve("clip", clip_ref)
    missing = [ref for ref in (dino_ref, clip_ref) if missing_local_path(ref)]
    if missing:
        raise UserError(f"could not load evaluator models (no folder at {missing[0]}); give local folders or hub ids "
                        "with --dino and --clip")
    check_reachable({"--dino": dino_ref, "--clip": clip_ref})
    return dino_ref, clip_ref


def load_evaluators(dino_ref: str, clip_ref: str) -> Evaluators:
    """Any transformers ViT (DINO) and CLIPModel, in fp32 whatever their storage dtype."""
    from transformers import AutoModel, CLIPModel, CLIPTokenizer

    from ..errors import UserError
    from ..models import inference_device, quiet_loading

    dino_ref, clip_ref = evaluator_refs(dino_ref, clip_ref)
    try:
        with quiet_loading():
            dino = AutoModel.from_pretrained(dino_ref, use_safetensors=True, dtype=torch.float32).eval()
            clip = CLIPModel.from_pretrained(clip_ref, use_safetensors=True, dtype=torch.float32).eval()
            tokenizer = CLIPTokenizer.from_pretrained(clip_ref)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load evaluator models ({str(exc).splitlines()[0]}); "
                        "give local folders or hub ids with --dino and --clip") from None
    dino, clip = dino.to(inference_device()), clip.to(inference_device())
    return Evaluators(dino, clip, tokenizer, clip.config.vision_config.image_size, dino.config.image_size)


def zero_shot_predictions(ev: Evaluators, images: list[Image.Image], candidates: list[list[str]]) -> list[int]:
    """For each image, the index of its most similar text among its own candidate list (CLIP zero-shot)."""
    features = F.normalize(ev.clip_image_embed(images), dim=-1)
    picks = []
    for feature, texts in zip(features, candidates):
        picks.append(int((F.normalize(ev.clip_text_embed(texts), dim=-1) @ feature).argmax()))
    return picks


def score_images(ev: Evaluators, images: list[Image.Image], photos: list[Image.Image], prompt: str) -> dict:
    """DINO, CLIP-I (against every photo) and CLIP-T (against `prompt`, identifier already removed) of one prompt's
    images, and their diversity (DIV, None for a single image)."""
    generated = ev.dino_embed(images)
    dino = mean_cosine_to_references(generated, ev.dino_embed(photos))
    clip_images = ev.clip_image_embed(images)
    clip_i = mean_cosine_to_references(clip_images, ev.clip_image_embed(photos))
    clip_t = paired_cosine(clip_images, ev.clip_text_embed([prompt] * len(images)))
    return {"dino": float(dino.mean()), "clip_i": float(clip_i.mean()), "clip_t": float(clip_t.mean()),
            "div": diversity(generated),
            "per_image": {"dino": dino.tolist(), "clip_i": clip_i.tolist(), "clip_t": clip_t.tolist()}}


def prior_preservation(ev: Evaluators, class_images: list[Image.Image], photos: list[Image.Image]) -> dict:
    """DreamBooth's PRES: DINO of the images the model makes from the class prompt alone ('a dog') against the
    subject's photos. Lower is better: a high PRES means the class itself drifted onto the subject."""
    per_image = mean_cosine_to_references(ev.dino_embed(class_images), ev.dino_embed(photos))
    return {"pres": float(per_image.mean()), "per_image": per_image.tolist()}


def backdrops(photos: list[Image.Image], masks: list[Image.Image] | None = None) -> list[Image.Image]:
    """The photos' backgrounds alone: the subject (its mask where one is given, else the centre half of the
    photo, where a subject usually stands) painted over with the photo's mean border colour."""
    out = []
    for i, photo in enumerate(photos):
        array = np.asarray(photo.convert("RGB"), dtype=np.float32)
        if masks is not None:
            subject = np.asarray(masks[i].convert("L").resize(photo.size), dtype=np.float32) > 127
        else:
            subject = np.zeros(array.shape[:2], dtype=bool)
            h, w = subject.shape
            subject[h // 4: h - h // 4, w // 4: w - w // 4] = True
        border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
        array[subject] = border.mean(axis=0)
        out.append(Image.fromarray(array.round().astype(np.uint8)))
    return out


def backdrop_similarity(ev: Evaluators, images: list[Image.Image], backgrounds: list[Image.Image]) -> float:
    """How much images look like the photos' backgrounds: CLIP image cosine with each background, averaged."""
    return float(mean_cosine_to_references(ev.clip_image_embed(images), ev.clip_image_embed(backgrounds)).mean())
