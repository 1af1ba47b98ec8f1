"""Training speed against the peer: diffusers' own examples/dreambooth/train_dreambooth_lora.py (SD),
train_dreambooth_lora_sdxl.py (`--family sdxl`), train_dreambooth_lora_flux.py (`--family flux`) or
train_dreambooth_lora_flux2_klein.py (`--family flux2`), run beside `subjectgen train lora` on identical settings, in
interleaved pairs.

SD: the built-in model in fp32 at 64 px. SDXL: a mid-size random-weight SDXL built here (a quarter of SDXL's
widths, its depths: UNet blocks 80/160/320 with 1/2/10 transformer layers, CLIP-L and OpenCLIP-G at a quarter
width, the VAE at a quarter width) at 256 px. FLUX.1: a mid-size random-weight FLUX.1-dev built here (mid_flux: a
quarter of its widths and depths) at 256 px, T5 prompts of 128 tokens. FLUX.2 [klein]: a mid-size random-weight
klein base built here (KLEIN_SIZES['mid']: a quarter of the 4B's widths and depths) at 256 px, Qwen3 prompts of 128
tokens, the pipeline's hidden layers 9, 18, 27 for both. The photos are the same.

Settings shared by both: the built-in model saved in fp32 (a plain diffusers folder), one subject's photos (its
masks left out: the peer cannot read a masks/ folder), "a sks dog", rank 4, lr 1e-4 constant, no warm-up,
gradient clipping 1.0, seed 0, `--steps` steps, one thread each (OMP_NUM_THREADS=1), for each batch size and
with and without prior preservation. Class images are made once, outside the timings, by ours (`--num-class-images`
of them) and copied into the peer's --class_data_dir, so both train on the same ones and the peer makes none.
Reported: wall clock per run (process start to exit), the training loop's steps/s (ours: the manifest; the
peer: its progress bar's final rate), peak RSS (the process's maximum resident set), and ours / peer ratios.

The peer's venv is made by ../shared/peers/setup_peer.sh (`--setup`); without it the benchmark says so and
exits 0, so `benchmarks/run_all.py` can run where the peer is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"
SCRIPTS = {"sd": PEERS / "diffusers_train_dreambooth_lora.py",
           "sdxl": PEERS / "diffusers_train_dreambooth_lora_sdxl.py",
           "flux": PEERS / "diffusers_train_dreambooth_lora_flux.py",
           "flux2": PEERS / "diffusers_train_dreambooth_lora_flux2_klein.py"}
RESOLUTION = {"sd": 64, "sdxl": 256, "flux": 256, "flux2": 256}
T5_TOKENS = 128  # the mid-size FLUX.1's T5 prompt length (FLUX.1-dev's is 512)
QWEN_TOKENS = 128  # the mid-size FLUX.2 [klein]'s Qwen3 prompt length (the pipeline's is 512)
# What the peer must be told of a family's model: the prompt length; on klein the Qwen3 layers the pipeline and
# subjectgen read (the script's own default, 10 20 30, is not the pipeline's 9 18 27)
PEER_FLAGS = {"flux": ("--max_sequence_length", str(T5_TOKENS)),
              "flux2": ("--max_sequence_length", str(QWEN_TOKENS), "--text_encoder_out_layers", "9", "18", "27")}
SUBJECT = "dog"


def fp32_model(folder: Path) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline

    from subjectgen.assets import SHIPPED

    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32, safety_checker=None)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# SDXL at two sizes, built in code with random weights: its own depths at a quarter of its widths (the peer tables),
# and SDXL base's sizes (the full-size step, full_step.py). sample: the UNet's sample size (x8 = the resolution).
SDXL_SIZES = {
    "mid": {"unet": (80, 160, 320), "groups": 16, "time": 64, "clip_l": (192, 3), "clip_g": (320, 5),
            "vae": (32, 64, 128, 128), "sample": 32},
    "full": {"unet": (320, 640, 1280), "groups": 32, "time": 256, "clip_l": (768, 12), "clip_g": (1280, 20),
             "vae": (128, 256, 512, 512), "sample": 64},
}


def random_sdxl(folder: Path, size: str = "mid", dtype: str = "float32") -> Path:
    """A random-weight SDXL of one of SDXL_SIZES, saved as a diffusers folder with its weights in `dtype` (built in
    it too: a full-size UNet is 10 GB in fp32)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from subjectgen.tiny import clip_tokenizer

    s = SDXL_SIZES[size]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))

    def clip(width, layers, heads, act):
        return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                              projection_dim=width, hidden_act=act)

    try:
        unet = UNet2DConditionModel(
            sample_size=s["sample"], block_out_channels=s["unet"], layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                       "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
            use_linear_projection=True, cross_attention_dim=s["clip_l"][0] + s["clip_g"][0],
            addition_embed_type="text_time", addition_time_embed_dim=s["time"],
            projection_class_embeddings_input_dim=6 * s["time"] + s["clip_g"][0], norm_num_groups=s["groups"])
        vae = AutoencoderKL(block_out_channels=s["vae"], layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=0.13025, force_upcast=True)
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           steps_offset=1, timestep_spacing="leading")
        StableDiffusionXLPipeline(
            vae=vae, unet=unet, scheduler=scheduler, tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
            text_encoder=CLIPTextModel(clip(s["clip_l"][0], 12, s["clip_l"][1], "quick_gelu")),
            text_encoder_2=CLIPTextModelWithProjection(clip(s["clip_g"][0], 32, s["clip_g"][1], "gelu")),
        ).save_pretrained(folder)
    finally:
        torch.set_default_dtype(default)
    return folder


