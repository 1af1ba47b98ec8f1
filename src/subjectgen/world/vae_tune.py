"""`subjectgen world train-vae`: continue a model's VAE on World v3's images, in slices that land.

The v2 VAE never saw the photo places, patterns, stickers or accessories (docs/WORLD.md): it decodes a tiled
floor as a pink field. This continues it on the training split's scenes and on photos of the training
instances in the photo places (seeds no other set uses; never a reserved instance). With `--part decoder`
(the default) the encoder is frozen, so every latent the UNet, PromptNet and apprentice learned from stays
bit-identical; `--part all` trains the encoder too, its latent means held near the old encoder's (`anchor`)
so the UNet still finds its latent space. A slice (`--max-minutes`) ends with its state in the cache
(world/slices.py) and the model folder written, so each slice lands; `--resume` continues exactly.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..errors import UserError
from .config import VaeTuneConfig
from .slices import check_start, load_state, save_state, slice_entry, slice_over, write_model

PHOTO_SEED = 50_000  # photo seeds of the VAE's data: no training, evaluator, farm (30,000+) or test set uses them
WARMUP = 100


def _photo(item) -> np.ndarray:
    from .scene import render_photo

    inst, seed = item
    return np.asarray(render_photo(inst, seed)[0])


def vae_training_images(cfg: VaeTuneConfig, workers: int = 1, instances: dict | None = None) -> np.ndarray:
    """The training split's scenes (`world train`'s items) and `cfg.photos` photos of each of its instances."""
    from .build import render_training_set, training_items
    from .catalog import training_instances

    instances = instances or training_instances()
    scenes, _ = render_training_set(items=training_items(cfg.scene_seeds, instances), workers=workers)
    shots = [(inst, PHOTO_SEED + k) for insts in instances.values() for inst in insts for k in range(cfg.photos)]
    with ProcessPoolExecutor(workers) as pool:
        photos = list(pool.map(_photo, shots, chunksize=64))
    return np.concatenate([scenes, np.stack(photos)])


def load_vae(model: str) -> AutoencoderKL:
    """A model's VAE in fp32, from a built-in name or a diffusers folder."""
    from ..assets import resolve

    folder = Path(resolve("model", model)) / "vae"
    if not (folder / "config.json").is_file():
        raise UserError(f"--init {model}: no vae/ folder with config.json there; give a diffusers model folder "
                        "or a built-in name")
    return AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()


def pixels(images: np.ndarray, index: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(images[index.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def posterior_moments(vae: AutoencoderKL, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """The (frozen) encoder's posterior parameters (mean and log-variance, stacked on channels) of every image."""
    return torch.cat([vae.quant_conv(vae.encoder(pixels(images, torch.arange(i, min(i + batch, len(images))))))
                      for i in range(0, len(images), batch)])


def lr_at(step: int, cfg: VaeTuneConfig) -> float:
    warm = min(1.0, step / WARMUP)
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / cfg.steps)))


def step_loss(vae: AutoencoderKL, images: np.ndarray, old: torch.Tensor, cfg: VaeTuneConfig,
              g: torch.Generator) -> torch.Tensor:
    index = torch.randint(len(images), (cfg.batch,), generator=g)
    x = pixels(images, index)
    moments = old[index] if cfg.part == "decoder" else vae.quant_conv(vae.encoder(x))
    mean, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
    recon = vae.decode(z).sample
    loss = F.mse_loss(recon, x) + F.l1_loss(recon, x)
    if cfg.part == "all":
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        old_mean = old[index].chunk(2, dim=1)[0]
        loss = loss + cfg.kl * kl + cfg.anchor * F.mse_loss(mean, old_mean)
    return loss


def trainable(vae: AutoencoderKL, part: str) -> list[torch.nn.Parameter]:
    if part == "all":
        return list(vae.parameters())
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def tune_vae(out: Path, cfg: VaeTuneConfig, state: Path, resume: bool = False, max_minutes: float | None = None,
             stop_step: int | None = None, workers: int = 1, instances: dict | None = None,
             overwrite: bool = False) -> dict:
    """Run one slice (to `stop_step`, past `max_minutes`, or to the schedule's end); save its state, then write
    the model folder (`init` with the continued VAE). Returns the record of every slice so far. `instances`
    (class -> instances; default: the training split's) is for tests on a tiny world."""
    from ..assets import fingerprint

    init_print = fingerprint("model", cfg.init)
    check_start(out, state, resume, {"config": asdict(cfg), "init_fingerprint": init_print}, overwrite)
    vae, started = load_vae(cfg.init), time.time()
    images = vae_training_images(cfg, workers, instances)
    old = posterior_moments(vae, images)
    opt = torch.optim.AdamW(trainable(vae, cfg.part), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    record = {"config": asdict(cfg), "init_fingerprint": init_print, "step": 0, "slices": []}
    if resume:
        record = load_state(state, {"vae": vae}, opt, g)
    first, losses = record["step"], []
    vae.train()
    while record["step"] < cfg.steps and not slice_over(record["step"], stop_step, max_minutes, started):
        record["step"] += 1
        for group in opt.param_groups:
            group["lr"] = lr_at(record["step"], cfg)
        loss = step_loss(vae, images, old, cfg, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if record["step"] % 100 == 0:
            print(f"[vae] step {record['step']}/{cfg.steps} loss {np.mean(losses[-100:]):.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)
    vae.eval()
    record["slices"].append(slice_entry(first, record, cfg.batch, started, losses, images=len(images)))
    save_state(state, {"vae": vae}, opt, g, record)
    write_model(out, cfg.init, {"vae": vae}, "vae_continued", record)
    return record
