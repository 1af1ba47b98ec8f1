"""Generate images from a finished run (or a plain base model) into a folder, with a grid."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import assets
from .adapters import MANIFEST, Run, load_run
from .config import BASE_QUANTIZATIONS, GENERATION_DTYPES, SampleSettings
from .errors import UserError
from .models import inference_device, networks_in
from .training.outdir import RUN_SPEC, busy, hold, live_holder, release
from .safeio import atomic_save_image, atomic_write_json
from .sampling import generate, make_grid


@dataclass
class GenerateResult:
    out: Path
    files: list[Path]
    grid: Path


def open_run_or_model(ref: str, allow_pickle: bool = False, lora_scale: float = 1.0) -> Run:
    """A run folder (with subject.json) or, for baselines, any model reference with no subject."""
    if (Path(ref) / MANIFEST).is_file() or (Path(ref) / RUN_SPEC).is_file():
        return load_run(Path(ref), allow_pickle, lora_scale)
    if lora_scale != 1.0:
        raise UserError(f"--lora-scale applies to LoRA run folders; {ref} is a model")
    if assets.missing_local_path(ref):
        raise UserError(f"no run folder at {ref} (a folder written by 'subjectgen train'), and no model of that "
                        "name; check the path")
    try:
        return Run.of_model(ref, allow_pickle)
    except UserError as exc:  # the user most likely meant a run: say so before what the model loader found
        if Path(ref).exists() or ref in assets.builtin_names("model"):
            raise
        raise UserError(f"no run folder at {ref} (a folder written by 'subjectgen train'), and not a model "
                        f"either: {exc}") from None


def generate_to_folder(ref: str, prompts: list[str], out: Path, n: int = 4, seed: int = 0, steps: int | None = None,
                       guidance: float | None = None, negative_prompt: str = "", allow_pickle: bool = False,
                       lora_scale: float = 1.0, subject_start: float | None = None, progress: bool = False,
                       options: dict | None = None, batch_size: int = 8,
                       references: str | None = None, dtype: str = "fp32",
                       base_quantization: str | None = None) -> GenerateResult:
    """n images per prompt (seeds seed..seed+n-1), saved as p{prompt}-{k}.png, plus grid.png (a row per prompt).
    `subject_start`: the fraction of the steps sampled before the subject comes in (Run.early_steps; None: the
    run's own);
    `batch_size`: images sampled at once (the same images at any batch size, up to float rounding);
    `references`: a folder of photos the family's pipeline takes as reference images (FLUX.2 [klein]);
    `dtype`: the text encoders' and denoiser's (fp32, bf16, fp16; the VAE's is fp32); `base_quantization`: the
    denoiser's linear layers (a LoRA's own aside) in int8 or nf4, as train --base-quantization holds them."""
    # a one-line error for any out of range
    SampleSettings(n, seed, steps, guidance, lora_scale, subject_start, batch_size)
    device = inference_device()
    torch_dtype = check_generation_precision(dtype, base_quantization, device)
    out = Path(out)
    check_writable(out)  # at once, before the model loads; again under the lock
    if references is not None and not Path(references).is_dir():
        raise UserError(f"--references {references}: no such folder; give a folder of photos of the subject")
    with networks_in(torch_dtype):
        run = open_run_or_model(ref, allow_pickle, lora_scale)
    if references is not None:
        run.add_references(Path(references))
    if options:
        run.options = own_options(run, ref, options)
    if subject_start and not run.subject:
        raise UserError(f"--subject-start applies to run folders; {ref} is a model")
    run.place(device, torch_dtype, base_quantization)
    for prompt in prompts:
        if run.subject and "{subject}" not in prompt:
            warnings.warn(f"prompt {prompt!r} has no {{subject}}; it will not show the learned subject", stacklevel=2)
    subject_start = run.subject_start if subject_start is None else subject_start
    steps = steps or run.components.backbone.default_steps(run.components)
    guidance = run.components.backbone.default_guidance if guidance is None else guidance
    expanded = [run.prompt_for_model(p) for p in prompts for _ in range(n)]
    seeds = [seed + k for _ in prompts for k in range(n)]
    early = run.early_steps([p for p in prompts for _ in range(n)], subject_start, steps)
    images = generate(run.components, expanded, seeds, steps, guidance, negative_prompt, batch_size, early=early,
                      denoiser_for=run.denoiser_for(negative_prompt, guidance), progress=progress)
    names = [f"p{i:02d}-{k}.png" for i in range(len(prompts)) for k in range(n)]
    record = {"prompts": prompts, "n": n, "seed": seed, "steps": steps, "guidance": guidance, "lora_scale": lora_scale,
              "subject_start": subject_start, "source": str(ref), "options": run.options, "files": names,
              "dtype": dtype, "base_quantization": base_quantization,
              **({"references": str(references)} if references is not None else {})}
    return write_images(out, dict(zip(names, images)), make_grid(images, n), record)


def check_generation_precision(dtype: str, base_quantization: str | None, device: torch.device) -> torch.dtype:
    """The torch dtype generation computes in; a one-line error for a dtype or quantization not known, or one the
    machine cannot run (its library missing; nf4 where bitsandbytes has no kernels for the device)."""
    if dtype not in GENERATION_DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(GENERATION_DTYPES)}")
    if base_quantization is not None:
        from .training.quantize import check_quantizer

        if base_quantization not in BASE_QUANTIZATIONS:
            raise UserError(f"--base-quantization {base_quantization}: choose one of {', '.join(BASE_QUANTIZATIONS)}")
        check_quantizer(base_quantization, device)
    return getattr(torch, GENERATION_DTYPES[dtype])


def check_writable(out: Path) -> None:
    """A one-line error for an --out that is a file, or a folder another subjectgen process is writing."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the images")
    holder = live_holder(out) if out.is_dir() else None
    if holder is not None:
        raise busy("--out", out, holder)


def write_images(out: Path, images: dict, grid, record: dict) -> GenerateResult:
    """The images, grid.png and prompts.json, written under --out's writer lock (one writer per folder)."""
    check_writable(out)
    hold(out)
    try:
        for name, image in images.items():
            atomic_save_image(out / name, image)
        atomic_save_image(out / "grid.png", grid)
        atomic_write_json(out / "prompts.json", record)
    finally:
        release(out, remove_if_empty=True)  # a folder (or lock file) made for nothing (a full disk) goes again
    return GenerateResult(out, [out / name for name in images], out / "grid.png")


def own_options(run: Run, ref: str, options: dict) -> dict:
    """The generation options given for this run, checked: each one its method's (a one-line error naming the
    method it belongs to otherwise) and within its range."""
    from .config import SAMPLE_OPTIONS, options_for

    own = run.method.sample_options if run.method else None
    for name in options:
        if name not in options_for(own, options):
            flag = "--no-fusion" if name == "fusion" else "--" + name.replace("_", "-")
            owner = next(m for m, c in SAMPLE_OPTIONS.items() if name in options_for(c, options))
            what = f"a {run.manifest['method']} run" if run.method else "a model"
            raise UserError(f"{flag} applies to {owner} runs; {ref} is {what}")
    own(**options)  # a one-line error for any out of range
    return dict(options)
