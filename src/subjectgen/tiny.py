"""A tiny Stable-Diffusion-architecture pipeline built in code: the real component classes at toy sizes.

Tests use it, and so can anyone who wants to see the code paths run in seconds. Random weights: it
produces noise-like images, but every method trains, saves and loads on it exactly as on real SD.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .safeio import atomic_dir

TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"


def clip_tokenizer() -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (49,408 tokens), from the files shipped in the package."""
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=77)


def sd_scheduler() -> DDIMScheduler:
    """Stable Diffusion's noise schedule (scaled-linear betas, 1,000 steps)."""
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def build_tiny_pipeline(seed: int = 0, width: int = 32) -> StableDiffusionPipeline:
    """A ~2 M-parameter SD pipeline: 16 px images, 8x8x4 latents, 32-wide CLIP text encoder."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=width,
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=width, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=sd_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_tiny_pipeline(out: Path, seed: int = 0) -> Path:
    """Write the tiny pipeline as a normal diffusers folder (safetensors), atomically."""
    with atomic_dir(Path(out)) as tmp:
        build_tiny_pipeline(seed).save_pretrained(tmp, safe_serialization=True)
    return Path(out)


def build_tiny_sdxl_pipeline(seed: int = 0, width: int = 32, width_2: int | None = None):
    """A tiny SDXL pipeline (the real classes: two CLIP text encoders, the second with its projection; a UNet
    with SDXL's text-time conditioning): 16 px images, 8x8x4 latents. Random weights, as build_tiny_pipeline.
    width_2: the second encoder's width (default: `width`); a single file needs them to differ, as SDXL's 768 and
    1280 do, because diffusers tells its two encoders apart by their widths."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    width_2 = width_2 or width

    def clip(w):
        return CLIPTextConfig(vocab_size=49408, hidden_size=w, intermediate_size=2 * w, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=77, projection_dim=w, hidden_act="gelu")

    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width + width_2, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + width_2, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(clip(width)), text_encoder_2=CLIPTextModelWithProjection(clip(width_2)),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler)


def save_tiny_sdxl_pipeline(out: Path, seed: int = 0, width_2: int | None = None) -> Path:
    with atomic_dir(Path(out)) as tmp:
        build_tiny_sdxl_pipeline(seed, width_2=width_2).save_pretrained(tmp, safe_serialization=True)
    return Path(out)


def t5_tokenizer(max_length: int = 32):
    """A small T5-style tokenizer (a Unigram model, trained here in a second with the `tokenizers` library on the
    world's kind of captions): for tiny FLUX models, which have no hub to fetch T5's from."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = [f"a {c} {x}" for c in ("dog", "cat", "backpack", "teapot", "sks dog", "<s*> dog")
              for x in ("on the beach", "in the snow", "wearing a santa hat", "red", "in the jungle")]
    tok.train_from_iterator(corpus * 20, trainers.UnigramTrainer(vocab_size=200, unk_token="<unk>",
                                                                 special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def build_tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True, single_layers: int = 1):
    """A tiny FLUX.1 pipeline (the real classes: CLIP-L and T5 text encoders, FluxTransformer2DModel, a 16-channel
    VAE, the flow-matching scheduler with dynamic shifting): 32 px images, 16x16x16 latents packed into 64
    tokens. guidance_embeds: FLUX.1-dev's guidance embedding (False: schnell's); single_layers: its single-stream
    blocks (0: for diffusers' reader of ComfyUI's layout, which splits a single block's linear1 at FLUX.1's real
    widths only)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, projection_dim=32))
    t5 = T5EncoderModel(T5Config(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=single_layers,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 32),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32, scaling_factor=0.3611,
                        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, norm_num_groups=32)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(),
                        text_encoder_2=t5, tokenizer_2=t5_tokenizer(), transformer=transformer)


def save_tiny_flux_pipeline(out: Path, seed: int = 0, guidance_embeds: bool = True, single_layers: int = 1) -> Path:
    with atomic_dir(Path(out)) as tmp:
        build_tiny_flux_pipeline(seed, guidance_embeds, single_layers).save_pretrained(tmp, safe_serialization=True)
    return Path(out)


QWEN_CHAT_TEMPLATE = (  # Qwen3's template, cut to what Flux2KleinPipeline uses: user turns, no-thinking reply
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def qwen_tokenizer(max_length: int = 64):
    """A small Qwen2-style tokenizer (byte-level BPE with Qwen's chat tokens and a chat template, trained here in a
    second with the `tokenizers` library on the world's kind of captions): for tiny FLUX.2 [klein] models."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [f"user assistant a {c} {x}" for c in ("dog", "cat", "backpack", "teapot", "sks dog", "<s*> dog")
              for x in ("on the beach", "in the snow", "wearing a santa hat", "red", "in the jungle")]
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    return Qwen2TokenizerFast(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                              chat_template=QWEN_CHAT_TEMPLATE, model_max_length=max_length,
                              additional_special_tokens=special[1:])


def build_tiny_flux2_klein_pipeline(seed: int = 0, distilled: bool = False):
    """A tiny FLUX.2 [klein] pipeline (the real classes: a Qwen3 text encoder of 27 layers, so the pipeline's
    hidden layers 9, 18 and 27 exist, Flux2Transformer2DModel, AutoencoderKLFlux2 with non-trivial batch-norm
    statistics, the flow-matching scheduler): 64 px images (the pipeline takes no smaller reference images), 16x16x8
    latents patchified to 8x8x32, 64 tokens.
    distilled: the step-distilled variant's flag (no classifier-free guidance)."""
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=27, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True))
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=32, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * 16, timestep_guidance_channels=32, mlp_ratio=2.0, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False)
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(32, 32, 32),
                             layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
                             up_block_types=("UpDecoderBlock2D",) * 3, sample_size=64, norm_num_groups=32)
    with torch.no_grad():  # statistics as a trained VAE has them, so normalising is not the identity
        vae.bn.running_mean.copy_(0.1 * torch.randn_like(vae.bn.running_mean))
        vae.bn.running_var.copy_(0.5 + torch.rand_like(vae.bn.running_var))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
                                                time_shift_type="exponential")
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=distilled)


