"""ProFusion's pretraining (`subjectgen profusion pretrain`): PromptNet from the base UNet's encoder half, trained on a
dataset of images through the one training loop (a data source with no subject)."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import assets
from ..errors import UserError
from .profusion import ProFusion, ReferenceViews, SplicedText, encode_views
from .promptnet import PromptNet


class PromptNetPretraining(ProFusion):
    """PromptNet from the base UNet's encoder half, trained on a dataset of images; everything else frozen (UNet,
    VAE, text encoder, image encoder). What it writes is a PromptNet folder (`--promptnet DIR` for a tune)."""

    run_file = None  # not a subject's run: its load_run says what it is

    @classmethod
    def check_inputs(cls, cfg, components, subject) -> None:
        if cfg.images not in (None, "world"):
            dataset_paths(cfg.images)
            if cfg.captions:
                raise UserError("--captions needs --images world (a folder of photos has no captions here)")
            if cfg.references == "instance" and not shared_identities(dataset_paths(cfg.images), cfg.images):
                raise UserError(f"--references instance needs --images {cfg.images} to hold one subfolder per "
                                "identity with 2 or more images in some; or use --references self")

    @classmethod
    def data_source(cls, trainer) -> ReferenceViews:
        from ..vision import load_image_encoder

        cfg = trainer.cfg
        images, digest, captions, groups = dataset_images(cfg.images, trainer.components.resolution)
        if trainer.progress:
            print(f"profusion pretrain: {len(images)} images (hash {digest}); encoding them", flush=True)
            if cfg.references == "instance":
                print(f"profusion pretrain: each reference is an image of the target's identity "
                      f"({int(groups.max()) + 1} identities)", flush=True)
        encoder = load_image_encoder(cfg.image_encoder, trainer.accelerator.device)
        views = encode_views(trainer.components, encoder, images)
        views.photo, views.prompts = digest, captions if cfg.captions else None
        views.groups = groups if cfg.references == "instance" else None
        return views

    def setup(self) -> None:
        c = self.components
        self.promptnet = PromptNet.from_unet(c.unet, self.data.states.shape[-1], c.text_encoder.config.hidden_size,
                                             self.cfg.num_vectors, noisy_input=self.cfg.noisy_input).train()
        self.text = SplicedText(c.tokenizer, c.text_encoder, self.token, self.cfg.num_vectors)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"promptnet": self.promptnet}

    def save(self, run_dir: Path) -> list[str]:
        """The PromptNet in fp16, as the built-in model is stored (a tune loads it as fp32); checkpoints stay fp32."""
        import copy

        copy.deepcopy(self.promptnet).half().save_pretrained(run_dir, safe_serialization=True)
        return ["config.json", "diffusion_pytorch_model.safetensors"]

    def manifest(self) -> dict:
        return {"token": self.token, "subject": "", "data_hash": self.data.photo, "images": len(self.data.states),
                "num_vectors": self.cfg.num_vectors, "references": self.cfg.references,
                "noisy_input": self.cfg.noisy_input}

    def asset_records(self) -> list[dict]:
        return [assets.record("image_encoder", self.cfg.image_encoder)]

    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float):
        raise UserError(f"{run_dir} is a pretrained PromptNet, not a subject's run; use it with 'subjectgen train "
                        f"profusion --promptnet {run_dir}'")


def dataset_paths(ref: str) -> list[Path]:
    from ..photos import IMAGE_SUFFIXES

    folder = Path(ref)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise UserError(f"--images {ref} holds no images; give a folder of photos, or 'world' on the built-in model")
    return paths


def identity_groups(keys: list) -> torch.Tensor:
    """Each key's group number, in order of first appearance."""
    numbers: dict = {}
    return torch.tensor([numbers.setdefault(k, len(numbers)) for k in keys], dtype=torch.long)


def identity_keys(paths: list[Path], root: str) -> list[str]:
    """A pretraining folder's identities: each subfolder is one; an image directly in the folder is its own."""
    return [str(p.relative_to(root) if p.parent == Path(root) else p.parent.relative_to(root)) for p in paths]


def shared_identities(paths: list[Path], root: str) -> bool:
    """Whether some identity (a subfolder) of a pretraining folder holds two or more of its images."""
    keys = identity_keys(paths, root)
    return len(set(keys)) < len(keys)


def dataset_images(ref: str | None, resolution: int) -> tuple[list, str, list[str] | None, torch.Tensor]:
    """A pretraining set: 'world' (the built-in world's training split, rendered: never a reserved instance) or a
    folder of images; with a short hash of what was read, for the world each image's caption with '{token}' in
    place of its class noun ('a striped {token} on the beach'), and each image's identity: the world's instance,
    a folder's subfolder."""
    import hashlib

    from ..photos import center_crop, open_photo

    if ref in (None, "world"):
        from PIL import Image

        from ..world.build import data_hash, render_training_set, training_items

        items = training_items(2)
        pixels, captions = render_training_set(items=items, workers=1)
        spliced = [splice_noun(c, item[0]) for c, item in zip(captions, items)]
        groups = identity_groups([(item[0], str(item[1])) for item in items])
        return ([center_crop(Image.fromarray(p), resolution) for p in pixels], data_hash(pixels, captions), spliced,
                groups)
    paths = dataset_paths(ref)
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    groups = identity_groups(identity_keys(paths, ref))
    return [center_crop(open_photo(p), resolution) for p in paths], digest.hexdigest()[:16], None, groups


def splice_noun(caption: str, noun: str) -> str:
    """The caption with '{token}' for its class noun (the last whole-word match: 'a red dog' -> 'a red {token}')."""
    import re

    spots = list(re.finditer(rf"\b{re.escape(noun)}\b", caption))
    if not spots:
        return caption + " {token}"  # a caption that does not name its class (none in the world): S* at the end
    last = spots[-1]
    return caption[:last.start()] + "{token}" + caption[last.end():]
