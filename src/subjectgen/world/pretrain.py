"""`subjectgen world train`: train the built-in Stable-Diffusion-architecture model on the rendered world.

Stages, SD's own order: (1) the VAE on images; (2) the UNet on cached latents, conditioned on a
CLIP-architecture text encoder trained jointly with it from scratch (as the LDM paper's text-to-image
model did; there is no pretrained CLIP to freeze here). The result is a plain diffusers folder
(fp16 weights) with the real CLIP tokenizer. Runs on a GPU or, slower, on the CPU.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..errors import UserError
from ..safeio import check_output_dir, output_dir
from .config import WorldTrainConfig
from ..tiny import clip_tokenizer, sd_scheduler


def build_models(cfg: WorldTrainConfig):
    torch.manual_seed(cfg.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=cfg.text_width))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 128),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=cfg.unet_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cfg.text_width, attention_head_dim=8)
    return text_encoder, vae, unet


def to_pixels(images: np.ndarray, index: torch.Tensor, device) -> torch.Tensor:
    batch = torch.from_numpy(images[index.numpy()]).to(device).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1


def log(stage: str, step: int, total: int, loss: float, started: float) -> None:
    print(f"[{stage}] step {step}/{total} loss {loss:.4f} ({time.time() - started:.0f}s)", flush=True)


def train_vae(vae, images: np.ndarray, cfg: WorldTrainConfig, device) -> float:
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.vae_steps)
    g, started = torch.Generator().manual_seed(cfg.seed + 1), time.time()
    for step in range(1, cfg.vae_steps + 1):
        x = to_pixels(images, torch.randint(len(images), (cfg.vae_batch,), generator=g), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon.float(), x) + F.l1_loss(recon.float(), x) + cfg.vae_kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == cfg.vae_steps:
            log("vae", step, cfg.vae_steps, loss.item(), started)
    vae.eval()
    return loss.item()


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, device, batch: int = 512) -> torch.Tensor:
    chunks = [vae.encode(to_pixels(images, torch.arange(i, min(i + batch, len(images))), device)).latent_dist.mean
              for i in range(0, len(images), batch)]
    latents = torch.cat(chunks).float()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return latents * vae.config.scaling_factor


class CaptionIds:
    """Each distinct caption tokenized once; row 0 is the empty (unconditional) caption."""

    def __init__(self, tokenizer, captions: list[str], device):
        vocab = [""] + sorted(set(captions))
        ids = tokenizer(vocab, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        self.ids, self.row = ids.to(device), torch.tensor([vocab.index(c) for c in captions])


def unet_loss(text_encoder, unet, scheduler, latents: torch.Tensor, captions: CaptionIds, batch: int,
              uncond_prob: float, g: torch.Generator, device) -> torch.Tensor:
    """One step's ε-MSE on a random batch, its captions dropped with probability uncond_prob (for guidance)."""
    index = torch.randint(len(latents), (batch,), generator=g)
    drop = torch.rand(batch, generator=g) < uncond_prob
    rows = torch.where(drop, torch.zeros_like(index), captions.row[index])
    x0 = latents[index].to(device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    t = torch.randint(scheduler.config.num_train_timesteps, (batch,), generator=g).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        hidden = text_encoder(captions.ids[rows.to(device)])[0]
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=hidden).sample
    return F.mse_loss(pred.float(), noise)


def train_unet(text_encoder, unet, latents: torch.Tensor, captions: list[str], cfg: WorldTrainConfig, device,
               on_checkpoint=None) -> float:
    tokenizer, scheduler = clip_tokenizer(), DDPMScheduler.from_config(sd_scheduler().config)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    text_encoder.to(device).train()
    unet.to(device).train()
    opt = torch.optim.AdamW([{"params": unet.parameters(), "lr": cfg.unet_lr},
                             {"params": text_encoder.parameters(), "lr": cfg.text_lr}], weight_decay=1e-2)
    warmup = 500
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / cfg.unet_steps))))
    captions_ids = CaptionIds(tokenizer, captions, device)
    g, started = torch.Generator().manual_seed(cfg.seed + 2), time.time()
    for step in range(1, cfg.unet_steps + 1):
        loss = unet_loss(text_encoder, unet, scheduler, latents, captions_ids, cfg.unet_batch, cfg.uncond_prob, g,
                         device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        sched.step()
        if step % 500 == 0 or step == cfg.unet_steps:
            log("unet", step, cfg.unet_steps, loss.item(), started)
        if on_checkpoint and step % 2500 == 0 and step < cfg.unet_steps:
            on_checkpoint(step)
        if step == cfg.unet_stop_step:
            log("unet", step, cfg.unet_steps, loss.item(), started)
            break
        if cfg.unet_max_seconds and time.time() - started > cfg.unet_max_seconds:
            log("unet", step, cfg.unet_steps, loss.item(), started)
            # The record then reproduces this run without the clock: same schedule, same last step.
            cfg.unet_stop_step, cfg.unet_max_seconds = step, None
            break
    return loss.item()


MANIFEST = "training.json"


def save_pipeline(out: Path, text_encoder, vae, unet, record: dict, overwrite: bool = False) -> Path:
    """fp16 copies of the modules, saved as a diffusers folder (the training modules stay as they are)."""
    import copy

    half = [copy.deepcopy(m).half().cpu() for m in (vae, text_encoder, unet)]
    pipe = StableDiffusionPipeline(vae=half[0], text_encoder=half[1], tokenizer=clip_tokenizer(), unet=half[2],
                                   scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with output_dir(Path(out), MANIFEST, overwrite) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        compact_tokenizer(tmp / "tokenizer")
        (tmp / MANIFEST).write_text(json.dumps(record, indent=1, default=str))
    return Path(out)


def compact_tokenizer(folder: Path) -> None:
    """The same tokenizer as vocab.json + merges.txt (1.5 MB) instead of tokenizer.json (3.6 MB):
    CLIPTokenizer builds identical tokenization from either, and the package stays within its budget."""
    import shutil

    from ..tiny import TOKENIZER_DIR

    (folder / "tokenizer.json").unlink()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / name, folder / name)


def train_world(out: Path, cfg: WorldTrainConfig, workers: int = 2, device: str | None = None,
                overwrite: bool = False) -> dict:
    """Render the world, train VAE then UNet + text encoder, save the pipeline; returns the training record.
    `out` and its checkpoint folder OUT-partial (replaced as it goes) are checked before any work."""
    from .build import data_hash, render_training_set

    partial_out = Path(str(out) + "-partial")
    check_output_dir(out, MANIFEST, overwrite)
    check_output_dir(partial_out, MANIFEST, overwrite=True, what="the checkpoint folder")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA device torch can use; pass --device cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    started = time.time()
    images, captions = render_training_set(cfg.render_seeds, workers)
    print(f"rendered {len(images)} images, {len(set(captions))} captions ({time.time() - started:.0f}s)", flush=True)
    text_encoder, vae, unet = build_models(cfg)
    vae_loss = train_vae(vae, images, cfg, device)
    latents = encode_latents(vae, images, device)
    partial = {"config": asdict(cfg), "partial": True}
    unet_loss = train_unet(text_encoder, unet, latents, captions, cfg, device, lambda step: save_pipeline(
        partial_out, text_encoder, vae, unet, {**partial, "unet_step": step}, overwrite=True))
    record = {"config": asdict(cfg), "data_hash": data_hash(images, captions), "images": len(images),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "seconds": round(time.time() - started, 1), "vae_loss": vae_loss, "unet_loss": unet_loss,
              "torch": torch.__version__}
    save_pipeline(out, text_encoder, vae, unet, record, overwrite)
    return record
