"""IP-Adapter Plus's architecture and file format, for the apprentice (methods/apprentice.py).

An image projection (IP-Adapter Plus's resampler: learned queries cross-attending over the image encoder's
penultimate hidden states) turns each demonstration into `num_tokens` tokens; the demonstrations' tokens are
concatenated; every cross-attention layer of the frozen UNet gets a decoupled attention beside the text's
(to_k_ip / to_v_ip, initialised from to_k / to_v). The modules are diffusers' own (IPAdapterPlusImageProjection,
IPAdapterAttnProcessor2_0), installed by diffusers' own loader, so what we train and what
`pipe.load_ip_adapter(...)` loads are one thing. The file is IP-Adapter's: one safetensors with `image_proj.*`
(the reference code's Resampler names) and `ip_adapter.*` (`{n}.to_k_ip.weight` for the n-th attention
processor, cross-attention ones at odd n), beside an `image_encoder/` folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from ..errors import UserError

WEIGHTS = "ip_adapter.safetensors"
IMAGE_ENCODER = "image_encoder"
DEPTH = 4        # diffusers' loader builds the Plus resampler with its default depth, so the file must have 4 blocks
DIM_HEAD = 64    # ... and reads its heads as to_q's width / 64


def new_state(unet, image_width: int, num_tokens: int = 16, seed: int = 0, values: str = "zero") -> dict[str, dict]:
    """A fresh adapter in the file's layout: a resampler from `seed` (IP-Adapter Plus's shape: 4 blocks, the UNet's
    cross-attention width, heads of 64, so SD 1.x's 768 gets its 12), to_k_ip copied from each cross-attention
    layer's to_k. to_v_ip: zeros (values="zero": the image branch starts as a no-op and grows, as a LoRA's B or a
    ControlNet's zero convolution), or to_v's copy (values="to_v", IP-Adapter's own init: the branch starts as a
    second look through the text's weights, a large change to every layer until training tames it)."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    heads = max(2, cross // DIM_HEAD)
    projection = IPAdapterPlusImageProjection(embed_dims=image_width, output_dims=cross, hidden_dims=cross,
                                              depth=DEPTH, dim_head=DIM_HEAD, heads=heads, num_queries=num_tokens)
    ip = {}
    for n, name in enumerate(cross_attention_names(unet)):
        attn = unet.get_submodule(name)
        ip[f"{2 * n + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().float().clone()
        to_v = attn.to_v.weight.detach().float()
        ip[f"{2 * n + 1}.to_v_ip.weight"] = torch.zeros_like(to_v) if values == "zero" else to_v.clone()
    return {"image_proj": to_file_names(projection.state_dict()), "ip_adapter": ip}


def cross_attention_names(unet) -> list[str]:
    """The UNet's cross-attention modules in diffusers' processor order (the order the file numbers them in)."""
    return [name[: -len(".processor")] for name in unet.attn_processors
            if not name.endswith("attn1.processor") and not name.startswith("encoder_hid_proj.")]


def install(unet, state: dict[str, dict]) -> None:
    """Put the adapter into the UNet with diffusers' own loader (what pipe.load_ip_adapter calls)."""
    check_fits(state, unet)
    unet._load_ip_adapter_weights([state])


def installed_state(unet) -> dict[str, dict]:
    """The UNet's adapter back in the file's layout (the inverse of diffusers' conversion)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    ip = {}
    for n, name in enumerate(cross_attention_names(unet)):
        processor = unet.get_submodule(name).processor
        ip[f"{2 * n + 1}.to_k_ip.weight"] = processor.to_k_ip[0].weight.detach()
        ip[f"{2 * n + 1}.to_v_ip.weight"] = processor.to_v_ip[0].weight.detach()
    return {"image_proj": to_file_names(projection.state_dict()), "ip_adapter": ip}


def adapter_modules(unet) -> dict[str, torch.nn.Module]:
    """The adapter's trainable modules inside the UNet: the image projection and each layer's to_k_ip/to_v_ip."""
    modules = {"image_proj": unet.encoder_hid_proj}
    for name in cross_attention_names(unet):
        modules[name] = unet.get_submodule(name).processor
    return modules


def set_scale(unet, scale: float) -> None:
    """The image branch's weight in every layer (pipe.set_ip_adapter_scale)."""
    for name in cross_attention_names(unet):
        unet.get_submodule(name).processor.scale = [scale]


def to_file_names(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' IPAdapterPlusImageProjection names -> the reference Resampler's (to_k and to_v as one to_kv)."""
    out = {}
    for key, value in diffusers_state.items():
        key = re.sub(r"layers\.(\d+)\.ln0\.", r"layers.\1.0.norm1.", key)
        key = re.sub(r"layers\.(\d+)\.ln1\.", r"layers.\1.0.norm2.", key)
        key = re.sub(r"layers\.(\d+)\.attn\.to_out\.0\.", r"layers.\1.0.to_out.", key)
        key = re.sub(r"layers\.(\d+)\.attn\.", r"layers.\1.0.", key)
        key = re.sub(r"layers\.(\d+)\.ff\.0\.", r"layers.\1.1.0.", key)
        key = re.sub(r"layers\.(\d+)\.ff\.1\.net\.0\.proj\.", r"layers.\1.1.1.", key)
        key = re.sub(r"layers\.(\d+)\.ff\.1\.net\.2\.", r"layers.\1.1.3.", key)
        out[key] = value.detach().contiguous()
    for key in [k for k in out if k.endswith(".0.to_k.weight")]:
        out[key.replace("to_k", "to_kv")] = torch.cat([out.pop(key), out.pop(key.replace("to_k", "to_v"))])
    return out


def save(folder: Path, state: dict[str, dict], image_encoder, dtype=torch.float16) -> None:
    """The adapter file and its image encoder (a loaded transformers model, saved in safetensors): the layout of
    h94/IP-Adapter's models/ folder, which pipe.load_ip_adapter(folder, subfolder="", ...) reads."""
    from ..safeio import atomic_save_safetensors

    flat = {f"{part}.{k}": v.to(dtype).contiguous() for part, tensors in state.items() for k, v in tensors.items()}
    atomic_save_safetensors(folder / WEIGHTS, flat)
    if (folder / IMAGE_ENCODER).exists():
        shutil.rmtree(folder / IMAGE_ENCODER)
    image_encoder.save_pretrained(folder / IMAGE_ENCODER, safe_serialization=True)


def load_state(path: Path) -> dict[str, dict]:
    """An adapter file as {image_proj: ..., ip_adapter: ...} in fp32; a one-line error if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"{path} is not a readable IP-Adapter file ({str(exc).splitlines()[0]})") from None
    state: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        if part not in state:
            raise UserError(f"{path} is not an IP-Adapter file (key {key}; expected image_proj.* and ip_adapter.*)")
        state[part][rest] = value.float()
    return state


def check_fits(state: dict[str, dict], unet) -> None:
    """A one-line error when the adapter was made for a UNet of other widths or layers."""
    names = cross_attention_names(unet)
    ip, proj = state["ip_adapter"], state["image_proj"]
    wanted = {f"{2 * n + 1}.to_k_ip.weight" for n in range(len(names))}
    shapes_fit = all(k in ip and ip[k].shape == unet.get_submodule(names[(int(k.split(".")[0]) - 1) // 2])
                     .to_k.weight.shape for k in wanted)
    if set(k for k in ip if k.endswith("to_k_ip.weight")) != wanted or not shapes_fit or \
            proj.get("proj_out.weight", torch.empty(0)).shape[:1] != (unet.config.cross_attention_dim,):
        raise UserError("the apprentice (IP-Adapter) was made for another base model: its layers do not fit this "
                        "UNet's cross-attention; train one for this model with 'subjectgen apprentice train'")
