"""FLUX.2 [klein] on the backbone axis: a tiny random klein built in code (a Qwen tokenizer trained in a second, a
27-layer Qwen3 so the pipeline's hidden layers exist) trains LoRA by flow matching, generates as plain diffusers'
Flux2KleinPipeline does (real classifier-free guidance on the base model, none on a distilled one), and its LoRA
loads in plain diffusers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import Flux2KleinPipeline
from peft import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file

from subjectgen import TrainConfig, load_model, load_run, train
from subjectgen.cli import main
from subjectgen.sampling import generate, initial_latents
from subjectgen.training.losses import diffusion_loss
from subjectgen.world.build import EMOJIBENCH

from test_methods import as_array, refused


@pytest.fixture(scope="module")
def tiny_flux2(tiny_flux2_model) -> str:
    return tiny_flux2_model


@pytest.fixture(scope="module")
def tiny_flux2_distilled(tmp_path_factory, cache_root) -> str:
    from subjectgen.tiny import save_tiny_flux2_klein_pipeline

    return str(save_tiny_flux2_klein_pipeline(tmp_path_factory.mktemp("models") / "tiny-flux2-distilled",
                                              distilled=True))


@pytest.fixture(scope="module")
def flux2_lora(tiny_flux2, tmp_path_factory):
    cfg = TrainConfig(method="lora", model=tiny_flux2, subject_dir=str(EMOJIBENCH / "dog"), class_noun="dog",
                      out=str(tmp_path_factory.mktemp("runs") / "lora"), steps=6, lr=1e-2, prior_preservation=True,
                      num_class_images=2)
    return train(cfg, progress=False).run_dir


def plain_images(pipe, prompt, components, seed=0, guidance=4.0, steps=4, **kwargs):
    out = pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance,
               latents=initial_latents(components, [seed]), height=64, width=64, max_sequence_length=64,
               output_type="np", **kwargs).images
    return np.round(out * 255).astype(np.int16)


@pytest.mark.parametrize("model, guidance", [("tiny_flux2", 4.0), ("tiny_flux2", 1.0), ("tiny_flux2_distilled", 4.0)])
def test_flux2_is_detected_and_our_sampler_matches_the_plain_pipeline(request, model, guidance):
    model = request.getfixturevalue(model)
    components = load_model(model)
    assert components.backbone.name == "flux2" and components.resolution == 64
    ours = as_array(generate(components, ["a dog on the beach"], [3], steps=4, guidance=guidance))
    theirs = plain_images(Flux2KleinPipeline.from_pretrained(model), "a dog on the beach", components, seed=3,
                          guidance=guidance)
    assert np.abs(ours - theirs).max() <= 1
    other = as_array(generate(components, ["a cat in the snow"], [3], steps=4, guidance=guidance))
    assert np.abs(ours - other).max() > 0  # the prompt reaches the image


def test_flux2_lora_trains_and_loads_in_plain_diffusers(flux2_lora, tiny_flux2):
    run = load_run(flux2_lora)
    prompt = run.prompt_for_model("a {subject} on the beach")
    assert prompt == "a sks dog on the beach"  # a rare token from Qwen's byte-level vocabulary
    ours = as_array(generate(run.components, [prompt], [0], steps=4, guidance=4.0))
    base = as_array(generate(load_model(tiny_flux2), [prompt], [0], steps=4, guidance=4.0))
    assert np.abs(ours - base).max() > 0
    weights = load_file(str(flux2_lora / "pytorch_lora_weights.safetensors"))
    assert weights and all(k.startswith("transformer.") for k in weights)
    assert not (flux2_lora / "comfyui_lora.safetensors").exists()  # FLUX.1's ComfyUI layout is not FLUX.2's
    assert any(".single_transformer_blocks.0.attn.to_out." in k for k in weights)
    assert any(".transformer_blocks.0.attn.to_q." in k for k in weights)
    pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2)
    pipe.load_lora_weights(str(flux2_lora))  # no extra arguments
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=pipe.get_active_adapters()[0])
    assert {f"transformer.{k}" for k in loaded} == set(weights)  # every layer, none dropped by the loader
    assert all(torch.equal(v, weights[f"transformer.{k}"]) for k, v in loaded.items())
    assert np.abs(ours - plain_images(pipe, prompt, run.components)).max() <= 1


def test_the_flow_matching_loss_against_a_hand_computation(tiny_flux2):
    """The family's latents, noising, target, text and transformer call against the pipeline's own pieces and a
    hand-written loss with the prior-preservation split, on a fixed batch."""
    components = load_model(tiny_flux2)
    family, pipe = components.backbone, components.pipeline()
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents, _ = family.posterior(components, pixels)
        assert torch.allclose(latents, pipe._encode_vae_image(pixels, None), atol=1e-5)  # patchified, normalised
        scheduler = family.training_scheduler(components)
        noisy, timesteps, target = family.training_sample(scheduler, latents, torch.Generator().manual_seed(2))
        g = torch.Generator().manual_seed(2)
        noise = torch.randn(latents.shape, generator=g)
        sigma = scheduler.sigmas[(torch.rand(2, generator=g) * 1000).long()].view(-1, 1, 1, 1)
        assert torch.allclose(noisy, (1 - sigma) * latents + sigma * noise) and torch.equal(target, noise - latents)
        prompts = ["a sks dog", "a dog"]
        embeds, text_ids = pipe.encode_prompt(prompts, max_sequence_length=64)
        cond = family.encode_text(components, prompts)
        assert torch.allclose(cond["encoder_hidden_states"], embeds, atol=1e-6)
        pred = family.call(components.transformer, noisy, timesteps, cond)
        ids = pipe._prepare_latent_ids(noisy)
        theirs = components.transformer(hidden_states=pipe._pack_latents(noisy), timestep=timesteps / 1000,
                                        guidance=None, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=ids,
                                        return_dict=False)[0]
        theirs = pipe._unpack_latents_with_ids(theirs, ids)
    assert torch.allclose(pred, theirs, atol=1e-5)
    loss, parts = diffusion_loss(pred, target, timesteps, None, "flow", n_instance=1, prior_weight=0.5)
    hand = F.mse_loss(theirs[:1], noise[:1] - latents[:1]) + 0.5 * F.mse_loss(theirs[1:], noise[1:] - latents[1:])
    assert torch.allclose(loss, hand, atol=1e-5) and float(parts["prior"]) > 0


def text_batches(model: str, guidance: float) -> list[torch.Tensor]:
    """The text each transformer call sees while generating one image."""
    components, seen = load_model(model), []
    components.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True)
    generate(components, ["a dog"], [0], steps=2, guidance=guidance)
    return seen


def test_real_guidance_runs_the_negative_branch_on_the_base_model_only(tiny_flux2, tiny_flux2_distilled):
    components = load_model(tiny_flux2)
    family = components.backbone
    with torch.no_grad():
        empty, prompt = (family.encode_text(components, [p])["encoder_hidden_states"] for p in ("", "a dog"))
    base = text_batches(tiny_flux2, 4.0)
    assert len(base) == 2 and all(len(t) == 2 for t in base)  # one batched call a step: [negative; prompt]
    assert torch.allclose(base[0][:1], empty) and torch.allclose(base[0][1:], prompt)
    distilled = text_batches(tiny_flux2_distilled, 4.0)
    assert len(distilled) == 2 and all(len(t) == 1 for t in distilled)  # the prompt alone
    assert all(len(t) == 1 for t in text_batches(tiny_flux2, 1.0))  # guidance 1: no negative, as the pipeline


def test_generate_takes_the_familys_defaults(flux2_lora, tiny_flux2_distilled, tmp_path):
    assert main(["generate", str(flux2_lora), "a {subject}", "-n", "1", "--steps", "2", "--out",
                 str(tmp_path / "lora")]) == 0
    assert json.loads((tmp_path / "lora" / "prompts.json").read_text())["guidance"] == 4.0  # the pipeline's
    assert main(["generate", tiny_flux2_distilled, "a dog", "-n", "1", "--out", str(tmp_path / "distilled")]) == 0
    assert json.loads((tmp_path / "distilled" / "prompts.json").read_text())["steps"] == 4  # step-distilled


def test_flux2_resume_after_sigkill_equals_an_uninterrupted_run(tiny_flux2, tmp_path):
    from test_training_loop import killed_and_resumed, same_tensors

    full, out = killed_and_resumed(tiny_flux2, EMOJIBENCH / "dog", tmp_path, ["--steps", "40", "--checkpoint-every",
                                                                              "10"], 20)
    name = "pytorch_lora_weights.safetensors"
    assert same_tensors(full / name, out / name)
    assert (out / "loss.csv").read_text() == (full / "loss.csv").read_text()


@pytest.mark.parametrize("flags, words", [
    (["textual-inversion"], "textual-inversion is not built for FLUX.2 [klein]"),
    (["profusion"], "profusion is not built for FLUX.2 [klein]"),
    (["apprentice"], "apprentice is not built for FLUX.2 [klein]"),
    (["lora", "--train-text-encoder"], "FLUX.2 [klein]'s text encoder does not train"),
    (["lora", "--snr-gamma", "5"], "min-SNR weighting is defined for")])
def test_what_flux2_does_not_take_is_refused_with_nothing_written(tiny_flux2, tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    err = refused(capsys, ["train", flags[0], "--model", tiny_flux2, "--subject", str(EMOJIBENCH / "dog"), "--class",
                           "dog", "--out", str(out), "--quiet", *flags[1:]])
    assert words in err and not out.exists()


def test_a_text_encoder_without_the_pipelines_layers_is_refused(tiny_flux2, tmp_path, capsys):
    folder = tmp_path / "shallow"
    shutil.copytree(tiny_flux2, folder)
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    (folder / "text_encoder" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 12,
                                                                     "layer_types": config["layer_types"][:12]}))
    err = refused(capsys, ["generate", str(folder), "a dog", "-n", "1", "--out", str(tmp_path / "images")])
    assert "hidden layers 9, 18, 27" in err and not (tmp_path / "images").exists()


# --- the zero-shot row: the family's own reference images -------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(tiny_flux2, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "reference"
    assert main(["train", "reference", "--model", tiny_flux2, "--subject", str(EMOJIBENCH / "dog"), "--class", "dog",
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_a_reference_run_samples_as_the_pipeline_does_with_the_photos_as_its_images(reference_run, tiny_flux2):
    manifest = json.loads((reference_run / "subject.json").read_text())
    assert manifest["method"] == "reference" and manifest["files"] == [f"references/{i:02d}.png" for i in range(4)]
    assert manifest["metrics"]["final_loss"] is None  # nothing trained
    run = load_run(reference_run)
    prompt = run.prompt_for_model("a {subject} on the beach")
    assert prompt == "a dog on the beach"
    ours = as_array(generate(run.components, [prompt], [0], steps=4, guidance=4.0,
                             denoiser_for=run.denoiser_for("", 4.0)))
    pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2)
    assert np.abs(ours - plain_images(pipe, prompt, run.components, image=run.reference_images)).max() <= 1
    without = as_array(generate(run.components, [prompt], [0], steps=4, guidance=4.0))
    assert np.abs(ours - without).max() > 0  # the references reach the image


def test_references_change_a_lora_runs_images(flux2_lora, tmp_path):
    def image(name, *flags):
        assert main(["generate", str(flux2_lora), "a {subject} on the beach", "-n", "1", "--steps", "4", "--quiet",
                     "--out", str(tmp_path / name), *flags]) == 0
        return np.asarray(Image.open(tmp_path / name / "p00-0.png"), dtype=np.int16)

    plain, referenced = image("plain"), image("referenced", "--references", str(EMOJIBENCH / "dog"))
    assert np.abs(plain - referenced).max() > 0
    assert json.loads((tmp_path / "referenced" / "prompts.json").read_text())["references"] == str(EMOJIBENCH / "dog")


def test_the_bench_benches_the_reference_row(tiny_flux2, evaluator_dirs, tmp_path):
    dino, clip = evaluator_dirs
    out = tmp_path / "bench"
    assert main(["--threads", "1", "bench", "--bench", str(EMOJIBENCH), "--model", tiny_flux2, "--methods",
                 "reference", "--out", str(out), "--dino", dino, "--clip", clip, "--quiet", "--subjects", "dog",
                 "--prompts", "2", "--images-per-prompt", "1", "--sample-steps", "4"]) == 0
    results = json.loads((out / "results.json").read_text())
    pair = results["pairs"]["reference"]["dog"]
    assert len(pair["prompts"]) == 2 and all((out / f).is_file() for p in pair["prompts"] for f in p["files"])
    assert results["protocol"]["guidance"] == 4.0  # the family's
    assert "| reference |" in (out / "table.md").read_text()


def test_references_are_refused_where_the_family_takes_none(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    err = refused(capsys, ["train", "reference", "--model", tiny_model, "--subject", str(EMOJIBENCH / "dog"),
                           "--class", "dog", "--out", str(out), "--quiet"])
    assert "reference is not built for Stable Diffusion" in err and not out.exists()
    err = refused(capsys, ["generate", tiny_model, "a dog", "-n", "1", "--references", str(EMOJIBENCH / "dog"),
                           "--out", str(out)])
    assert "Stable Diffusion 1.x/2.x takes no reference images" in err and not out.exists()


@pytest.mark.parametrize("folder, words", [("missing", "no such folder"), ("dog", "4 reference photos already")])
def test_bad_references_are_refused_with_nothing_written(reference_run, tmp_path, capsys, folder, words):
    out = tmp_path / "images"
    err = refused(capsys, ["generate", str(reference_run), "a {subject}", "-n", "1", "--references",
                           str(EMOJIBENCH / folder), "--out", str(out)])
    assert words in err and not out.exists()


def test_a_bench_of_the_reference_row_on_sd_is_refused_before_any_pair(tiny_model, evaluator_dirs, tmp_path, capsys):
    dino, clip = evaluator_dirs
    out = tmp_path / "bench"
    err = refused(capsys, ["bench", "--bench", str(EMOJIBENCH), "--model", tiny_model, "--methods", "lora,reference",
                           "--out", str(out), "--dino", dino, "--clip", clip, "--quiet", "--subjects", "dog"])
    assert "reference is not built for Stable Diffusion 1.x/2.x" in err and not out.exists()


def test_the_default_bench_has_the_reference_row_where_the_family_has_one(tiny_flux2, tiny_model):
    from subjectgen.cli import bench_config, build_parser

    def default_methods(model):
        return bench_config(build_parser().parse_args(["bench", "--model", model, "--out", "x"])).methods

    assert "reference" in default_methods(tiny_flux2) and "lora" in default_methods(tiny_flux2)
    assert "textual-inversion" not in default_methods(tiny_flux2)  # not built for FLUX.2 [klein]
    assert "reference" not in default_methods(tiny_model)