def mid_sdxl(folder: Path) -> Path:
    return random_sdxl(folder, "mid")


def mid_flux(folder: Path) -> Path:
    """A random-weight FLUX.1-dev at a quarter of its widths and depths: 5 double and 10 single blocks 768 wide (24
    heads of 32), T5 (gated-GELU) 1024 wide in 6 layers with a T5 tokenizer trained here, CLIP-L 192 wide, the
    16-channel VAE at a quarter width; the guidance embedding; 256 px."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from subjectgen.tiny import clip_tokenizer, t5_tokenizer

    torch.manual_seed(0)
    tokenizer_2 = t5_tokenizer(T5_TOKENS)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=192, intermediate_size=768, num_hidden_layers=12,
                                        num_attention_heads=3, max_position_embeddings=77, projection_dim=192,
                                        hidden_act="quick_gelu"))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=1024, d_kv=64, d_ff=2560, num_layers=6,
                                 num_heads=16, feed_forward_proj="gated-gelu"))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=5, num_single_layers=10,
                                         attention_head_dim=32, num_attention_heads=24, joint_attention_dim=1024,
                                         pooled_projection_dim=192, guidance_embeds=True, axes_dims_rope=(4, 14, 14))
    vae = AutoencoderKL(latent_channels=16, block_out_channels=(32, 64, 128, 128), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=RESOLUTION["flux"], scaling_factor=0.3611, shift_factor=0.1159,
                        use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(), text_encoder_2=t5,
                 tokenizer_2=tokenizer_2, transformer=transformer).save_pretrained(folder)
    return folder


# FLUX.2 [klein] at two sizes, built in code with random weights: a quarter of the 4B's widths and depths (the peer
# table; its Qwen3 keeps 28 layers, since the pipeline reads hidden layers 9, 18 and 27) and the 4B base's own sizes
# (the full-size step, full_step.py). qwen: (width, MLP width, layers, heads, KV heads, head width, vocabulary).
KLEIN_SIZES = {
    "mid": {"blocks": (1, 5), "heads": (24, 32), "axes": (8, 8, 8, 8), "tokens": QWEN_TOKENS,
            "qwen": (640, 2432, 28, 8, 2, 80, None), "vae": (32, 64, 128, 128), "px": RESOLUTION["flux2"]},
    "full": {"blocks": (5, 20), "heads": (24, 128), "axes": (32, 32, 32, 32), "tokens": 512,
             "qwen": (2560, 9728, 36, 32, 8, 128, 151936), "vae": (128, 256, 512, 512), "px": 512},
}


def random_flux2_klein(folder: Path, size: str = "mid", dtype: str = "float32") -> Path:
    """A random-weight FLUX.2 [klein] base (non-distilled) of one of KLEIN_SIZES, with a Qwen tokenizer trained here
    (its vocabulary padded to Qwen3's at full size), the 32-channel VAE; saved with its weights in `dtype` (built in
    it too: the full size is 16 GB in fp32)."""
    import torch
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from subjectgen.tiny import qwen_tokenizer

    s = KLEIN_SIZES[size]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        tokenizer = qwen_tokenizer(s["tokens"])
        width, mlp, layers, heads, kv_heads, head_dim, vocabulary = s["qwen"]
        text_encoder = Qwen3ForCausalLM(Qwen3Config(
            vocab_size=vocabulary or len(tokenizer), hidden_size=width, intermediate_size=mlp,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
            max_position_embeddings=4 * s["tokens"], tie_word_embeddings=True))
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=128, num_layers=s["blocks"][0], num_single_layers=s["blocks"][1],
            attention_head_dim=s["heads"][1], num_attention_heads=s["heads"][0], joint_attention_dim=3 * width,
            timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=s["axes"], guidance_embeds=False)
        vae = AutoencoderKLFlux2(latent_channels=32, block_out_channels=s["vae"], layers_per_block=2,
                                 down_block_types=("DownEncoderBlock2D",) * 4,
                                 up_block_types=("UpDecoderBlock2D",) * 4, sample_size=s["px"])
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                    max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
                                                    time_shift_type="exponential")
        Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           transformer=transformer, is_distilled=False).save_pretrained(folder, max_shard_size="2GB")
    finally:  # (2 GB shards: saving holds one shard's bytes beside the 16 GB of a full-size model)
        torch.set_default_dtype(default)
    return folder


def mid_flux2_klein(folder: Path) -> Path:
    return random_flux2_klein(folder, "mid")


MODELS = {"sd": ("the built-in model in fp32", fp32_model),
          "sdxl": (f"a mid-size random SDXL (a quarter of SDXL's widths) at {RESOLUTION['sdxl']} px", mid_sdxl),
          "flux": (f"a mid-size random FLUX.1-dev (a quarter of its widths and depths) at {RESOLUTION['flux']} px",
                   mid_flux),
          "flux2": ("a mid-size random FLUX.2 [klein] base (a quarter of the 4B's widths and depths, the Qwen3's "
                    f"28 layers) at {RESOLUTION['flux2']} px", mid_flux2_klein)}


def photos(folder: Path) -> Path:
    from subjectgen.assets import EMOJIBENCH

    folder.mkdir(parents=True)
    for photo in sorted((EMOJIBENCH / SUBJECT).glob("*.png")):
        shutil.copy(photo, folder / photo.name)
    return folder


def built(build, folder: Path) -> Path:
    """`build(folder)` in a process of its own, so that this one stays small: Linux keeps the high-water mark of the
    process a command is started from as the command's own (ru_maxrss counts it across fork and exec), and building a
    model here would set a floor under every peak measured after it."""
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=build, args=(folder,))
    process.start()
    process.join()
    if process.exitcode:
        sys.exit(f"building {folder.name} failed (exit {process.exitcode})")
    return folder


def measure(command: list[str], env: dict) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS in MiB, stderr, stdout) of one process. Its peak is at least this process's own (see
    built): this one must stay small."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        err.seek(0)
        errors = err.read()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(command[:3])} ... failed: {errors[-1500:]}")
    return seconds, usage.ru_maxrss / 1024, errors, out


def ours(model: Path, subject: Path, out: Path, steps: int, batch: int, prior: dict | None,
         extra: tuple[str, ...] = ()) -> list[str]:
    """prior: None, or the class images' {"count": N}; extra: more flags."""
    return [sys.executable, "-m", "subjectgen.cli", "train", "lora", "--model", str(model), "--subject",
            str(subject), "--class", "dog", "--instance-prompt", "a {token} {class}", "--token", "sks", "--out",
            str(out), "--steps", str(steps), "--lr", "1e-4", "--rank", "4", "--batch-size", str(batch),
            "--lr-warmup-steps", "0", "--max-grad-norm", "1", "--seed", "0", "--quiet", "--overwrite",
            *(["--prior-preservation", "--num-class-images", str(prior["count"])] if prior else
              ["--no-prior-preservation"]), *extra]


