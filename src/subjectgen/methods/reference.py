"""The family's own reference inputs as a zero-shot method: FLUX.2 [klein] renders a subject from reference photos
with no training (its pipeline's `image=[...]`). `train reference` keeps the subject's photos in the run folder
(as the model sees them) in about a second; every image of the run is sampled with them as reference images.
Nothing trains. The references a run samples with are Run.reference_images (adapters.py): this run's photos,
and whatever `generate --references DIR` adds to any run of such a family (a LoRA run's, too)."""

from __future__ import annotations

from pathlib import Path

from ..adapters import Run
from ..models import load_model
from ..safeio import atomic_save_image
from .base import ZeroShot

REFERENCES = "references"  # the run folder's PNGs of the subject, in the order the model takes them


class References(ZeroShot):
    """The subject's photos as the pipeline's reference images; no weights change."""

    run_file = f"{REFERENCES}/00.png"

    @classmethod
    def check_inputs(cls, cfg, components, subject) -> None:
        components.backbone.check_references("train reference")

    @classmethod
    def data_source(cls, trainer):
        return None  # no latents to cache and no class images: nothing trains

    def trainable_modules(self) -> dict:
        return {}

    def cached_prompts(self, class_prompt: str) -> list[str] | None:
        return None  # no step runs

    def save(self, run_dir: Path) -> list[str]:
        names = [f"{REFERENCES}/{i:02d}.png" for i in range(len(self.photos))]
        for name, image in zip(names, self.photos):
            atomic_save_image(run_dir / name, image)
        return names

    @property
    def photos(self) -> list:
        """The first photos, as many as the family takes (as the apprentice takes the first 5)."""
        return self.subject.images[: self.components.backbone.max_references]

    def manifest(self) -> dict:
        return {"token": "", "subject": self.subject_phrase,
                "references": [p.name for p in self.subject.paths[: len(self.photos)]]}

    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float) -> Run:
        from PIL import Image

        run = Run(manifest, load_model(manifest["model"], allow_pickle))
        run.reference_images = [Image.open(run_dir / name).convert("RGB") for name in manifest["files"]]
        return run
