"""`subjectgen world train-evaluators`: the built-in world's CLIP and DINO, independent of the generator.

- CLIP: a transformers `CLIPModel` (ViT image tower, own small CLIP-BPE tokenizer) trained
  contrastively on world images and their captions. Captions repeat across images, so every image
  with the same caption counts as a positive (soft targets) instead of a false negative.
- DINO: a transformers `ViTModel` trained by self-distillation without labels (Caron et al. 2021):
  a student sees two global and four local crops, an EMA teacher sees the global ones; the student
  matches the teacher's centred, sharpened distribution over prototypes. The teacher's backbone is
  what ships, as DINO releases it.

Both see the training world and nothing of its reserved region (no benchmark subject), rendered with
seeds the generator never uses, and start from their own seed. Saved as ordinary transformers folders, so the code that loads
openai/clip-vit-base-patch32 and facebook/dino-vits16 loads them too.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import random_crops
from ..eval.metrics import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from ..safeio import check_output_dir, output_dir
from .config import EvaluatorTrainConfig


def eval_tokenizer(cfg: EvaluatorTrainConfig, folder: Path):
    from transformers import CLIPTokenizer

    from ..tiny import TOKENIZER_DIR
    from .tokenizer import truncated_tokenizer_files

    truncated_tokenizer_files(TOKENIZER_DIR, cfg.merges, folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def build_clip(cfg: EvaluatorTrainConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(cfg.seed)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
                          num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=77,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(image_size=64, patch_size=cfg.patch, hidden_size=cfg.width,
                              intermediate_size=4 * cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=4)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64))


def build_dino(cfg: EvaluatorTrainConfig):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(cfg.seed + 1)
    return ViTModel(ViTConfig(image_size=64, patch_size=cfg.patch, hidden_size=cfg.width, num_hidden_layers=cfg.layers,
                              num_attention_heads=4, intermediate_size=4 * cfg.width), add_pooling_layer=False)


def jitter(x: torch.Tensor, g: torch.Generator, amount: float = 0.2) -> torch.Tensor:
    """Brightness and contrast jitter; no hue jitter, because colour is part of an instance's identity here."""
    n = len(x)
    bright = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * amount
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * amount
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * bright).clamp(0, 1)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def unit_batch(images: np.ndarray, index: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(images[index.numpy()]).permute(0, 3, 1, 2).float() / 255.0


def progress(stage: str, step: int, total: int, loss: float, started: float) -> None:
    if step % 100 == 0 or step == total:
        print(f"[{stage}] step {step}/{total} loss {loss:.4f} ({time.time() - started:.0f}s)", flush=True)


def caption_contrastive_loss(logits_per_image: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy, where every image with the same caption (row) is a positive."""
    same = (rows[:, None] == rows[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.t(), targets)) / 2


def train_clip(model, tokenizer, images: np.ndarray, captions: list[str], cfg: EvaluatorTrainConfig) -> float:
    vocab = sorted(set(captions))
    tokens = tokenizer(vocab, padding=True, return_tensors="pt")
    row = torch.tensor([vocab.index(c) for c in captions])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 100) * 0.5 * (
        1 + math.cos(math.pi * s / cfg.clip_steps)))
    g, started = torch.Generator().manual_seed(cfg.seed + 2), time.time()
    model.train()
    for step in range(1, cfg.clip_steps + 1):
        index = torch.randint(len(images), (cfg.clip_batch,), generator=g)
        pixels = normalise(random_crops(unit_batch(images, index), 64, (0.6, 1.0), g), CLIP_MEAN, CLIP_STD)
        rows = row[index]
        out = model(input_ids=tokens.input_ids[rows], attention_mask=tokens.attention_mask[rows], pixel_values=pixels)
        loss = caption_contrastive_loss(out.logits_per_image, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        progress("clip", step, cfg.clip_steps, loss.item(), started)
    return loss.item()


class DinoHead(nn.Module):
    """DINO's projection head: MLP, L2-normalised bottleneck, weight-normalised prototype layer."""

    def __init__(self, width: int, prototypes: int, hidden: int = 256, bottleneck: int = 64,
                 norm_last_layer: bool = False):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        if norm_last_layer:  # DINO's default: the prototypes' norms fixed at 1, so the logits cannot flatten out
            self.last.parametrizations.weight.original0.data.fill_(1.0)
            self.last.parametrizations.weight.original0.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.embed(x))


def dino_views(x: torch.Tensor, other: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two global 64 px crops and four local 32 px crops per sample, jittered and normalised: one global and two
    local views of each of two renders of the same instance (`x`, `other`; the same render when it has only one),
    so the two views the student must agree on can differ in scene, not only in crop."""
    def view(images, size, scale):
        return normalise(jitter(random_crops(images, size, scale, g), g), IMAGENET_MEAN, IMAGENET_STD)

    return (torch.cat([view(x, 64, (0.35, 1.0)), view(other, 64, (0.35, 1.0))]),
            torch.cat([view(images, 32, (0.1, 0.35)) for images in (x, x, other, other)]))


def partners(instance_ids: np.ndarray, index: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """For each drawn image, another render of the same instance (itself when it has no other)."""
    out = []
    for i in index.tolist():
        same = np.flatnonzero(instance_ids == instance_ids[i])
        out.append(int(same[torch.randint(len(same), (1,), generator=g).item()]))
    return torch.tensor(out)


def instance_nce(z: torch.Tensor, ids: np.ndarray, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE between the two global views' embeddings (z: [first views; partner views]): each view must pick its
    partner (another render of its instance) out of the batch; other renders of the same instance are no negatives."""
    n = len(z) // 2
    logits = z[:n] @ z[n:].t() / temperature
    ids = torch.as_tensor(ids)
    same = (ids[:n, None] == ids[None, n:]) & ~torch.eye(n, dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(n)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, n_global: int = 2,
              t_student: float = 0.1, t_teacher: float = 0.04) -> torch.Tensor:
    """Cross-entropy of every student view against every *other* view's teacher distribution."""
    targets = F.softmax((teacher - center) / t_teacher, dim=-1).chunk(n_global)
    logs = F.log_softmax(student / t_student, dim=-1).chunk(len(student) // len(targets[0]))
    terms = [-(t * logs[v]).sum(-1).mean() for i, t in enumerate(targets) for v in range(len(logs)) if v != i]
    return sum(terms) / len(terms)


def train_dino(backbone, images: np.ndarray, cfg: EvaluatorTrainConfig,
               instance_ids: np.ndarray | None = None) -> tuple[object, float]:
    """Self-distillation; returns the EMA teacher's backbone and the last loss. With `instance_ids` (one per image)
    the two global views come from two renders of the same instance (cfg.dino_instance_views)."""
    head = DinoHead(cfg.width, cfg.dino_prototypes, norm_last_layer=instance_ids is not None)
    student = nn.ModuleDict({"backbone": backbone, "head": head})
    teacher = copy.deepcopy(student).requires_grad_(False)
    center = torch.zeros(cfg.dino_prototypes)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.dino_lr, weight_decay=0.04)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 150) * 0.5 * (
        1 + math.cos(math.pi * s / cfg.dino_steps)))
    g, started = torch.Generator().manual_seed(cfg.seed + 3), time.time()
    for step in range(1, cfg.dino_steps + 1):
        index = torch.randint(len(images), (cfg.dino_batch,), generator=g)
        other = partners(instance_ids, index, g) if instance_ids is not None else index
        globals_, locals_ = dino_views(unit_batch(images, index), unit_batch(images, other), g)
        with torch.no_grad():
            t_out = teacher["head"](teacher["backbone"](pixel_values=globals_).last_hidden_state[:, 0])
        z_global = head.embed(backbone(pixel_values=globals_).last_hidden_state[:, 0])
        s_local = head(backbone(pixel_values=locals_, interpolate_pos_encoding=True).last_hidden_state[:, 0])
        loss = dino_loss(torch.cat([head.last(z_global), s_local]), t_out, center)
        if instance_ids is not None and cfg.dino_instance_nce:
            pair_ids = np.concatenate([instance_ids[index.numpy()], instance_ids[other.numpy()]])
            loss = loss + cfg.dino_instance_nce * instance_nce(z_global, pair_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        sched.step()
        momentum = 1 - (1 - 0.996) * (math.cos(math.pi * step / cfg.dino_steps) + 1) / 2
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
            center.mul_(0.9).add_(t_out.mean(0), alpha=0.1)
        progress("dino", step, cfg.dino_steps, loss.item(), started)
    return teacher["backbone"], loss.item()


def train_evaluators(out: Path, cfg: EvaluatorTrainConfig, workers: int = 2, keep_clip: Path | None = None,
                     overwrite: bool = False) -> dict:
    """Render the world, train CLIP then DINO on the CPU, save both (fp16) under out/clip and out/dino.
    `keep_clip`: an earlier output folder whose CLIP was trained on the same data; only DINO trains."""
    from .build import data_hash, evaluator_items, render_training_set

    check_output_dir(out, "training.json", overwrite)
    started = time.time()
    items = evaluator_items(cfg.render_seeds)
    images, captions = render_training_set(items=items, workers=workers)
    print(f"rendered {len(images)} images ({time.time() - started:.0f}s)", flush=True)
    digest = data_hash(images, captions)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = eval_tokenizer(cfg, Path(tok_dir))
        if keep_clip is not None:
            clip, clip_record = None, kept_clip_record(Path(keep_clip), digest)
        else:
            clip = build_clip(cfg, tokenizer)
            clip_started = time.time()
            clip_record = {"clip_loss": train_clip(clip, tokenizer, images, captions, cfg),
                           "clip_seconds": round(time.time() - clip_started, 1)}
        dino_started = time.time()
        ids = instance_ids(items) if cfg.dino_instance_views else None
        dino, dino_loss_value = train_dino(build_dino(cfg), images, cfg, ids)
        record = {"config": asdict(cfg), "data_hash": digest, "images": len(images), **clip_record,
                  "dino_loss": dino_loss_value, "dino_seconds": round(time.time() - dino_started, 1),
                  "seconds": round(time.time() - started, 1), "device": "cpu", "torch": torch.__version__}
        with output_dir(Path(out), "training.json", overwrite) as tmp:
            if clip is None:
                shutil.copytree(Path(keep_clip) / "clip", tmp / "clip")
            else:
                clip.half().save_pretrained(tmp / "clip", safe_serialization=True)
                tokenizer.save_pretrained(tmp / "clip")
            dino.half().save_pretrained(tmp / "dino", safe_serialization=True)
            (tmp / "training.json").write_text(json.dumps(record, indent=1))
    return record


def instance_ids(items: list[tuple]) -> np.ndarray:
    """One integer per rendered item naming its instance, so DINO can pair two renders of one instance."""
    ids: dict = {}
    return np.array([ids.setdefault(item[1], len(ids)) for item in items])


def kept_clip_record(folder: Path, digest: str) -> dict:
    """The CLIP half of an earlier run's record; a one-line error unless it was trained on this same data."""
    from ..errors import UserError

    path = folder / "training.json"
    if not path.is_file() or not (folder / "clip").is_dir():
        raise UserError(f"--keep-clip {folder} holds no trained evaluators (clip/ and training.json)")
    record = json.loads(path.read_text())
    if record.get("data_hash") != digest:
        raise UserError(f"--keep-clip {folder} was trained on other data (hash {record.get('data_hash')}, this "
                        f"world's is {digest}); train both, without --keep-clip")
    return {"clip_loss": record["clip_loss"], "clip_seconds": record["clip_seconds"],
            "clip_kept_from": {"config": record["config"], "seconds": record["seconds"]}}
