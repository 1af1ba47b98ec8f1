"""Settings of the built-in world's training commands (`world train`, `world train-evaluators`), with the
allowed range beside each number; stdlib only, so the CLI checks them before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import AT_LEAST_1, NON_NEGATIVE, POSITIVE, SEED, Bound, check_settings, setting


@dataclass
class WorldTrainConfig:
    seed: int = setting(0, SEED)
    render_seeds: int = setting(6, AT_LEAST_1)
    vae_steps: int = setting(3000, AT_LEAST_1)
    vae_batch: int = setting(128, AT_LEAST_1)
    vae_lr: float = setting(1e-3, POSITIVE)
    vae_kl: float = 1e-6
    unet_steps: int = setting(12000, AT_LEAST_1)
    unet_batch: int = setting(256, AT_LEAST_1)
    unet_lr: float = setting(4e-4, POSITIVE)
    text_lr: float = setting(2e-4, POSITIVE)
    # stop after this step (the learning-rate schedule still spans unet_steps), or after a wall-clock budget
    # (the record's unet_stop_step then says where)
    unet_stop_step: int | None = setting(None, AT_LEAST_1, flag="--stop-step")
    unet_max_seconds: float | None = setting(None, POSITIVE, flag="--max-seconds")
    uncond_prob: float = setting(0.1, Bound(low=0, high=1))  # caption dropout, so guidance has an unconditional model
    text_width: int = 96
    text_layers: int = 4
    unet_channels: tuple = (64, 128, 192)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class EvaluatorTrainConfig:
    seed: int = setting(7, SEED)           # not the generator's seed
    render_seeds: int = setting(4, AT_LEAST_1)
    clip_steps: int = setting(1500, AT_LEAST_1)
    clip_batch: int = setting(256, AT_LEAST_1)
    clip_lr: float = setting(1e-3, POSITIVE)
    dino_steps: int = setting(2000, AT_LEAST_1)
    dino_batch: int = setting(64, AT_LEAST_1)
    dino_lr: float = setting(5e-4, POSITIVE)
    dino_prototypes: int = 512
    # the two global views from two renders of one instance (else one image's crops, as DINO on ImageNet), with
    # DINO's norm_last_layer (without it, the first try's teacher went near-uniform: loss ~6.03, ln 512 = 6.24)
    dino_instance_views: bool = True
    # with instance views: the weight of an InfoNCE term on the two global views (each must find its partner render
    # in the batch); 0 is DINO's loss alone. Both as shipped since stop 14 (docs/WORLD.md)
    dino_instance_nce: float = setting(1.0, NON_NEGATIVE)
    merges: int = 4000      # BPE merges the eval tokenizer keeps
    width: int = 96         # both image towers
    layers: int = 4
    text_width: int = 64
    text_layers: int = 3
    patch: int = 8

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class VaeTuneConfig:
    """`world train-vae`: continue a model's VAE on World v3's images (the training split's scenes and photos of
    its instances in the photo places; never a reserved instance)."""
    init: str = setting("builtin", help="the model whose VAE is continued (a built-in name or a diffusers folder)")
    part: str = setting("decoder", choices=("decoder", "all"),
                        help="'decoder': the encoder, hence every latent the UNet and the networks on it learned "
                        "from, stays bit-identical; 'all': the whole VAE, its latents held near the old encoder's "
                        "by --anchor")
    steps: int = setting(6000, AT_LEAST_1, help="the learning-rate schedule's length in steps")
    batch: int = setting(32, AT_LEAST_1, help="images per step")
    lr: float = setting(2e-4, POSITIVE, help="peak learning rate (100 steps of warm-up, then cosine to 0)")
    anchor: float = setting(1.0, NON_NEGATIVE, help="with --part all: weight of keeping the encoder's latent means "
                            "at the old encoder's")
    seed: int = setting(3, SEED, help="seed of the data order and the posterior samples")
    scene_seeds: int = setting(2, AT_LEAST_1, help="renders per training instance in its scenes (as `world train`)")
    photos: int = setting(3, AT_LEAST_1, help="photos per training instance in its photo places")
    kl: float = 1e-6  # the world trainer's KL weight

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class UnetContinueConfig:
    """`world train --init MODEL`: continue a model's UNet and text encoder on World v3's training split (the captions
    that name attributes included), on the latents of its own VAE's encoder."""
    init: str = setting("builtin", help="the model to continue (a built-in name or a diffusers folder)")
    steps: int = setting(10000, AT_LEAST_1, help="the learning-rate schedule's length in steps")
    batch: int = setting(64, AT_LEAST_1, help="samples per step")
    unet_lr: float = setting(1e-4, POSITIVE, help="the UNet's peak learning rate (100 steps of warm-up, then "
                             "cosine to 0)")
    text_lr: float = setting(5e-5, POSITIVE, help="the text encoder's peak learning rate")
    seed: int = setting(5, SEED, help="seed of the data order, noise and timesteps")
    render_seeds: int = setting(6, AT_LEAST_1, help="renders per (instance, context), as `world train`")
    uncond_prob: float = 0.1  # caption dropout, as `world train`

    def __post_init__(self) -> None:
        check_settings(self)
