"""Each method trains, changes the output, and its files load in plain diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from subjectgen import TrainConfig, load_model, load_run, train
from subjectgen.sampling import generate, initial_latents

STEPS = 30


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from conftest import draw_subject

    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        draw_subject(folder / f"{i}.png", shift=2 * i)
    return folder


@pytest.fixture(scope="module")
def runs(tiny_model, photos, tmp_path_factory):
    """One short run per method, shared by the tests of this module."""
    out = {}
    for method in ("lora", "dreambooth", "textual-inversion"):
        cfg = TrainConfig(method=method, model=tiny_model, subject_dir=str(photos), class_noun="dog",
                          out=str(tmp_path_factory.mktemp("runs") / method), steps=STEPS, num_class_images=4,
                          num_vectors=2 if method == "textual-inversion" else 1)
        out[method] = train(cfg, progress=False)
    return out


def as_array(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def refused(capsys, argv) -> str:
    """The CLI's answer to bad input: exit 2 and one line on stderr, no traceback; returns the line."""
    from subjectgen.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def with_pipeline_class(model: str, tmp_path, class_name: str):
    """A copy of a model folder whose model_index.json names another pipeline class (a look-alike family)."""
    import json
    import shutil

    folder = tmp_path / "variant"
    shutil.copytree(model, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
    return folder


@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual-inversion"])
def test_training_changes_the_output(runs, tiny_model, method):
    run = load_run(runs[method].run_dir)
    prompt = run.prompt_for_model("a {subject}")
    after = as_array(generate(run.components, [prompt], [0], steps=4))
    before = as_array(generate(load_model(tiny_model), [prompt], [0], steps=4))
    assert np.abs(after - before).max() > 0
    assert run.manifest["method"] == method and run.manifest["metrics"]["final_loss"] > 0


def diffusers_images(pipe, prompt, components, seed=0):
    latents = initial_latents(components, [seed])
    out = pipe(prompt, num_inference_steps=4, guidance_scale=7.5, latents=latents, output_type="np").images
    return np.round(out * 255).astype(np.int16)


def test_our_sampler_matches_the_diffusers_pipeline(tiny_model):
    components = load_model(tiny_model)
    ours = as_array(generate(components, ["a dog"], [3], steps=4))
    theirs = diffusers_images(StableDiffusionPipeline.from_pretrained(tiny_model), "a dog", components, seed=3)
    assert np.abs(ours - theirs).max() <= 1


def test_lora_loads_in_plain_diffusers_and_kohya_export_matches(runs, tiny_model):
    run_dir = runs["lora"].run_dir
    run = load_run(run_dir)
    prompt = run.prompt_for_model("a {subject} on the beach")
    ours = as_array(generate(run.components, [prompt], [0], steps=4))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(str(run_dir))  # the default file name: pytorch_lora_weights.safetensors
    plain = diffusers_images(pipe, prompt, run.components)
    assert np.abs(ours - plain).max() <= 1
    kohya = load_file(str(run_dir / "kohya_lora.safetensors"))
    assert all(k.startswith("lora_unet_") for k in kohya) and any(k.endswith(".alpha") for k in kohya)
    pipe_k = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe_k.load_lora_weights(str(run_dir), weight_name="kohya_lora.safetensors")
    assert np.abs(diffusers_images(pipe_k, prompt, run.components) - plain).max() <= 1


def test_lora_scale_weights_the_update_as_diffusers_set_adapters_does(runs, tiny_model):
    from subjectgen.errors import UserError

    run_dir = runs["lora"].run_dir
    prompt = load_run(run_dir).prompt_for_model("a {subject}")
    zero = as_array(generate(load_run(run_dir, lora_scale=0.0).components, [prompt], [0], steps=4))
    base = as_array(generate(load_model(tiny_model), [prompt], [0], steps=4))
    assert np.abs(zero - base).max() <= 1
    half_run = load_run(run_dir, lora_scale=0.5)
    half = as_array(generate(half_run.components, [prompt], [0], steps=4))
    full = as_array(generate(load_run(run_dir).components, [prompt], [0], steps=4))
    assert np.abs(half - full).max() > 0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(str(run_dir), adapter_name="mine")
    pipe.set_adapters(["mine"], adapter_weights=[0.5])
    assert np.abs(half - diffusers_images(pipe, prompt, half_run.components)).max() <= 1
    with pytest.raises(UserError, match="--lora-scale"):
        load_run(runs["dreambooth"].run_dir, lora_scale=0.5)


def test_textual_inversion_loads_in_diffusers_and_leaves_other_rows_untouched(runs, tiny_model):
    run_dir = runs["textual-inversion"].run_dir
    base = StableDiffusionPipeline.from_pretrained(tiny_model).text_encoder.get_input_embeddings().weight.detach()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.load_textual_inversion(str(run_dir / "learned_embeds.safetensors"))
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert table.shape[0] == base.shape[0] + 2                         # '<s*>' and '<s*>_1'
    assert torch.equal(table[: base.shape[0]], base)                   # every old row bit-identical
    learned = load_file(str(run_dir / "learned_embeds.safetensors"))["<s*>"]
    init = base[pipe.tokenizer("dog", add_special_tokens=False).input_ids].mean(0)
    assert not torch.allclose(learned[0], init)                        # the vectors did learn
    assert torch.equal(table[base.shape[0]:], learned)
    a1111 = load_file(str(run_dir / "embedding_a1111.safetensors"))
    assert torch.equal(a1111["emb_params"], learned)
    pipe2 = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe2.load_textual_inversion(str(run_dir / "embedding_a1111.safetensors"), token="<s*>")
    assert torch.equal(pipe2.text_encoder.get_input_embeddings().weight[base.shape[0]:], learned)


def test_full_dreambooth_saves_a_loadable_pipeline(runs, tiny_model):
    run_dir = runs["dreambooth"].run_dir
    pipe = StableDiffusionPipeline.from_pretrained(str(run_dir / "pipeline"))
    base = StableDiffusionPipeline.from_pretrained(tiny_model)
    trained = dict(pipe.unet.named_parameters())
    changed = [n for n, p in base.unet.named_parameters() if not torch.equal(p, trained[n])]
    assert len(changed) > 10
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, base.text_encoder.get_input_embeddings().weight)


