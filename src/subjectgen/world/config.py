"""Settings of the built-in world's training commands (`world train`, `world train-evaluators`), with the
allowed range beside each number; stdlib only, so the CLI checks them before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import AT_LEAST_1, POSITIVE, SEED, Bound, check_settings, ranged


@dataclass
class WorldTrainConfig:
    seed: int = ranged(0, SEED)
    render_seeds: int = ranged(6, AT_LEAST_1)
    vae_steps: int = ranged(3000, AT_LEAST_1)
    vae_batch: int = ranged(128, AT_LEAST_1)
    vae_lr: float = ranged(1e-3, POSITIVE)
    vae_kl: float = 1e-6
    unet_steps: int = ranged(12000, AT_LEAST_1)
    unet_batch: int = ranged(256, AT_LEAST_1)
    unet_lr: float = ranged(4e-4, POSITIVE)
    text_lr: float = ranged(2e-4, POSITIVE)
    unet_stop_step: int | None = ranged(None, AT_LEAST_1)  # stop here; the learning-rate schedule still spans unet_steps
    unet_max_seconds: float | None = ranged(None, POSITIVE)  # a wall-clock budget; the record's unet_stop_step says where
    uncond_prob: float = ranged(0.1, Bound(low=0, high=1))  # caption dropout, so guidance has an unconditional model
    text_width: int = 96
    text_layers: int = 4
    unet_channels: tuple = (64, 128, 192)

    def __post_init__(self) -> None:
        check_settings(self, {"unet_stop_step": "--stop-step", "unet_max_seconds": "--max-seconds"})


@dataclass
class EvaluatorTrainConfig:
    seed: int = ranged(7, SEED)           # not the generator's seed
    render_seeds: int = ranged(4, AT_LEAST_1)
    clip_steps: int = ranged(1500, AT_LEAST_1)
    clip_batch: int = ranged(256, AT_LEAST_1)
    clip_lr: float = ranged(1e-3, POSITIVE)
    dino_steps: int = ranged(2000, AT_LEAST_1)
    dino_batch: int = ranged(64, AT_LEAST_1)
    dino_lr: float = ranged(5e-4, POSITIVE)
    dino_prototypes: int = 512
    merges: int = 4000      # BPE merges the eval tokenizer keeps
    width: int = 96         # both image towers
    layers: int = 4
    text_width: int = 64
    text_layers: int = 3
    patch: int = 8

    def __post_init__(self) -> None:
        check_settings(self)
