"""FLUX.1 on the backbone axis: a tiny random FLUX.1 built in code (a T5 tokenizer trained in a second) trains
LoRA by flow matching, generates as plain diffusers does, and its LoRA loads in plain diffusers."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from subjectgen import TrainConfig, load_model, load_run, train
from subjectgen.backbones.flux import pack
from subjectgen.cli import main
from subjectgen.models import networks_in
from subjectgen.sampling import generate, initial_latents
from subjectgen.training.losses import diffusion_loss
from subjectgen.world.build import EMOJIBENCH

from test_methods import as_array, refused


@pytest.fixture(scope="module")
def tiny_flux(tiny_flux_model) -> str:
    return tiny_flux_model


@pytest.fixture(scope="module")
def flux_lora(tiny_flux, tmp_path_factory):
    cfg = TrainConfig(method="lora", model=tiny_flux, subject_dir=str(EMOJIBENCH / "dog"), class_noun="dog",
                      out=str(tmp_path_factory.mktemp("runs") / "lora"), steps=6, train_text_encoder=True,
                      prior_preservation=True, num_class_images=2)
    return train(cfg, progress=False).run_dir


def plain_images(pipe, prompt, components, seed=0, guidance=3.5):
    latents = pack(initial_latents(components, [seed]))
    out = pipe(prompt, num_inference_steps=4, guidance_scale=guidance, latents=latents, height=32, width=32,
               max_sequence_length=32, output_type="np").images
    return np.round(out * 255).astype(np.int16)


def test_flux_is_detected_and_our_sampler_matches_the_plain_pipeline(tiny_flux):
    components = load_model(tiny_flux)
    assert components.backbone.name == "flux" and components.resolution == 32
    ours = as_array(generate(components, ["a dog on the beach"], [3], steps=4, guidance=3.5))
    theirs = plain_images(FluxPipeline.from_pretrained(tiny_flux), "a dog on the beach", components, seed=3)
    assert np.abs(ours - theirs).max() <= 1


def test_flux_lora_trains_and_loads_in_plain_diffusers(flux_lora, tiny_flux):
    run = load_run(flux_lora)
    prompt = run.prompt_for_model("a {subject} on the beach")
    ours = as_array(generate(run.components, [prompt], [0], steps=4, guidance=3.5))
    base = as_array(generate(load_model(tiny_flux), [prompt], [0], steps=4, guidance=3.5))
    assert np.abs(ours - base).max() > 0
    weights = load_file(str(flux_lora / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("transformer.") for k in weights) and any(k.startswith("text_encoder.") for k in weights)
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    pipe.load_lora_weights(str(flux_lora))
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=pipe.get_active_adapters()[0])
    mine = {k for k in weights if k.startswith("transformer.")}
    assert {f"transformer.{k}" for k in loaded} == mine  # every layer, none dropped by the loader
    assert all(torch.equal(v, weights[f"transformer.{k}"]) for k, v in loaded.items())
    assert np.abs(ours - plain_images(pipe, prompt, run.components)).max() <= 1


def generated(run_dir, out, **options) -> np.ndarray:
    """generate_to_folder's one image of 'a {subject} on the beach' (seed 0, 4 steps, no early steps), as pixels."""
    from PIL import Image

    from subjectgen.generation import generate_to_folder

    result = generate_to_folder(str(run_dir), ["a {subject} on the beach"], out, n=1, steps=4, subject_start=0,
                                **options)
    return np.asarray(Image.open(result.files[0]), dtype=np.int16)[None]


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_generate_in_half_precision_gives_the_plain_pipelines_image_in_it(flux_lora, tiny_flux, tmp_path, dtype,
                                                                          torch_dtype):
    """--dtype: the networks in half precision as diffusers' torch_dtype puts them (the VAE in fp32 in both)."""
    ours = generated(flux_lora, tmp_path / "out", dtype=dtype)
    pipe = FluxPipeline.from_pretrained(tiny_flux, torch_dtype=torch_dtype)
    pipe.load_lora_weights(str(flux_lora))
    decode = pipe.vae.float().decode
    pipe.vae.decode = lambda z, **kw: decode(z.float(), **kw)
    run = load_run(flux_lora)
    theirs = plain_images(pipe, run.prompt_for_model("a {subject} on the beach"), run.components)
    assert np.abs(ours - theirs).max() <= 1
    assert np.abs(ours - generated(flux_lora, tmp_path / "fp32")).max() > 0  # it did compute in half precision
    assert json.loads((tmp_path / "out" / "prompts.json").read_text())["dtype"] == dtype
    with networks_in(torch_dtype):
        t5 = load_model(tiny_flux).text_encoders[1]
    wo = [p.dtype for name, p in t5.named_parameters() if ".wo." in name]
    assert wo and set(wo) == {torch.float32 if dtype == "fp16" else torch_dtype}  # T5's kept in fp32 in fp16
    assert t5.shared.weight.dtype == torch_dtype


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_generate_base_quantization_holds_the_base_quantized_under_the_lora(flux_lora, tmp_path, kind):
    from subjectgen.training.quantize import quantize_frozen

    weight_type = quantized_weight(kind)
    run = load_run(flux_lora)
    run.components.denoiser.requires_grad_(False)  # the LoRA's own layers too: the name keeps them out
    assert quantize_frozen(run.components.denoiser, kind, torch.float32, "cpu") > 0
    attention = run.components.denoiser.transformer_blocks[0].attn.to_q
    assert isinstance(attention.base_layer.weight, weight_type)
    assert not any(isinstance(p, weight_type) for name, p in attention.named_parameters() if "lora_" in name)
    quantized, full = generated(flux_lora, tmp_path / kind, base_quantization=kind), generated(flux_lora, tmp_path)
    assert 0 < np.abs(quantized - full).mean() < 8  # the rounding of its weights, no more