def save_tiny_flux2_klein_pipeline(out: Path, seed: int = 0, distilled: bool = False) -> Path:
    with atomic_dir(Path(out)) as tmp:
        build_tiny_flux2_klein_pipeline(seed, distilled).save_pretrained(tmp, safe_serialization=True)
    return Path(out)


# --- an original-layout (A1111/ComfyUI) single-file SDXL checkpoint, for tests of single-file loading ---------------
# The inverse of the conversion diffusers applies in `from_single_file` (its single_file_utils), as diffusers'
# scripts/convert_diffusers_to_original_sdxl.py does it, but for any number of blocks and layers per block.

RESNET_NAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _renamed(rest: str, names) -> str:
    for new, old in names:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def original_unet_key(key: str, config) -> str:
    """A diffusers UNet2DConditionModel key in the original (LDM) UNet's layout."""
    import re

    n = config.layers_per_block
    head, _, tail = key.rpartition(".")  # tail: weight / bias
    for new, old in UNET_TOP.items():
        if head == new:
            return f"{old}.{tail}"
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        side, block, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if side == "down":
            index = 1 + block * (n + 1) + (n if kind == "downsamplers" else j)
            where = "input_blocks"
        else:
            index = block * (n + 1) + (n if kind == "upsamplers" else j)
            where = "output_blocks"
        if kind == "resnets":
            return f"{where}.{index}.0.{_renamed(rest, RESNET_NAMES)}"
        if kind == "attentions":
            return f"{where}.{index}.1.{rest}"
        if kind == "downsamplers":
            return f"{where}.{index}.0.op.{rest.removeprefix('conv.')}"
        has_attention = "CrossAttn" in config.up_block_types[block]
        return f"{where}.{index}.{2 if has_attention else 1}.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        if m[1] == "resnets":
            return f"middle_block.{2 * int(m[2])}.{_renamed(m[3], RESNET_NAMES)}"
        return f"middle_block.1.{m[3]}"
    raise ValueError(f"no original-layout name for UNet key {key}")


def original_vae_key(key: str, config) -> str:
    import re

    top = len(config.up_block_types) - 1
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda m: f"decoder.up.{top - int(m[1])}.block.{m[2]}.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{top - int(m[1])}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    for new, old in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                     ("to_out.0.", "proj_out.")):
        key = key.replace(f"mid_block.attentions.0.{new}", f"mid.attn_1.{old}")
    return key


def original_open_clip(state: dict) -> dict:
    """A transformers CLIPTextModelWithProjection state dict in OpenCLIP's layout (SDXL's second encoder): q, k, v
    fused into in_proj, the projection transposed."""
    out, fused = {}, {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.split(".")[-1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif ".self_attn." in key and key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
            layer, proj, tail = key.split(".")[2], key.split(".")[-2], key.split(".")[-1]
            fused.setdefault((layer, tail), {})[proj] = value
        else:
            for new, old in (("encoder.layers.", "transformer.resblocks."), ("self_attn.", "attn."),
                             ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                             ("mlp.fc2", "mlp.c_proj")):
                key = key.replace(new, old)
            out[key] = value
    for (layer, tail), parts in fused.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{tail}"] = torch.cat(
            [parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


def original_sdxl_state_dict(pipe) -> dict[str, torch.Tensor]:
    """An SDXL pipeline's weights under the original repository's keys (sd_xl_base_1.0.safetensors' layout)."""
    state = {f"model.diffusion_model.{original_unet_key(k, pipe.unet.config)}": v
             for k, v in pipe.unet.state_dict().items()}
    for k, v in pipe.vae.state_dict().items():
        if "mid_block.attentions" in k and v.ndim == 2:  # the original's attention is 1x1 convolutions
            v = v[:, :, None, None]
        state[f"first_stage_model.{original_vae_key(k, pipe.vae.config)}"] = v
    for k, v in pipe.text_encoder.state_dict().items():
        state[f"conditioner.embedders.0.transformer.text_model.{k.removeprefix('text_model.')}"] = v
    for k, v in original_open_clip(pipe.text_encoder_2.state_dict()).items():
        state[f"conditioner.embedders.1.model.{k}"] = v
    return {k: v.contiguous() for k, v in state.items()}


def save_tiny_sdxl_single_file(out: Path, seed: int = 0, width_2: int = 48) -> Path:
    """The tiny SDXL as one original-layout .safetensors file, as A1111 and ComfyUI users have SDXL (its second
    encoder wider than the first, as in SDXL: see build_tiny_sdxl_pipeline)."""
    from safetensors.torch import save_file

    save_file(original_sdxl_state_dict(build_tiny_sdxl_pipeline(seed, width_2=width_2)), str(out))
    return Path(out)