def test_a_dreambooth_runs_second_base_is_held_as_generate_holds_the_run(runs, tmp_path):
    """--subject-start on a full fine-tune samples the first steps on a second, plain base: in --dtype too."""
    from subjectgen.generation import generate_to_folder

    run = load_run(runs["dreambooth"].run_dir)
    run.networks_dtype = torch.bfloat16
    base = run.base_model()
    assert {p.dtype for p in base.denoiser.parameters()} == {torch.bfloat16} and base.vae.dtype == torch.float32
    result = generate_to_folder(str(runs["dreambooth"].run_dir), ["a {subject}"], tmp_path, n=1, steps=4,
                                subject_start=0.5, dtype="bf16")
    assert len(result.files) == 1


def test_prior_preservation_logs_both_halves(runs):
    import csv

    rows = list(csv.DictReader((runs["dreambooth"].run_dir / "loss.csv").open()))
    assert len(rows) == STEPS and all(r["prior"] not in ("", None) for r in rows)
    first = rows[0]
    assert float(first["loss"]) == pytest.approx(float(first["instance"]) + float(first["prior"]), rel=1e-5)


def test_lora_with_text_encoder_exports_both_and_loads(tiny_model, photos, tmp_path):
    cfg = TrainConfig(method="lora", model=tiny_model, subject_dir=str(photos), class_noun="dog",
                      out=str(tmp_path / "te"), steps=4, train_text_encoder=True, gradient_checkpointing=True,
                      validate_every=2, rank=2, lora_alpha=4)
    run_dir = train(cfg, progress=False).run_dir
    kohya = load_file(str(run_dir / "kohya_lora.safetensors"))
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {4.0}
    assert sorted(p.name for p in (run_dir / "validation").iterdir()) == ["step-000002.png", "step-000004.png"]
    ours = load_run(run_dir)
    prompt = ours.prompt_for_model("a {subject}")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(str(run_dir))
    assert np.abs(diffusers_images(pipe, prompt, ours.components)
                  - as_array(generate(ours.components, [prompt], [0], steps=4))).max() <= 1


