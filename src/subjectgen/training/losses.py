"""The denoising loss, with DreamBooth's prior-preservation split and min-SNR weighting.

The batch is [instance samples; class samples]. Each half is averaged over its own samples with the
weights of its own timesteps, then loss = instance + λ·prior. (diffusers' train_dreambooth.py computes
SNR weights over all 2B timesteps but averages over B: wrong as soon as both are on.)
A masked loss (kohya's --masked_loss) averages each instance sample's error over its subject mask only, so
the photos' backgrounds are not learned; unlike kohya's it divides by the mask's area, so a small subject
weighs as much as a large one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ/(1-ᾱ) of each timestep."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alpha_bar / (1 - alpha_bar)


def min_snr_weights(snr_values: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023) in the units of the model's prediction target."""
    clipped = torch.clamp(snr_values, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr_values + 1)
    return clipped / snr_values


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                   alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", n_instance: int | None = None,
                   prior_weight: float = 1.0, snr_gamma: float | None = None,
                   masks: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Returns (loss, {"instance": ..., "prior": ...}); samples past `n_instance` are class (prior) samples.
    `masks`: (n_instance, 1, h, w) weights in [0, 1] on the latent grid for the instance samples, or None.
    `weights`: each sample's loss weight (flow matching's --weighting-scheme sigma_sqrt / cosmap), or None."""
    per_sample = masked_mean(F.mse_loss(pred.float(), target.float(), reduction="none"), masks)
    if snr_gamma:
        per_sample = per_sample * min_snr_weights(snr(alphas_cumprod, timesteps), snr_gamma, prediction_type)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    n_instance = len(per_sample) if n_instance is None else n_instance
    instance = per_sample[:n_instance].mean()
    if n_instance == len(per_sample):
        return instance, {"instance": instance.detach()}
    prior = per_sample[n_instance:].mean()
    return instance + prior_weight * prior, {"instance": instance.detach(), "prior": prior.detach()}


def masked_mean(errors: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Each sample's mean error; the first len(masks) samples are averaged over their mask's weight only."""
    dims = tuple(range(1, errors.ndim))
    if masks is None:
        return errors.mean(dim=dims)
    weights = torch.ones_like(errors[:, :1])
    weights[: len(masks)] = masks.to(weights)
    weights = weights.expand_as(errors)
    return (errors * weights).sum(dim=dims) / weights.sum(dim=dims).clamp_min(1e-6)


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise (SD 1.x) or the velocity (SD 2.x v-models)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")
