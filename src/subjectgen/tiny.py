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


def build_tiny_sdxl_pipeline(seed: int = 0, width: int = 32):
    """A tiny SDXL pipeline (the real classes: two CLIP text encoders, the second with its projection; a UNet
    with SDXL's text-time conditioning): 16 px images, 8x8x4 latents. Random weights, as build_tiny_pipeline."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=width,
                            hidden_act="gelu")
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * width, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + width, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler)


def save_tiny_sdxl_pipeline(out: Path, seed: int = 0) -> Path:
    with atomic_dir(Path(out)) as tmp:
        build_tiny_sdxl_pipeline(seed).save_pretrained(tmp, safe_serialization=True)
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


def build_tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """A tiny FLUX.1 pipeline (the real classes: CLIP-L and T5 text encoders, FluxTransformer2DModel, a 16-channel
    VAE, the flow-matching scheduler with dynamic shifting): 32 px images, 16x16x16 latents packed into 64
    tokens. guidance_embeds: FLUX.1-dev's guidance embedding (False: schnell's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, projection_dim=32))
    t5 = T5EncoderModel(T5Config(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
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


def save_tiny_flux_pipeline(out: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    with atomic_dir(Path(out)) as tmp:
        build_tiny_flux_pipeline(seed, guidance_embeds).save_pretrained(tmp, safe_serialization=True)
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
