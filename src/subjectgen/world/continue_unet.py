"""`subjectgen world train --init MODEL`: continue a model's UNet and text encoder on World v3, in slices that land.

The v2 model never saw a pattern, a sticker, an accessory, a two-tone colouring or a photo place; what is new in
World v3 is those words and their composition, so it continues from v2's weights rather than starting over (v2
took 6.1 M samples on an H100; one CPU thread trains about 25 samples/s). The data is `world train`'s: the training
split's scenes with their captions (30 % of a composed instance's name an attribute), never a reserved instance,
encoded by the model's own VAE encoder (the decoder may have been continued: the latents are the same). Slices and
their state are world/slices.py's.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from .config import UnetContinueConfig
from .slices import check_start, load_state, save_state, slice_entry, slice_over, write_model

WARMUP = 100


def lr_factor(step: int, steps: int) -> float:
    return min(1.0, step / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))


@torch.no_grad()
def world_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """The images' posterior means through the model's own encoder, scaled as its UNet sees latents."""
    from .vae_tune import pixels

    means = [vae.encode(pixels(images, torch.arange(i, min(i + batch, len(images))))).latent_dist.mean
             for i in range(0, len(images), batch)]
    # contiguous: the encoder's convolutions hand back channels-last latents, and the UNet's arithmetic rounds
    # differently on that layout, so a slice reading them back from its state would not equal one run
    return (torch.cat(means).float() * vae.config.scaling_factor).contiguous()


DATA_FILES = ("data.safetensors", "captions.json")


def training_data(vae, render_seeds: int, state: Path, resume: bool, workers: int,
                  items) -> tuple[torch.Tensor, list, bool]:
    """The training split's latents (the model's encoder) and captions, and whether they came from the state
    folder: rendered and encoded on a run's first slice, kept with its state (keep_data), and read back on
    --resume — the same tensors, bit for bit — so a slice does not spend its first minutes rendering again."""
    from safetensors.torch import load_file

    from ..safeio import read_json
    from .build import render_training_set

    tensors, names = (state / name for name in DATA_FILES)
    if resume and tensors.is_file() and names.is_file():
        fix = "remove it and resume again (the data is rendered anew)"
        return load_file(str(tensors))["latents"], read_json(names, fix), True
    images, captions = render_training_set(render_seeds, workers, items)
    return world_latents(vae, images), captions, False


def keep_data(state: Path, latents: torch.Tensor, captions: list) -> None:
    """The rendered data beside the slice state, for the next --resume."""
    from ..safeio import atomic_save_safetensors, atomic_write_bytes

    atomic_save_safetensors(state / DATA_FILES[0], {"latents": latents})
    atomic_write_bytes(state / DATA_FILES[1], json.dumps(captions).encode())


def load_networks(init: str):
    """The model's text encoder and UNet in fp32, trainable; its VAE frozen; its noise schedule for training."""
    from ..models import load_model

    c = load_model(init)
    c.vae.requires_grad_(False)
    for module in (c.text_encoder, c.unet):
        module.requires_grad_(True).train()
    return c, DDPMScheduler.from_config(c.scheduler.config)


def continue_unet(out: Path, cfg: UnetContinueConfig, state: Path, resume: bool = False,
                  max_minutes: float | None = None, stop_step: int | None = None, workers: int = 1,
                  items: list | None = None, overwrite: bool = False) -> dict:
    """One slice of continued training (to `stop_step`, past `max_minutes`, or to the schedule's end); saves its
    state, then writes the model folder. `items` (world/build.py's training items) is for tests on a tiny world."""
    from ..assets import fingerprint
    from .pretrain import CaptionIds, unet_loss

    init_print = fingerprint("model", cfg.init)
    check_start(out, state, resume, {"config": asdict(cfg), "init_fingerprint": init_print}, overwrite)
    c, scheduler = load_networks(cfg.init)
    started, device = time.time(), torch.device("cpu")
    latents, captions, cached = training_data(c.vae, cfg.render_seeds, state, resume, workers, items)
    caption_ids = CaptionIds(c.tokenizer, captions, device)
    modules = {"unet": c.unet, "text_encoder": c.text_encoder}
    opt = torch.optim.AdamW([{"params": c.unet.parameters(), "lr": cfg.unet_lr},
                             {"params": c.text_encoder.parameters(), "lr": cfg.text_lr}], weight_decay=1e-2)
    g = torch.Generator().manual_seed(cfg.seed)
    record = {"config": asdict(cfg), "init_fingerprint": init_print, "step": 0, "slices": []}
    if resume:
        record = load_state(state, modules, opt, g)
    first, losses = record["step"], []
    while record["step"] < cfg.steps and not slice_over(record["step"], stop_step, max_minutes, started):
        record["step"] += 1
        for group, peak in zip(opt.param_groups, (cfg.unet_lr, cfg.text_lr)):
            group["lr"] = peak * lr_factor(record["step"], cfg.steps)
        loss = unet_loss(c.text_encoder, c.unet, scheduler, latents, caption_ids, cfg.batch, cfg.uncond_prob, g,
                         device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in modules.values() for p in m.parameters()], 1.0)
        opt.step()
        losses.append(loss.item())
        if record["step"] % 50 == 0:
            print(f"[unet] step {record['step']}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)
    record["slices"].append(slice_entry(first, record, cfg.batch, started, losses, images=len(latents)))
    save_state(state, modules, opt, g, record, keep=DATA_FILES)
    if not cached:
        keep_data(state, latents, captions)
    write_model(out, cfg.init, modules, "unet_continued", record)
    return record
