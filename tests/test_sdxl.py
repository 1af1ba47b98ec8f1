"""SDXL on the backbone axis: a tiny random SDXL built in code trains with every family-independent method,
generates as plain diffusers does, and its files load in plain diffusers; look-alikes are refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from subjectgen import TrainConfig, load_model, load_run, train
from subjectgen.cli import main
from subjectgen.sampling import generate, initial_latents

from test_methods import as_array, refused


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_sdxl_model) -> str:
    return tiny_sdxl_model


@pytest.fixture(scope="module")
def wide_photos(tmp_path_factory):
    """Three 3:2 photos (48x32): their time ids must record the original size and the crop."""
    from conftest import draw_subject

    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        draw_subject(folder / f"{i}.png", shift=2 * i, size=(48, 32))
    return folder


@pytest.fixture(scope="module")
def sdxl_runs(tiny_sdxl, wide_photos, tmp_path_factory):
    out = {}
    for method, extra in (("lora", {"train_text_encoder": True}), ("dreambooth", {"num_class_images": 2}),
                          ("textual-inversion", {"num_vectors": 2})):
        cfg = TrainConfig(method=method, model=tiny_sdxl, subject_dir=str(wide_photos), class_noun="dog",
                          out=str(tmp_path_factory.mktemp("runs") / method), steps=6, **extra)
        out[method] = train(cfg, progress=False).run_dir
    return out


def plain_images(pipe, prompt, components, seed=0):
    """The plain SDXL pipeline from the same initial noise (its default: an empty negative prompt is zeros)."""
    latents = initial_latents(components, [seed])
    out = pipe(prompt, num_inference_steps=4, guidance_scale=7.5, latents=latents, output_type="np",
               height=16, width=16).images
    return np.round(out * 255).astype(np.int16)


def test_sdxl_is_detected_and_our_sampler_matches_the_plain_pipeline(tiny_sdxl):
    components = load_model(tiny_sdxl)
    assert components.backbone.name == "sdxl" and components.resolution == 16
    ours = as_array(generate(components, ["a dog"], [3], steps=4))
    theirs = plain_images(StableDiffusionXLPipeline.from_pretrained(tiny_sdxl), "a dog", components, seed=3)
    assert np.abs(ours - theirs).max() <= 1


def test_time_ids_record_each_photos_size_and_crop(tiny_sdxl, wide_photos):
    from subjectgen.subjects import load_subject
    from subjectgen.training.data import LatentCache

    components = load_model(tiny_sdxl)
    subject = load_subject(wide_photos, "dog", components.resolution)
    assert subject.images[0].size == (16, 16)
    # 48x32 resized by its short side to 24x16, centre crop: 4 px cut on the left
    assert subject.sizes[0] == (32, 48, 0, 4)
    cache = LatentCache(components, subject.images, sizes=subject.sizes)
    (group,) = cache.groups.values()
    assert group.conditioning["time_ids"][0].tolist() == [32.0, 48.0, 0.0, 4.0, 16.0, 16.0]
    drawn = cache.draw(5, torch.Generator().manual_seed(0))
    assert drawn.conditioning["time_ids"].shape == (5, 6)


def test_sdxl_lora_loads_in_plain_diffusers_both_files(sdxl_runs, tiny_sdxl):
    run_dir = sdxl_runs["lora"]
    run = load_run(run_dir)
    prompt = run.prompt_for_model("a {subject} on the beach")
    ours = as_array(generate(run.components, [prompt], [0], steps=4))
    assert np.abs(ours - as_array(generate(load_model(tiny_sdxl), [prompt], [0], steps=4))).max() > 0
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.load_lora_weights(str(run_dir))
    plain = plain_images(pipe, prompt, run.components)
    assert np.abs(ours - plain).max() <= 1
    kohya = load_file(str(run_dir / "kohya_lora.safetensors"))
    assert {k.split("_")[1] for k in kohya} == {"unet", "te1", "te2"}
    pipe_k = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe_k.load_lora_weights(str(run_dir), weight_name="kohya_lora.safetensors")
    assert np.abs(plain_images(pipe_k, prompt, run.components) - plain).max() <= 1


def test_sdxl_dreambooth_writes_an_sdxl_pipeline(sdxl_runs, tiny_sdxl):
    run_dir = sdxl_runs["dreambooth"]
    index = json.loads((run_dir / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    pipe = StableDiffusionXLPipeline.from_pretrained(str(run_dir / "pipeline"))
    run = load_run(run_dir)
    prompt = run.prompt_for_model("a {subject}")
    assert np.abs(as_array(generate(run.components, [prompt], [0], steps=4))
                  - plain_images(pipe, prompt, run.components)).max() <= 1


def test_sdxl_textual_inversion_saves_one_vector_set_per_encoder(sdxl_runs, tiny_sdxl):
    run_dir = sdxl_runs["textual-inversion"]
    for name in ("learned_embeds.safetensors", "embedding_a1111.safetensors"):
        vectors = load_file(str(run_dir / name))
        assert sorted(vectors) == ["clip_g", "clip_l"] and vectors["clip_l"].shape == (2, 32)
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    assert not torch.equal(vectors["clip_l"][0], vectors["clip_g"][0])  # each encoder learned its own
    run = load_run(run_dir)
    prompt = run.prompt_for_model("a {subject}")
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    token = run.manifest["token"]
    pipe.load_textual_inversion(vectors["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(vectors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    # the pipeline expands '<s*>' to its vectors' tokens itself (diffusers' maybe_convert_prompt)
    assert np.abs(as_array(generate(run.components, [prompt], [0], steps=4))
                  - plain_images(pipe, f"a {run.subject}", run.components)).max() <= 1
    rows = base.text_encoder.get_input_embeddings().weight.shape[0]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[:rows],
                       base.text_encoder.get_input_embeddings().weight)


def make_variant(tiny_sdxl, tmp_path, class_name=None, unet_channels=None):
    folder = tmp_path / "variant"
    shutil.copytree(tiny_sdxl, folder)
    if class_name:
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = class_name
        (folder / "model_index.json").write_text(json.dumps(index))
    if unet_channels:
        config = json.loads((folder / "unet" / "config.json").read_text())
        config["in_channels"] = unet_channels
        (folder / "unet" / "config.json").write_text(json.dumps(config))
        weights = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
        weights["conv_in.weight"] = torch.zeros(32, unet_channels, 3, 3)
        from safetensors.torch import save_file

        save_file(weights, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    return folder


@pytest.mark.parametrize("variant, words", [
    ({"class_name": "StableDiffusionXLImg2ImgPipeline"}, "refiner"),
    ({"class_name": "KandinskyV22Pipeline"}, "does not support"),
    ({"unet_channels": 9}, "9 input channels"),
])
def test_sdxl_look_alikes_are_refused_in_one_line_with_nothing_written(tiny_sdxl, wide_photos, tmp_path, capsys,
                                                                       variant, words):
    model = make_variant(tiny_sdxl, tmp_path, **variant)
    out = tmp_path / "run"
    err = refused(capsys, ["train", "lora", "--model", str(model), "--subject", str(wide_photos), "--class", "dog",
                           "--out", str(out), "--steps", "1", "--quiet"])
    assert words in err and "Stable Diffusion XL" in err and not out.exists()


@pytest.mark.parametrize("method", ["profusion", "apprentice"])
def test_sd_only_methods_are_refused_on_sdxl(tiny_sdxl, wide_photos, tmp_path, capsys, method):
    out = tmp_path / "run"
    err = refused(capsys, ["train", method, "--model", tiny_sdxl, "--subject", str(wide_photos), "--class", "dog",
                           "--out", str(out), "--quiet"])
    assert "Stable Diffusion 1.x/2.x" in err and "Stable Diffusion XL" in err and not out.exists()


def test_sdxl_resume_after_sigkill_equals_an_uninterrupted_run(tiny_sdxl, wide_photos, tmp_path):
    from test_training_loop import killed_and_resumed, same_tensors

    common = ["--steps", "60", "--checkpoint-every", "10", "--prior-preservation", "--num-class-images", "2",
              "--train-text-encoder"]
    full, out = killed_and_resumed(tiny_sdxl, wide_photos, tmp_path, common, 20)
    name = "pytorch_lora_weights.safetensors"
    assert any(k.startswith("text_encoder_2.") for k in load_file(str(out / name)))
    assert same_tensors(full / name, out / name)


def test_the_bench_runs_the_dreambench_protocol_on_sdxl(tiny_sdxl, evaluator_dirs, tmp_path):
    from test_bench import bench_args

    out = tmp_path / "bench"
    assert main(bench_args(tiny_sdxl, evaluator_dirs, out, "lora,textual-inversion")) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"baseline", "lora", "textual-inversion"} <= set(results["pairs"])
    for method in ("lora", "textual-inversion"):
        pair = results["pairs"][method]["dog"]
        assert pair["train_seconds"] > 0 and all(np.isfinite(p["clip_t"]) for p in pair["prompts"])
        assert all((out / f).is_file() for p in pair["prompts"] for f in p["files"])
    assert "| lora |" in (out / "table.md").read_text()


def test_aspect_buckets_keep_a_wide_photo_wide_and_its_crop_in_the_time_ids(tiny_sdxl, wide_photos, tmp_path):
    from subjectgen.photos import bucket_sizes
    from subjectgen.subjects import load_subject

    assert (512, 512) in bucket_sizes(512, 64) and (640, 384) in bucket_sizes(512, 64)
    assert (1024, 1024) in bucket_sizes(1024, 32) and (1248, 832) in bucket_sizes(1024, 32)  # 3:2 on SDXL
    components = load_model(tiny_sdxl)
    subject = load_subject(wide_photos, "dog", components.resolution, buckets=components.backbone.buckets(components))
    # 48x32 (3:2) goes to the nearest bucket of about 16x16 pixels in steps of 4: 20x12; resized to cover it
    # (20x13.3), one row is cut at the top
    assert subject.images[0].size == (20, 12) and subject.sizes[0] == (32, 48, 1, 0)
    run = train(TrainConfig(method="lora", model=tiny_sdxl, subject_dir=str(wide_photos), class_noun="dog",
                            out=str(tmp_path / "run"), steps=3, aspect_buckets=True, prior_preservation=True,
                            num_class_images=2), progress=False)
    assert json.loads((run.run_dir / "subject.json").read_text())["settings"]["aspect_buckets"] is True
    assert (run.run_dir / "pytorch_lora_weights.safetensors").is_file()


def test_a_step_draws_its_class_half_from_its_photos_bucket(tiny_sdxl):
    from PIL import Image as PILImage

    from subjectgen.training.data import LatentCache

    components = load_model(tiny_sdxl)
    photos = [PILImage.new("RGB", (20, 12), "red"), PILImage.new("RGB", (16, 16), "blue")]
    cache = LatentCache(components, photos)
    classes = LatentCache(components, [PILImage.new("RGB", (16, 16), "green")] * 2, fit_to=cache.buckets)
    assert sorted(classes.buckets) == [(16, 16), (20, 12)]
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(12):
        drawn = cache.draw(3, generator)
        assert drawn.latents.shape[-2:] == (drawn.bucket[1] // 2, drawn.bucket[0] // 2)
        assert classes.draw(3, generator, bucket=drawn.bucket).latents.shape == drawn.latents.shape
        seen.add(drawn.bucket)
    assert seen == {(16, 16), (20, 12)}


def test_a_single_file_sdxl_checkpoint_loads_trains_lora_and_generates(wide_photos, tmp_path, capsys, monkeypatch):
    """An original-layout SDXL file, as A1111 and ComfyUI users have it: its configs from NAME.config beside it
    (offline, with none there and no hub, a one-line error saying so); the same weights and images as the diffusers
    folder it was written from; a LoRA trained on it loads in plain diffusers on that folder."""
    import huggingface_hub

    from subjectgen.tiny import save_tiny_sdxl_pipeline, save_tiny_sdxl_single_file

    ckpt = save_tiny_sdxl_single_file(tmp_path / "sdxl.safetensors")
    folder = save_tiny_sdxl_pipeline(tmp_path / "diffusers", width_2=48)
    train_args = ["train", "lora", "--model", str(ckpt), "--subject", str(wide_photos), "--class", "dog", "--steps",
                  "3", "--quiet"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    capsys.readouterr()  # save_pretrained's progress bars
    err = refused(capsys, [*train_args, "--out", str(tmp_path / "refused")])
    assert "sdxl.config" in err and "stabilityai/stable-diffusion-xl-base-1.0" in err
    assert not (tmp_path / "refused").exists()

    shutil.copytree(folder, tmp_path / "sdxl.config", ignore=shutil.ignore_patterns("*.safetensors"))  # configs only
    components = load_model(str(ckpt))
    assert components.backbone.name == "sdxl" and components.unet.dtype == torch.float32
    same = load_model(str(folder))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(components, name).state_dict(), getattr(same, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    assert np.array_equal(as_array(generate(components, ["a dog"], [1], steps=4)),
                          as_array(generate(same, ["a dog"], [1], steps=4)))

    assert main([*train_args, "--out", str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    prompt = run.prompt_for_model("a {subject} on the beach")
    ours = as_array(generate(run.components, [prompt], [0], steps=4))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder))
    pipe.load_lora_weights(str(tmp_path / "run"))
    assert np.abs(ours - plain_images(pipe, prompt, run.components)).max() <= 1
    assert np.abs(ours - as_array(generate(same, [prompt], [0], steps=4))).max() > 0  # the LoRA changed the image


def test_mixed_precision_casts_a_half_precision_base_once_never_to_fp32(tiny_sdxl, wide_photos, tmp_path):
    """An fp16-stored SDXL (the hub's fp16 variant, a CivitAI file) trained in bf16: the denoiser and text encoders
    load as stored and each frozen weight is cast once, to bf16 (no fp32 copy of the base in between); what trains
    is fp32, a full fine-tune's UNet exactly the stored weights; generation loads fp32 as before."""
    from subjectgen.training.loop import Trainer
    from subjectgen.training.outdir import release

    folder = tmp_path / "fp16"
    StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, torch_dtype=torch.float16).save_pretrained(folder)
    stored = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {next(m.parameters()).dtype for m in load_model(str(folder)).networks} == {torch.float32}
    loaded = load_model(str(folder), keep_dtype=True)
    assert [next(m.parameters()).dtype for m in loaded.networks] == [torch.float16] * 2 + [torch.float32, torch.float16]
    for method in ("lora", "dreambooth"):
        trainer = Trainer(TrainConfig(method=method, model=str(folder), subject_dir=str(wide_photos), class_noun="dog",
                                      out=str(tmp_path / method), steps=2, mixed_precision="bf16",
                                      prior_preservation=False), progress=False)
        try:
            unet = dict(trainer.components.unet.named_parameters())
            assert {p.dtype for p in unet.values() if not p.requires_grad} <= {torch.bfloat16}
            assert {p.dtype for p in unet.values() if p.requires_grad} == {torch.float32}
            weight = unet.get("conv_in.weight")
            assert torch.equal(weight, stored["conv_in.weight"].to(weight.dtype))  # one cast from the stored fp16
            trainer.run()
        finally:
            release(trainer.out)
