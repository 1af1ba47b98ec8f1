"""A subject: its photos (validated once, normalised, as tensors), its identifier token and its class noun.

Reading and checking the photo files is photos.py's (no torch there)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .photos import bucket_of, check_subject_folder, fit, open_mask, read_captions, warn_if_scaled_down

@dataclass
class SubjectSet:
    """The subject's photos as RGB images at the model's resolution, with what names the subject."""

    images: list[Image.Image]
    paths: list[Path]
    class_noun: str
    masks: list[Image.Image] | None = None  # L images, 255 on the subject; only when a masked loss asks
    # each photo's (original height, width, crop top, crop left) at the model's resolution: SDXL's time ids
    sizes: list[tuple[int, int, int, int]] | None = None
    captions: list[str | None] | None = None  # each photo's NAME.txt, with {subject}; None: the instance prompt

    def tensor(self) -> torch.Tensor:
        """The photos as a (N, 3, H, W) tensor in [-1, 1], the VAE's input range."""
        return torch.stack([to_tensor(im) for im in self.images])

    def mask_tensor(self) -> torch.Tensor | None:
        """The masks as a (N, 1, H, W) tensor in [0, 1], or None."""
        if self.masks is None:
            return None
        return torch.stack([torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None] for m in self.masks])


def load_subject(folder: Path, class_noun: str, resolution: int, masks: bool = False,
                 model: str | None = None, buckets: list[tuple[int, int]] | None = None,
                 uses: int | None = None) -> SubjectSet:
    """The photos of a subject, validated and cropped to a `resolution` square, or with `buckets` (photos.
    bucket_sizes) to the bucket of each one's aspect ratio; with `model` (the base model's reference) a warning
    when they are far larger than that model sees them. `uses`: how many the method takes (None: all)."""
    paths, photos = check_subject_folder(folder, class_noun, uses)
    if model is not None:
        warn_if_scaled_down(Path(folder), photos, resolution, model)
    targets = [bucket_of(im.size, buckets) if buckets else (resolution, resolution) for im in photos]
    subject_masks = [fit(open_mask(p, im.size), target) for p, im, target in zip(paths, photos, targets)] \
        if masks else None
    images = [fit(im, target) for im, target in zip(photos, targets)]
    captions = read_captions(paths)
    return SubjectSet(images=images, paths=paths, class_noun=class_noun.strip(), masks=subject_masks,
                      sizes=[crop_box(im.size, target) for im, target in zip(photos, targets)],
                      captions=captions if any(captions) else None)


def crop_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """(original height, width, crop top, crop left) of a photo of `size` (width, height) resized to cover `target`
    (width, height) and centre-cropped: what SDXL's time ids record (diffusers' SDXL script's convention)."""
    (width, height), (tw, th) = size, target
    scale = max(tw / width, th / height)
    top, left = round((height * scale - th) / 2), round((width * scale - tw) / 2)
    return height, width, max(0, top), max(0, left)


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [-1, 1] back to a PIL image."""
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def rare_token(tokenizer, avoid: set[str] = frozenset(), first_id: int | None = None) -> str:
    """A rare identifier as in the DreamBooth paper: a single token, late in BPE order (rare), that decodes
    to a short string with no vowels (so not a common word), e.g. CLIP's 'sks'-like tokens. Whole-word tokens
    are CLIP's ('sks</w>') or a byte-level BPE's (Qwen's, GPT-2's: 'Ġsks', the word after a space)."""
    vocab = tokenizer.get_vocab()
    start = first_id if first_id is not None else int(len(vocab) * 0.8)
    for text, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        word, in_prompt = whole_word(text) if idx >= start else (None, None)
        if word and len(word) == 3 and word.isascii() and word.isalpha() and word.islower():
            if not set(word) & set("aeiouy") and word not in avoid and _single_token(tokenizer, in_prompt):
                return word
    raise UserError("could not find a rare token in the tokenizer's vocabulary; pass --token")


BYTE_LEVEL_SPACE = "\u0120"  # 'Ġ': a byte-level BPE's mark of a token that begins after a space


def whole_word(token: str) -> tuple[str | None, str | None]:
    """(the word, the text that is this one token in a prompt) of a whole-word token; (None, None) otherwise."""
    if token.endswith("</w>"):  # CLIP's BPE marks a word's end
        return token[: -len("</w>")], token[: -len("</w>")]
    if token.startswith(BYTE_LEVEL_SPACE):  # a byte-level BPE marks the space before a word
        return token[1:], " " + token[1:]
    return None, None


def _single_token(tokenizer, text: str) -> bool:
    return len(tokenizer(text, add_special_tokens=False).input_ids) == 1


def expand_subject(prompt: str, subject: str) -> str:
    """Put the subject phrase ('sks dog', '<s*> dog') where the prompt says {subject}."""
    return prompt.replace("{subject}", subject)


def strip_identifier(prompt: str, identifier: str) -> str:
    """The prompt without the identifier, as CLIP-T scores it ('a sks dog' -> 'a dog')."""
    return " ".join(word for word in prompt.split() if word != identifier)
