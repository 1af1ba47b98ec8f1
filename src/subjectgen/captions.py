"""`train --captions auto`: a caption for each of the subject's photos that lacks one, written as NAME.txt beside it
(kohya's convention) with {subject} where the identifier goes, so that the identifier learns the subject and the
caption's words the rest of the photo (its floor, its sofa) instead of absorbing them.

The captioner is any transformers image-to-text model (`--captioner`, a folder or hub id: BLIP, GIT, a
VisionEncoderDecoder...), or on the built-in model a CLIP-interrogator over the world's scene words with the
generator side's image encoder (the one ProFusion's PromptNet and the apprentice read), never the evaluators', so
the captions do not lean toward what the bench scores. Captions are made before training and written only once the
run starts (Trainer), so a start that fails leaves the photo folder as it was.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import UserError
from .safeio import atomic_write_bytes

BUILTIN = "builtin"
MAX_NEW_TOKENS = 30  # a caption is a phrase, not a paragraph
Captioner = Callable[[list], list[str]]  # photos -> one caption each, with {subject}


def with_subject(text: str, class_noun: str) -> str:
    """A captioner's sentence with {subject} in the class noun's place ('a dog on a sofa' -> 'a {subject} on a
    sofa'); where it does not name the class, the subject goes first ('a {subject}, a toy on a sofa')."""
    text = " ".join(text.replace("{", "").replace("}", "").split())
    noun = re.compile(rf"\b{re.escape(class_noun.strip())}s?\b", re.IGNORECASE)
    if noun.search(text):
        return noun.sub("{subject}", text, count=1)
    return f"a {{subject}}, {text}" if text else "a {subject}"


def load_captioner(ref: str | None, model: str, components, class_noun: str) -> Captioner:
    """The captioner `ref` names: 'builtin' (the default on the built-in model) or a transformers image-to-text
    model; a one-line error where none can be had."""
    from .assets import SHIPPED, resolve

    on_builtin = Path(resolve("model", model)).resolve() == SHIPPED.resolve()
    ref = ref or (BUILTIN if on_builtin else None)
    if ref is None:
        raise UserError(f"--captions auto on --model {model} needs --captioner: a transformers image-to-text model "
                        "(a folder or hub id, e.g. Salesforce/blip-image-captioning-base)")
    if ref == BUILTIN:
        if not on_builtin:
            raise UserError("--captioner builtin reads the built-in model's text encoder; on another model give a "
                            "transformers image-to-text model (e.g. Salesforce/blip-image-captioning-base)")
        return SceneInterrogator(components, class_noun)
    return TransformersCaptioner(ref, class_noun)


class TransformersCaptioner:
    """Any transformers image-to-text model (AutoModelForImageTextToText: BLIP, GIT, VisionEncoderDecoder, ...),
    greedy decoding, safetensors weights only."""

    def __init__(self, ref: str, class_noun: str):
        from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        from .models import quiet_loading

        self.class_noun = class_noun
        try:
            with quiet_loading():
                self.processor = AutoProcessor.from_pretrained(ref)
                self.model = AutoModelForImageTextToText.from_pretrained(ref, use_safetensors=True,
                                                                         dtype=torch.float32).eval()
                # a VisionEncoderDecoder folder may hold an image processor only, beside its tokenizer
                self.decode = getattr(self.processor, "batch_decode", None) or \
                    AutoTokenizer.from_pretrained(ref).batch_decode
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--captioner {ref}: could not load an image-to-text model ({str(exc).splitlines()[0]}); "
                            "give a transformers image-to-text model folder or hub id, e.g. "
                            "Salesforce/blip-image-captioning-base") from None

    @torch.no_grad()
    def __call__(self, photos: list) -> list[str]:
        inputs = self.processor(images=photos, return_tensors="pt")
        ids = self.model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=MAX_NEW_TOKENS,
                                  do_sample=False, num_beams=1)
        return [with_subject(text, self.class_noun) for text in self.decode(ids, skip_special_tokens=True)]


class SceneInterrogator:
    """A CLIP-interrogator on the built-in model: of the world's scene words (its prompts' scenes and the places its
    photos are taken), the one whose caption ('a dog on a sofa') the generator side's image encoder finds closest
    to the photo. The encoder was trained against the built-in model's own text encoder (world/image_encoder.py),
    whose pooled states it compares through the projection saved beside it."""

    def __init__(self, components, class_noun: str):
        from safetensors.torch import load_file

        from .assets import IMAGE_ENCODER
        from .models import quiet_loading
        from .vision import load_image_encoder
        from .world.catalog import caption
        from .world.image_encoder import caption_features
        from .world.scene import scene_words

        self.words = scene_words()
        with quiet_loading():
            self.encoder = load_image_encoder(BUILTIN)
        texts = [caption(class_noun, word) for word in self.words]
        pooled, rows = caption_features(components, texts)
        projection = load_file(str(IMAGE_ENCODER / "text_projection.safetensors"))["weight"]
        self.text = F.normalize(pooled[rows].float() @ projection.T, dim=-1)

    @torch.no_grad()
    def __call__(self, photos: list) -> list[str]:
        from .eval.metrics import CLIP_MEAN, CLIP_STD, preprocess
        from .world.catalog import caption

        size = self.encoder.config.image_size
        pixels = preprocess(photos, size, size, CLIP_MEAN, CLIP_STD)
        images = F.normalize(self.encoder(pixel_values=pixels).image_embeds, dim=-1)
        return [caption("{subject}", self.words[i]) for i in (images @ self.text.T).argmax(-1).tolist()]


def caption_missing(subject, captioner: Callable[[], Captioner]) -> dict[Path, str]:
    """Captions for the photos that have no NAME.txt, made now and put in `subject.captions`; returned by the file
    each goes to, for write_captions once the run starts. `captioner` loads the captioner (only when one is
    needed)."""
    from .photos import open_photo

    captions = list(subject.captions or [None] * len(subject.paths))
    missing = [i for i, text in enumerate(captions) if text is None]
    if not missing:
        return {}
    made = captioner()([open_photo(subject.paths[i]) for i in missing])
    for i, text in zip(missing, made):
        captions[i] = text
    subject.captions = captions
    return {subject.paths[i].with_suffix(".txt"): text for i, text in zip(missing, made)}


def write_captions(captions: dict[Path, str]) -> None:
    """Each caption as UTF-8 text beside its photo, atomically; never over a caption already there."""
    for path, text in captions.items():
        if not path.exists():
            atomic_write_bytes(path, f"{text}\n".encode("utf-8"))