def test_builtin_run_loads_in_plain_diffusers(photos, tmp_path):
    """The shipped model stores fp16 weights: plain diffusers loads it with an explicit torch_dtype."""
    cfg = TrainConfig(method="lora", subject_dir=str(photos), class_noun="dog", out=str(tmp_path / "b"), steps=2)
    run_dir = train(cfg, progress=False).run_dir
    from subjectgen.assets import SHIPPED

    pipe = StableDiffusionPipeline.from_pretrained(str(SHIPPED), torch_dtype=torch.float32)
    pipe.load_lora_weights(str(run_dir))
    image = pipe("a dog", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual-inversion"])
def test_base_networks_give_the_base_models_images_and_then_the_runs_again(runs, tiny_model, method):
    from subjectgen.sampling import EarlySteps

    run = load_run(runs[method].run_dir)
    prompt = "a dog on the beach"  # the class prompt, as the steps before the subject use it
    base = as_array(generate(load_model(tiny_model), [prompt], [0], steps=4))
    own = as_array(generate(run.components, [prompt], [0], steps=4))
    trainable = [p.requires_grad for p in run.components.unet.parameters()]
    all_steps_on_base = EarlySteps(4, [prompt], *run.method.base_networks(run))
    off = as_array(generate(run.components, [prompt], [0], steps=4, early=all_steps_on_base))
    assert np.abs(off - base).max() <= 1
    assert np.array_equal(as_array(generate(run.components, [prompt], [0], steps=4)), own)
    assert [p.requires_grad for p in run.components.unet.parameters()] == trainable
    if method != "textual-inversion":  # its weights are the base model's; only its token is new
        assert np.abs(own - base).max() > 0


def test_subject_start_samples_the_first_steps_on_the_class_prompt_then_the_subject(runs):
    from subjectgen.sampling import EarlySteps

    run = load_run(runs["lora"].run_dir)
    template = "a {subject} on the beach"
    early = run.early_steps([template], 0.25, 8)
    assert (early.steps, early.prompts) == (2, ["a dog on the beach"])
    assert run.early_steps([template], 0.0, 8) is None
    prompt = run.prompt_for_model(template)
    full = as_array(generate(run.components, [prompt], [0], steps=8))
    # an early phase that changes nothing changes nothing: the scheduler runs on across the switch
    same_networks = EarlySteps(3, [prompt], run.components.unet, [run.components.text_encoder])
    assert np.array_equal(as_array(generate(run.components, [prompt], [0], steps=8, early=same_networks)), full)
    late = as_array(generate(run.components, [prompt], [0], steps=8, early=early))
    assert np.abs(late - full).max() > 0
    assert np.array_equal(as_array(generate(run.components, [prompt], [0], steps=8)), full)  # the LoRA is back on


def test_a_runs_own_subject_start_is_what_generate_samples_it_with(runs, photos, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    from PIL import Image

    from subjectgen.config import resolve_defaults
    from subjectgen.generation import generate_to_folder
    from subjectgen.methods import registry

    # the method's default on the model decides it (a spec's (SD, small) pair), and the run records it
    spec = registry.get("lora")
    monkeypatch.setitem(registry.REGISTRY, "lora", dataclasses.replace(
        spec, defaults={**spec.defaults, "subject_start": (0.0, 0.25)}))
    cfg = TrainConfig(method="lora", subject_dir=str(photos), class_noun="dog", out=str(tmp_path / "r"))
    assert (resolve_defaults(cfg, 64).subject_start, resolve_defaults(cfg, 512).subject_start) == (0.25, 0.0)
    assert "default: 0 on Stable Diffusion, 0.25 on the built-in model" in registry.get("lora").defaults_text(
        "subject_start")
    # a run whose own is 0.25 (as `train --subject-start 0.25` records it) samples as generate --subject-start 0.25
    own = tmp_path / "own"
    shutil.copytree(runs["lora"].run_dir, own)
    manifest = json.loads((own / "subject.json").read_text())
    assert manifest["settings"]["subject_start"] == 0.4  # LoRA's on the small models (the fair comparison's)
    manifest["settings"]["subject_start"] = 0.25
    (own / "subject.json").write_text(json.dumps(manifest))
    assert load_run(own).subject_start == 0.25

    def image(ref, folder, **kw):
        result = generate_to_folder(str(ref), ["a {subject} on the beach"], tmp_path / folder, n=1, steps=8, **kw)
        return as_array([Image.open(result.files[0])])

    assert np.array_equal(image(own, "a"), image(runs["lora"].run_dir, "b", subject_start=0.25))
    assert not np.array_equal(image(own, "c"), image(own, "d", subject_start=0.0))  # a flag still decides
    assert json.loads((tmp_path / "a" / "prompts.json").read_text())["subject_start"] == 0.25
