"""`subjectgen world train-image-encoder`: the generator side's own CLIP image tower, for ProFusion's PromptNet
(and later the apprentice).

A transformers `CLIPVisionModelWithProjection` trained contrastively on the training world against the *frozen*
text encoder of the built-in base model (its pooled EOS state through a learned projection), so the image
features speak the base model's language, as OpenCLIP's image tower does for SD 2's text encoder. It has its own
seed and sees only the generator's training split: it is never the evaluators' CLIP, and no reserved instance
(EmojiBench, validation) is rendered for it. Saved as an ordinary transformers folder, so the code that loads
openai/clip-vit-large-patch14 for a real Stable Diffusion loads it too.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..eval.metrics import CLIP_MEAN, CLIP_STD
from ..safeio import atomic_save_safetensors, check_output_dir, output_dir
from ..settings import AT_LEAST_1, POSITIVE, SEED, setting
from ..augment import random_crops
from .evaluators import caption_contrastive_loss, normalise, progress, unit_batch


@dataclass
class ImageEncoderConfig:
    seed: int = setting(11, SEED)            # neither the generator's (0) nor the evaluators' (7)
    render_seeds: int = setting(2, AT_LEAST_1)
    steps: int = setting(800, AT_LEAST_1)
    batch: int = setting(256, AT_LEAST_1)
    lr: float = setting(1e-3, POSITIVE)
    width: int = 96
    layers: int = 4
    patch: int = 8


def build_image_encoder(cfg: ImageEncoderConfig, text_width: int, image_size: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(cfg.seed)
    vision = CLIPVisionConfig(image_size=image_size, patch_size=cfg.patch, hidden_size=cfg.width,
                              intermediate_size=4 * cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=4,
                              projection_dim=text_width)
    return CLIPVisionModelWithProjection(vision)


@torch.no_grad()
def caption_features(components, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen text encoder's pooled state of each distinct caption, and each caption's row in it."""
    vocab = sorted(set(captions))
    ids = components.tokenizer(vocab, padding="max_length", max_length=components.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids
    encoder = components.text_encoder.float()
    pooled = torch.cat([encoder(ids[i:i + 512]).pooler_output for i in range(0, len(ids), 512)])
    row = {c: i for i, c in enumerate(vocab)}
    return pooled, torch.tensor([row[c] for c in captions])


def train_image_encoder(out: Path, model: str = "builtin", cfg: ImageEncoderConfig | None = None,
                        workers: int = 2, overwrite: bool = False) -> dict:
    """Render the training world, train the image tower against `model`'s frozen text encoder, save it."""
    from ..models import load_model
    from .build import data_hash, render_training_set, training_items

    check_output_dir(out, "training.json", overwrite)
    cfg = cfg or ImageEncoderConfig()
    components = load_model(model)  # a bad --model fails before minutes of rendering
    started = time.time()
    images, captions = render_training_set(items=training_items(cfg.render_seeds), workers=workers)
    print(f"rendered {len(images)} images ({time.time() - started:.0f}s)", flush=True)
    text, rows = caption_features(components, captions)
    encoder = build_image_encoder(cfg, text.shape[1], images.shape[1])
    text_projection = torch.nn.Linear(text.shape[1], text.shape[1], bias=False)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    loss = fit(encoder, text_projection, logit_scale, images, text, rows, cfg)
    record = {"config": asdict(cfg), "model": model, "data_hash": data_hash(images, captions), "images": len(images),
              "loss": loss, "seconds": round(time.time() - started, 1), "torch": torch.__version__}
    with output_dir(Path(out), "training.json", overwrite) as tmp:
        encoder.save_pretrained(tmp, safe_serialization=True)
        # The text side's projection, so image and text features can be compared generator-side too.
        atomic_save_safetensors(tmp / "text_projection.safetensors",
                                {"weight": text_projection.weight.detach().contiguous(),
                                 "logit_scale": logit_scale.detach().reshape(1)})
        (tmp / "training.json").write_text(json.dumps(record, indent=1))
    return record


def fit(encoder, text_projection, logit_scale, images: np.ndarray, text: torch.Tensor, rows: torch.Tensor,
        cfg: ImageEncoderConfig) -> float:
    params = [*encoder.parameters(), *text_projection.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 100) * 0.5 * (
        1 + math.cos(math.pi * s / cfg.steps)))
    g, started = torch.Generator().manual_seed(cfg.seed + 1), time.time()
    encoder.train()
    size = encoder.config.image_size
    for step in range(1, cfg.steps + 1):
        index = torch.randint(len(images), (cfg.batch,), generator=g)
        pixels = normalise(random_crops(unit_batch(images, index), size, (0.6, 1.0), g), CLIP_MEAN, CLIP_STD)
        image_emb = torch.nn.functional.normalize(encoder(pixel_values=pixels).image_embeds, dim=-1)
        text_emb = torch.nn.functional.normalize(text_projection(text[rows[index]]), dim=-1)
        loss = caption_contrastive_loss(logit_scale.exp() * image_emb @ text_emb.t(), rows[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            logit_scale.clamp_(0, math.log(100))
        progress("image-encoder", step, cfg.steps, loss.item(), started)
    encoder.eval()
    return loss.item()