def test_generate_with_a_quantization_the_machine_cannot_run_is_refused_with_nothing_written(flux_lora, tmp_path,
                                                                                             capsys, monkeypatch):
    from subjectgen.training import quantize

    monkeypatch.setattr(quantize, "installed", lambda package: False)
    out = tmp_path / "out"
    err = refused(capsys, ["generate", str(flux_lora), "a {subject}", "--out", str(out), "--base-quantization",
                           "nf4", "--quiet"])
    assert "--base-quantization nf4 needs bitsandbytes: pip install bitsandbytes" in err and not out.exists()


def lora_updates(path, prefix: str) -> dict[str, torch.Tensor]:
    """Each module's weight update in a LoRA file, as ComfyUI adds it: up @ down x alpha / rank (peft's names:
    B @ A x the run's alpha / rank)."""
    weights, updates = load_file(str(path)), {}
    for key in weights:
        for down, up in ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
                         (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight")):
            if key.startswith(prefix) and key.endswith(down):
                module = key[len(prefix): -len(down)]
                a, b = weights[key], weights[module.join((prefix, up))]
                alpha = weights.get(f"{prefix}{module}.alpha", torch.tensor(float(len(a)))).item()
                updates[module] = b @ a * alpha / len(a)
    return updates


def test_the_comfyui_file_holds_the_same_update_under_the_original_models_names(flux_lora):
    ours = lora_updates(flux_lora / "pytorch_lora_weights.safetensors", "transformer.")
    comfy = lora_updates(flux_lora / "comfyui_lora.safetensors", "diffusion_model.")
    keys = load_file(str(flux_lora / "comfyui_lora.safetensors"))
    assert all(k.startswith(("diffusion_model.", "text_encoders.clip_l.transformer.")) for k in keys)
    double, single = "transformer_blocks.0.", "single_transformer_blocks.0."
    qkv = torch.cat([ours[double + f"attn.to_{x}"] for x in "qkv"])
    assert torch.allclose(comfy["double_blocks.0.img_attn.qkv"], qkv, atol=1e-6)
    assert torch.allclose(comfy["double_blocks.0.txt_attn.qkv"],
                          torch.cat([ours[double + f"attn.add_{x}_proj"] for x in "qkv"]), atol=1e-6)
    for theirs, mine in (("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"),
                         ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
                         ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2")):
        assert torch.allclose(comfy[f"double_blocks.0.{theirs}"], ours[double + mine], atol=1e-6)
    linear1 = torch.cat([*(ours[single + f"attn.to_{x}"] for x in "qkv"), torch.zeros(4 * 32, 32)])
    assert torch.allclose(comfy["single_blocks.0.linear1"], linear1, atol=1e-6)  # proj_mlp's rows: no LoRA
    assert len(comfy) == 9  # every one of our 17 modules, q, k and v fused as in the original model
    te = lora_updates(flux_lora / "pytorch_lora_weights.safetensors", "text_encoder.")
    te_comfy = lora_updates(flux_lora / "comfyui_lora.safetensors", "text_encoders.clip_l.transformer.")
    assert te and set(te_comfy) == {m if m.startswith("text_model.") else "text_model." + m for m in te}
    assert all(torch.allclose(te_comfy[m if m.startswith("text_model.") else "text_model." + m], v, atol=1e-6)
               for m, v in te.items())


def test_plain_diffusers_reads_the_comfyui_file_as_our_own(tmp_path):
    """FluxPipeline.load_lora_weights takes the ComfyUI file and gives our image; on a model without single blocks,
    as diffusers' reader splits their linear1 at FLUX.1's real widths only (the test above checks them)."""
    from subjectgen.tiny import save_tiny_flux_pipeline

    model = str(save_tiny_flux_pipeline(tmp_path / "double-only", single_layers=0))
    cfg = TrainConfig(method="lora", model=model, subject_dir=str(EMOJIBENCH / "dog"), class_noun="dog",
                      out=str(tmp_path / "lora"), steps=4, lr=1e-2, rank=2, lora_alpha=3, train_text_encoder=True)
    run = load_run(train(cfg, progress=False).run_dir)
    prompt = run.prompt_for_model("a {subject} on the beach")
    images = {}
    for name in ("pytorch_lora_weights.safetensors", "comfyui_lora.safetensors", None):
        pipe = FluxPipeline.from_pretrained(model)
        if name:
            pipe.load_lora_weights(str(tmp_path / "lora"), weight_name=name)
        images[name] = plain_images(pipe, prompt, run.components)
    ours = as_array(generate(run.components, [prompt], [0], steps=4, guidance=3.5))
    assert np.abs(images["comfyui_lora.safetensors"] - ours).max() <= 1
    assert np.abs(images["pytorch_lora_weights.safetensors"] - ours).max() <= 1
    assert np.abs(images[None] - ours).max() > 3  # the LoRA (and CLIP-L's) changes the image


def test_the_flow_matching_step_against_a_hand_computation(tiny_flux):
    components = load_model(tiny_flux)
    family = components.backbone
    scheduler = family.training_scheduler(components)
    latents = torch.randn(3, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    noisy, timesteps, target = family.training_sample(scheduler, latents, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(latents.shape, generator=g)
    index = (torch.rand(3, generator=g) * 1000).long()
    sigma = scheduler.sigmas[index].view(-1, 1, 1, 1)
    assert torch.allclose(noisy, (1 - sigma) * latents + sigma * noise) and torch.equal(target, noise - latents)
    assert torch.allclose(timesteps, sigma.flatten() * 1000)  # the transformer sees timestep / 1000 = σ


def test_the_guidance_embedding_reaches_a_distilled_model_and_not_a_base_one(tiny_flux, tmp_path):
    from subjectgen.tiny import save_tiny_flux_pipeline

    seen = {}

    def spy(name):
        def hook(module, args, kwargs):
            seen[name] = kwargs.get("guidance")
        return hook

    schnell = load_model(str(save_tiny_flux_pipeline(tmp_path / "schnell", guidance_embeds=False)))
    for name, components in (("dev", load_model(tiny_flux)), ("schnell", schnell)):
        components.transformer.register_forward_pre_hook(spy(name), with_kwargs=True)
        generate(components, ["a dog"], [0], steps=2, guidance=5.0)
    assert seen["dev"] is not None and torch.allclose(seen["dev"], torch.tensor([5.0]))
    assert seen["schnell"] is None


def weighting(scheme="none", logit_mean=0.0, logit_std=1.0, mode_scale=1.29):
    return SimpleNamespace(weighting_scheme=scheme, logit_mean=logit_mean, logit_std=logit_std, mode_scale=mode_scale)


@pytest.mark.parametrize("cfg", [weighting(), weighting("logit_normal", 0.5, 0.8), weighting("mode", mode_scale=1.29),
                                 weighting("mode", mode_scale=-0.5), weighting("sigma_sqrt"), weighting("cosmap")])
def test_the_timestep_density_against_a_hand_computation(cfg):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from subjectgen.backbones.flux import timestep_density

    ours = timestep_density(64, torch.Generator().manual_seed(5), cfg)
    g = torch.Generator().manual_seed(5)
    if cfg.weighting_scheme == "logit_normal":
        z = torch.randn(64, generator=g) * cfg.logit_std + cfg.logit_mean
        hand = [1 / (1 + math.exp(-v)) for v in z.tolist()]
    else:
        u = torch.rand(64, generator=g).tolist()
        s = cfg.mode_scale if cfg.weighting_scheme == "mode" else 0.0
        hand = [1 - v - s * (math.cos(math.pi * v / 2) ** 2 - 1 + v) if s else v for v in u]
    assert np.allclose(ours.numpy(), hand, atol=1e-6)
    theirs = compute_density_for_timestep_sampling(cfg.weighting_scheme, 64, cfg.logit_mean, cfg.logit_std,
                                                   cfg.mode_scale, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ours, theirs)  # diffusers' FLUX scripts draw the same timesteps


def test_a_weighting_scheme_changes_the_sampled_sigmas_or_the_loss_weights(tiny_flux):
    components = load_model(tiny_flux)
    family = components.backbone
    scheduler = family.training_scheduler(components)
    latents = torch.zeros(2000, 1, 2, 2)

    def drawn(cfg):
        _, timesteps, _ = family.training_sample(scheduler, latents, torch.Generator().manual_seed(3), cfg)
        return timesteps / 1000, cfg and family.loss_weights(scheduler, timesteps, cfg)

    uniform, none_weights = drawn(weighting())
    assert none_weights is None and torch.equal(drawn(None)[0], uniform)
    low, high = drawn(weighting("logit_normal", 2.0))[0], drawn(weighting("logit_normal", -2.0))[0]
    assert low.mean() < uniform.mean() - 0.2 < high.mean() - 0.4  # the logit's mean moves σ; index u ~ 1 - σ
    mode = drawn(weighting("mode", mode_scale=1.29))[0]
    assert not torch.equal(mode, uniform) and mode.std() < uniform.std()  # more of the middle noise levels
    cosmap = lambda s: 2 / (math.pi * (1 - 2 * s + 2 * s ** 2))  # noqa: E731
    for scheme, hand in (("sigma_sqrt", lambda s: 1 / s ** 2), ("cosmap", cosmap)):
        sigmas, weights = drawn(weighting(scheme))
        assert torch.equal(sigmas, uniform) and torch.allclose(weights, hand(sigmas.double()).float(), rtol=1e-5)
    middle = family.loss_weights(scheduler, torch.tensor([500.0]), weighting("cosmap"))
    assert middle.item() == pytest.approx(4 / math.pi)


def test_the_loss_weights_reach_the_loss():
    pred, target = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).view(-1, 1, 1, 1)
    loss, parts = diffusion_loss(pred, target, torch.zeros(3), None, "flow", n_instance=2, prior_weight=0.5,
                                 weights=torch.tensor([2.0, 1.0, 4.0]))
    assert loss.item() == pytest.approx((2 * 1 + 1 * 4) / 2 + 0.5 * 4 * 9)
    assert parts["prior"].item() == pytest.approx(36)


@pytest.mark.parametrize("flags, words", [(["--weighting-scheme", "logit_normal"], "--weighting-scheme: a flow-"
                                           "matching setting (FLUX.1, FLUX.2 [klein]); Stable Diffusion"),
                                          (["--weighting-scheme", "mode", "--mode-scale", "1"], "--weighting-scheme"),
                                          (["--logit-std", "0.5"], "--logit-std is read by --weighting-scheme "
                                           "logit_normal only")])
def test_flow_matching_settings_are_refused_where_they_do_nothing(tiny_model, tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    err = refused(capsys, ["train", "lora", "--model", tiny_model, "--subject", str(EMOJIBENCH / "dog"), "--class",
                           "dog", "--out", str(out), "--quiet", *flags])
    assert words in err and not out.exists()


@pytest.mark.parametrize("settings, words", [({"weighting_scheme": "uniform"}, "--weighting-scheme must be one of "
                                              "none, logit_normal"),
                                             ({"weighting_scheme": "mode", "mode_scale": 2.0}, "--mode-scale must be "
                                              "a finite number in [-1, 1.75")])
def test_the_python_api_checks_the_weighting_settings_as_the_cli_does(settings, words):
    from subjectgen.errors import UserError

    with pytest.raises(UserError, match=words.replace("[", "\\[")):
        TrainConfig(method="lora", subject_dir="photos", class_noun="dog", out="run", **settings)


def quantized_weight(kind: str):
    """The type a frozen weight has once quantized as `kind` (skips the test where its library is not installed)."""
    if kind == "int8":
        pytest.importorskip("torchao")
        from torchao.quantization import Int8Tensor

        return Int8Tensor
    return pytest.importorskip("bitsandbytes").nn.Params4bit


@pytest.mark.parametrize("kind, tolerance", [("int8", 0.02), ("nf4", 0.1)])
def test_base_quantization_trains_lora_on_the_cpu(tiny_flux, tmp_path, kind, tolerance):
    """nf4 on the CPU: bitsandbytes' CPU kernels (the tested 0.50.2), the same code path as on CUDA."""
    weight_type = quantized_weight(kind)
    from subjectgen.training.loop import Trainer

    runs = {}
    for quantization in (None, kind):
        cfg = TrainConfig(method="lora", model=tiny_flux, subject_dir=str(EMOJIBENCH / "dog"), class_noun="dog",
                          out=str(tmp_path / str(quantization)), steps=4, lr=1e-2, base_quantization=quantization)
        trainer = Trainer(cfg, progress=False)
        runs[quantization] = trainer.run()
        transformer = trainer.components.transformer
    base = transformer.transformer_blocks[0].attn.to_q.base_layer.weight
    assert isinstance(base, weight_type) and isinstance(transformer.proj_out.weight, weight_type)  # every frozen one
    trained = [p for p in transformer.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 and not isinstance(p, weight_type) for p in trained)
    assert math.isfinite(runs[kind].final_loss)
    assert runs[kind].final_loss == pytest.approx(runs[None].final_loss, rel=tolerance)  # its rounding, no more
    name = "pytorch_lora_weights.safetensors"
    full, quantized = (load_file(str(tmp_path / str(q) / name)) for q in (None, kind))
    assert full.keys() == quantized.keys() and all(full[k].dtype == quantized[k].dtype for k in full)
    assert (tmp_path / kind / "comfyui_lora.safetensors").exists()
    assert not torch.equal(next(iter(full.values())), next(iter(quantized.values())))  # the base it saw differed


@pytest.mark.parametrize("flags, words", [
    (["lora", "--base-quantization", "nf4"], "--base-quantization nf4 needs bitsandbytes: pip install bitsandbytes"),
    (["lora", "--base-quantization", "int8"], "--base-quantization int8 needs torchao: pip install torchao")])
def test_a_quantization_that_cannot_run_is_refused_with_nothing_written(tiny_flux, tmp_path, capsys, monkeypatch,
                                                                         flags, words):
    from subjectgen.training import quantize

    monkeypatch.setattr(quantize, "installed", lambda package: False)  # a machine without torchao or bitsandbytes
    out = tmp_path / "run"
    err = refused(capsys, ["train", flags[0], "--model", tiny_flux, "--subject", str(EMOJIBENCH / "dog"), "--class",
                           "dog", "--out", str(out), "--quiet", *flags[1:]])
    assert words in err and not out.exists()


def test_a_quantized_base_for_a_method_that_trains_the_base_is_refused(tiny_flux, tmp_path, capsys):
    """The Python API says why; the CLI has no such flag for dreambooth (the registry drops it)."""
    from subjectgen.errors import UserError
    from subjectgen.training.loop import Trainer

    cfg = TrainConfig(method="dreambooth", model=tiny_flux, subject_dir=str(EMOJIBENCH / "dog"), class_noun="dog",
                      out=str(tmp_path / "run"), steps=2, base_quantization="int8")
    with pytest.raises(UserError, match="dreambooth trains no LoRA on a frozen base"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exit_code:
        main(["train", "dreambooth", "--model", tiny_flux, "--subject", str(EMOJIBENCH / "dog"), "--class", "dog",
              "--out", str(tmp_path / "run"), "--base-quantization", "int8"])
    err = capsys.readouterr().err
    assert exit_code.value.code == 2 and "--base-quantization does not apply to dreambooth" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, probe", [("--base-quantization nf4", "subjectgen.training.quantize.nf4_probe"),
                                         ("--optimizer adamw8bit", "subjectgen.training.loop.adamw8bit_probe")])
def test_bitsandbytes_that_cannot_run_on_the_device_is_refused_with_nothing_written(tiny_flux, tmp_path, capsys,
                                                                                   monkeypatch, flag, probe):
    """An installed bitsandbytes without kernels for the device (an older one on a CPU): the check tries it there."""
    pytest.importorskip("bitsandbytes")

    def no_kernel(device):
        raise NotImplementedError(f"no 4-bit kernel for {device.type}\nmore lines of the library's own")

    monkeypatch.setattr(probe, no_kernel)
    out = tmp_path / "run"
    err = refused(capsys, ["train", "lora", "--model", tiny_flux, "--subject", str(EMOJIBENCH / "dog"), "--class",
                           "dog", "--out", str(out), "--quiet", *flag.split()])
    assert f"{flag}: bitsandbytes " in err and "cannot run it on cpu (no 4-bit kernel for cpu)" in err
    assert not out.exists()


@pytest.mark.parametrize("flags, words", [(["textual-inversion"], "textual-inversion is not built for FLUX.1"),
                                          (["lora", "--snr-gamma", "5"], "min-SNR weighting is defined for")])
def test_what_flux_does_not_take_is_refused_with_nothing_written(tiny_flux, tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    err = refused(capsys, ["train", flags[0], "--model", tiny_flux, "--subject", str(EMOJIBENCH / "dog"), "--class",
                           "dog", "--out", str(out), "--quiet", *flags[1:]])
    assert words in err and not out.exists()


def test_flux_resume_after_sigkill_equals_an_uninterrupted_run(tiny_flux, tmp_path):
    """With a timestep density drawn from the run's generator (--weighting-scheme logit_normal)."""
    from test_training_loop import killed_and_resumed, same_tensors

    common = ["--steps", "40", "--checkpoint-every", "10", "--train-text-encoder", "--weighting-scheme",
              "logit_normal", "--logit-std", "0.8"]
    full, out = killed_and_resumed(tiny_flux, EMOJIBENCH / "dog", tmp_path, common, 20)
    name = "pytorch_lora_weights.safetensors"
    assert same_tensors(full / name, out / name)


def test_generate_takes_the_familys_guidance_when_none_is_given(flux_lora, tmp_path):
    assert main(["generate", str(flux_lora), "a {subject}", "-n", "1", "--steps", "2", "--out",
                 str(tmp_path / "images")]) == 0
    record = json.loads(next((tmp_path / "images").glob("*.json")).read_text())
    assert record["guidance"] == 3.5  # FLUX.1-dev's embedding, FluxPipeline's default; SD's stays 7.5


def test_the_bench_on_flux_samples_at_its_familys_guidance(tiny_flux, tiny_model):
    from subjectgen.backbones import default_guidance_of

    assert default_guidance_of(tiny_flux) == 3.5 and default_guidance_of(tiny_model) == 7.5
    assert default_guidance_of("some-org/some-model") == 7.5  # a hub id: no index at hand