def peer(python: Path, model: Path, subject: Path, classes: Path, out: Path, steps: int, batch: int,
         prior: dict | None, family: str = "sd", extra: tuple[str, ...] = ()) -> list[str]:
    return [str(python), str(SCRIPTS[family]), "--pretrained_model_name_or_path", str(model), "--instance_data_dir",
            str(subject), "--instance_prompt", "a sks dog", "--output_dir", str(out), "--resolution",
            str(RESOLUTION[family]),
            "--train_batch_size", str(batch), "--max_train_steps", str(steps), "--learning_rate", "1e-4",
            "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--rank", "4", "--seed", "0",
            "--max_grad_norm", "1.0", "--checkpointing_steps", "1000000",
            *(["--with_prior_preservation", "--class_data_dir", str(classes), "--class_prompt", "a dog",
               "--num_class_images", str(prior["count"])] if prior else []), *PEER_FLAGS.get(family, ()), *extra]


def share_class_images(cache: Path, classes: Path) -> None:
    """Our class images (from our cache, made by a warm-up run) copied into the peer's class folder: the same
    images for both, and the peer, finding the folder full, makes none."""
    classes.mkdir(exist_ok=True)
    if not any(classes.iterdir()):
        for image in sorted((cache / "class_images").glob("*/*.png")):
            shutil.copy(image, classes / image.name)


