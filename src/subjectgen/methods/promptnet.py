"""ProFusion's PromptNet (Zhou et al. 2023): an encoder that maps a reference image to the word embedding S*.

It is the base UNet's encoder half (conv_in, the time embedding, the down blocks and the mid block, initialised
from the base UNet's weights). Its inputs: the clean reference latent through conv_in, plus the noisy latent x_t
through a small conv-SiLU-conv embedding added to conv_in's output (zero-initialised, so training starts from
the reference alone; `noisy_input=False` leaves x_t out, so S* depends on the reference alone); the timestep; and cross-attention over an image encoder's last hidden states, projected
to the UNet's cross-attention width. Every block's map is pooled to a small grid and projected; the maps,
concatenated, are reduced to `num_vectors` tokens of the text encoder's width. A diffusers ModelMixin, so
`save_pretrained` / `from_pretrained` write and read it in safetensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from torch import nn

ENCODER_PARTS = ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block")


class PromptNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, unet_config: dict, image_width: int, text_width: int, num_vectors: int = 1,
                 proj_channels: int = 64, grid: int = 2, noisy_input: bool = True):
        super().__init__()
        unet = UNet2DConditionModel(**{k: v for k, v in unet_config.items() if not k.startswith("_")})
        for part in ENCODER_PARTS:  # the encoder half; the decoder half is dropped
            setattr(self, part, getattr(unet, part))
        channels = list(unet.config.block_out_channels)
        first, latent = channels[0], unet.config.in_channels
        self.noisy_embedding = None
        if noisy_input:
            self.noisy_embedding = nn.Sequential(nn.Conv2d(latent, first, 3, padding=1), nn.SiLU(),
                                                 nn.Conv2d(first, first, 3, padding=1))
            nn.init.zeros_(self.noisy_embedding[2].weight)
            nn.init.zeros_(self.noisy_embedding[2].bias)
        self.image_projection = nn.Linear(image_width, unet.config.cross_attention_dim)
        maps = [first] + channels + [channels[-1]]  # conv_in, each down block, the mid block
        self.projections = nn.ModuleList(nn.Conv2d(c, proj_channels, 2, stride=2) for c in maps)
        self.to_tokens = nn.Conv2d(len(maps) * proj_channels, num_vectors * text_width, grid)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, image_width: int, text_width: int,
                  num_vectors: int = 1, noisy_input: bool = True) -> "PromptNet":
        """A PromptNet whose encoder half starts as `unet`'s (the reference's initialisation)."""
        config = {k: v for k, v in unet.config.items() if not k.startswith("_")}  # JSON-safe: no _name_or_path
        net = cls(config, image_width, text_width, num_vectors, noisy_input=noisy_input)
        state = {k: v for k, v in unet.state_dict().items() if k.split(".")[0] in ENCODER_PARTS}
        missing = net.load_state_dict(state, strict=False).unexpected_keys
        if missing:
            raise ValueError(f"PromptNet has no place for {missing[0]}")
        return net.to(unet.device, torch.float32)

    def forward(self, reference: torch.Tensor, timestep: torch.Tensor, image_states: torch.Tensor,
                noisy: torch.Tensor) -> torch.Tensor:
        """S* of shape (B, num_vectors, text_width) from the reference latent (B, 4, h, w), the timesteps (B,) or
        a scalar, the image encoder's last hidden states (B, L, image_width) and the noisy latent x_t."""
        dtype = self.conv_in.weight.dtype
        timestep = torch.as_tensor(timestep, device=reference.device).reshape(-1).expand(len(reference))
        emb = self.time_embedding(self.time_proj(timestep).to(dtype))
        context = self.image_projection(image_states.to(dtype))
        sample = self.conv_in(reference.to(dtype))
        if self.noisy_embedding is not None:
            sample = sample + self.noisy_embedding(noisy.to(dtype))
        maps = [sample]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, _ = block(hidden_states=sample, temb=emb, encoder_hidden_states=context)
            else:
                sample, _ = block(hidden_states=sample, temb=emb)
            maps.append(sample)
        maps.append(self.mid_block(sample, emb, encoder_hidden_states=context))
        grid = 2 * self.config.grid
        pooled = [proj(F.adaptive_avg_pool2d(m, grid)) for proj, m in zip(self.projections, maps)]
        tokens = self.to_tokens(torch.cat(pooled, dim=1))  # (B, N * D, 1, 1)
        return tokens.reshape(len(reference), self.config.num_vectors, self.config.text_width)
