"""The image encoder a method conditions on (ProFusion's PromptNet, the apprentice): any transformers CLIP
vision model, resolved as the asset kind "image_encoder" (`builtin`: the tower trained against the built-in
model's text encoder by `subjectgen world train-image-encoder`; on Stable Diffusion, e.g.
openai/clip-vit-large-patch14 for SD 1.x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import assets
from .errors import UserError
from .eval.metrics import CLIP_MEAN, CLIP_STD


def load_image_encoder(ref: str, device=None):
    """A CLIP vision tower (with or without its projection) in eval mode, fp32."""
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    path = assets.resolve("image_encoder", ref)
    errors = []
    for cls in (CLIPVisionModelWithProjection, CLIPVisionModel):
        try:
            model = cls.from_pretrained(path, use_safetensors=True)
            return model.to(device or "cpu", torch.float32).eval().requires_grad_(False)
        except (OSError, ValueError) as exc:
            errors.append(str(exc).splitlines()[0])
    raise UserError(f"cannot load the image encoder '{ref}' ({errors[-1]}); give a folder or hub id of a "
                    "transformers CLIP vision model, or 'builtin'")


@torch.no_grad()
def image_states(encoder, pixels: torch.Tensor) -> torch.Tensor:
    """The encoder's last hidden states (B, L, width) for images in [-1, 1] (B, 3, H, W), resized to its size."""
    size = encoder.config.image_size
    x = (pixels.float().to(encoder.device) + 1) / 2
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return encoder(pixel_values=(x - mean) / std).last_hidden_state