def peer_rate(stderr: str) -> float | None:
    """Steps/s from the peer's training progress bar ('Steps: ...'), its last 'N.NNit/s' or 's/it'."""
    bars = [line for line in re.split(r"[\r\n]", stderr) if line.lstrip().startswith("Steps")]
    rates = re.findall(r"(\d+(?:\.\d+)?)(it/s|s/it)", "".join(bars[-1:]))
    if not rates:
        return None
    value, unit = rates[-1]
    return float(value) if unit == "it/s" else 1 / float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-venv", default="benchmarks/out/peer-venv")
    parser.add_argument("--setup", action="store_true", help="make the peer's venv first (setup_peer.sh)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--prior", default="no,yes", help="prior preservation settings to run: no, yes or both")
    parser.add_argument("--family", choices=sorted(SCRIPTS), default="sd", help="the model family (default: sd)")
    parser.add_argument("--num-class-images", type=int, default=50, help="class images for prior preservation")
    args = parser.parse_args()
    python = Path(args.peer_venv) / "bin" / "python"
    if args.setup and not python.is_file():
        subprocess.run(["bash", str(PEERS / "setup_peer.sh"), args.peer_venv, str(ROOT)], check=True)
    if not python.is_file():
        print(f"The peer's venv ({args.peer_venv}) is absent: no peer table (make it with --setup).")
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUBJECTGEN_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1"}  # else the newer peers retry the hub for a model card after training
    load = [os.getloadavg()[0]]  # another job on the machine slows both tools; the ratios are what this measures
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure_rows(args, python, env, Path(tmp))
    load.append(os.getloadavg()[0])
    print_table(args, rows, load)


def measure_rows(args, python: Path, env: dict, tmp: Path) -> list:
    """(batch, prior, {"ours": [(wall, rss, steps/s)], "peer": [...]}) per row, the two tools interleaved."""
    env["SUBJECTGEN_CACHE"] = str(tmp / "cache")
    what, build = MODELS[args.family]
    model = built(build, tmp / args.family)
    subject = photos(tmp / "photos")
    rows = []
    for prior in [{"count": args.num_class_images} if p == "yes" else None for p in args.prior.split(",")]:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            if prior:  # class images once, outside the timings; a warm-up of each tool
                measure(ours(model, subject, tmp / "warm", 1, batch, prior), env)
                share_class_images(Path(env["SUBJECTGEN_CACHE"]), tmp / "classes")
                measure(peer(python, model, subject, tmp / "classes", tmp / "warm-peer", 1, batch, prior,
                             args.family), env)
            runs = {"ours": [], "peer": []}
            for _ in range(args.pairs):
                wall, rss, *_ = measure(ours(model, subject, tmp / "ours", args.steps, batch, prior), env)
                sps = json.loads((tmp / "ours" / "subject.json").read_text())["metrics"]["steps_per_second"]
                runs["ours"].append((wall, rss, sps))
                wall, rss, err, _ = measure(peer(python, model, subject, tmp / "classes", tmp / "peer", args.steps,
                                              batch, prior, args.family), env)
                runs["peer"].append((wall, rss, peer_rate(err)))
            rows.append((batch, prior, runs))
    return rows


def print_table(args, rows: list, load: list[float]) -> None:
    what = MODELS[args.family][0]
    print(f"`subjectgen train lora` against diffusers' {SCRIPTS[args.family].name.replace('diffusers_', '')}, {what}, "
          f"{args.steps} steps, one thread each, {args.pairs} interleaved pairs per row (medians)"
          + (f"; prior preservation on the same {args.num_class_images} class images" if "yes" in args.prior else "")
          + ":\n")
    print("| batch | prior preservation | ours: wall s / steps/s / peak MiB | peer: wall s / steps/s / peak MiB | "
          "steps/s ours ÷ peer | wall ours ÷ peer | peak RSS ours ÷ peer |")
    print("|---|---|---|---|---|---|---|")
    for batch, prior, runs in rows:
        med = {k: [sorted(x[i] for x in v if x[i] is not None)[len(v) // 2] if any(x[i] is not None for x in v)
                   else None for i in range(3)] for k, v in runs.items()}
        o, p = med["ours"], med["peer"]
        speed = f"{o[2] / p[2]:.2f}" if o[2] and p[2] else "–"
        print(f"| {batch} | {'yes' if prior else 'no'} | {o[0]:.1f} / {rate(o[2])} / {o[1]:.0f} | {p[0]:.1f} / "
              f"{rate(p[2] or 0)} / {p[1]:.0f} | {speed} | {o[0] / p[0]:.2f} | {o[1] / p[1]:.2f} |")
    print(f"\nThe machine's load average (1 minute) when the measurements started and ended: {load[0]:.1f} and "
          f"{load[1]:.1f}, on {os.cpu_count()} cores (the benchmark itself keeps one busy).")


def rate(steps_per_second: float) -> str:
    """Steps/s to two significant places at least (SDXL on a CPU runs well under one step a second)."""
    return f"{steps_per_second:.1f}" if steps_per_second >= 1 else f"{steps_per_second:.2f}"


if __name__ == "__main__":
    main()
