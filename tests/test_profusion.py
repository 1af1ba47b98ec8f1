"""ProFusion: PromptNet, pretraining, the per-subject tune, Fusion Sampling, the run folder, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from subjectgen.cli import main
from subjectgen.methods.promptnet import PromptNet


@pytest.fixture(scope="session")
def image_encoder(tmp_path_factory) -> str:
    """A tiny transformers CLIP vision tower, the layout of openai/clip-vit-large-patch14's."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("image_encoder")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=1, num_attention_heads=2,
                                                   projection_dim=16)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def promptnet_dir(tmp_path_factory, tiny_model, image_encoder) -> str:
    from conftest import draw_subject

    root = tmp_path_factory.mktemp("pretrain")
    images = root / "images"
    images.mkdir()
    for i in range(6):
        draw_subject(images / f"{i}.png", shift=i)
    out = root / "promptnet"
    assert main(["profusion", "pretrain", "--model", tiny_model, "--images", str(images), "--out", str(out),
                 "--steps", "4", "--batch-size", "2", "--image-encoder", image_encoder, "--quiet"]) == 0
    return str(out)


def tune_cmd(tiny_model, subject_dir, out, promptnet_dir, image_encoder, *extra) -> list[str]:
    return ["train", "profusion", "--model", tiny_model, "--subject", str(subject_dir), "--class", "dog", "--out",
            str(out), "--promptnet", promptnet_dir, "--image-encoder", image_encoder, "--quiet", *extra]


def test_promptnet_shapes_and_save_pretrained_round_trip(tiny_model, tmp_path):
    from subjectgen.models import load_model

    unet = load_model(tiny_model).unet
    net = PromptNet.from_unet(unet, image_width=32, text_width=32, num_vectors=3)
    assert torch.equal(net.conv_in.weight, unet.conv_in.weight.float())  # the encoder half starts as the UNet's
    size, channels = unet.config.sample_size, unet.config.in_channels
    z, x = torch.randn(2, channels, size, size), torch.randn(2, channels, size, size)
    states = torch.randn(2, 5, 32)
    out = net(z, torch.tensor([10, 900]), states, x)
    assert out.shape == (2, 3, 32)
    assert torch.equal(out, net(z, torch.tensor([10, 900]), states, torch.zeros_like(x)))  # x_t's path starts at 0
    net.save_pretrained(tmp_path / "pn", safe_serialization=True)
    assert (tmp_path / "pn" / "diffusion_pytorch_model.safetensors").is_file()
    again = PromptNet.from_pretrained(str(tmp_path / "pn"), use_safetensors=True)
    assert torch.equal(again(z, torch.tensor([10, 900]), states, x), out)
    with torch.no_grad():  # a trained x_t path: S* follows x_t, unless the PromptNet reads the reference alone
        for p in net.noisy_embedding.parameters():
            p.normal_(0, 0.5)
    assert not torch.allclose(net(z, torch.tensor([10, 900]), states, x), out)
    clean = PromptNet.from_unet(unet, image_width=32, text_width=32, num_vectors=3, noisy_input=False)
    assert clean.noisy_embedding is None and not any("noisy" in k for k in clean.state_dict())
    s_star = clean(z, torch.tensor([10, 900]), states, x)
    assert torch.equal(s_star, clean(z, torch.tensor([10, 900]), states, 3 * torch.randn_like(x)))  # reference alone
    clean.save_pretrained(tmp_path / "clean", safe_serialization=True)
    loaded = PromptNet.from_pretrained(str(tmp_path / "clean"), use_safetensors=True)
    assert loaded.config.noisy_input is False and loaded.noisy_embedding is None
    assert torch.equal(loaded(z, torch.tensor([10, 900]), states, x), s_star)


def test_pretraining_changes_only_promptnet_and_its_loss_falls(tiny_model, image_encoder, subject_dir, tmp_path):
    from subjectgen.config import TrainConfig
    from subjectgen.training.loop import Trainer

    cfg = TrainConfig(method="profusion-pretrain", model=tiny_model, subject_dir=None, class_noun=None,
                      out=str(tmp_path / "pn"), images=str(subject_dir), image_encoder=image_encoder, steps=60,
                      batch_size=4, lr=1e-3)
    trainer = Trainer(cfg, progress=False)
    c = trainer.components

    def weights() -> dict:
        return {f"{name}.{k}": v.detach().clone() for name, module in
                (("unet", c.unet), ("text_encoder", c.text_encoder), ("vae", c.vae))
                for k, v in module.state_dict().items()}

    frozen = weights()
    first = trainer.method.promptnet.to_tokens.weight.detach().clone()
    trainer.run()
    now = weights()
    changed = [k for k in frozen if not torch.equal(frozen[k], now[k].to(frozen[k].dtype))]
    assert changed == []
    assert not torch.equal(first, trainer.method.promptnet.to_tokens.weight)
    rows = [float(r.split(",")[1]) for r in (tmp_path / "pn" / "loss.csv").read_text().splitlines()[1:]]
    assert sum(rows[-15:]) / 15 < sum(rows[:15]) / 15
    assert PromptNet.from_pretrained(str(tmp_path / "pn"), use_safetensors=True).config.num_vectors == 1


def test_fusion_with_no_stage_and_no_reference_guidance_is_plain_guidance_bit_for_bit(
        tiny_model, subject_dir, promptnet_dir, image_encoder, tmp_path):
    from subjectgen.adapters import load_run
    from subjectgen.sampling import FusionLoop, fresh_scheduler, initial_latents, sample

    assert main(tune_cmd(tiny_model, subject_dir, tmp_path / "run", promptnet_dir, image_encoder, "--steps", "2")) == 0
    run = load_run(tmp_path / "run")
    prompts = ["a <s*> on the beach", "a <s*> in the snow"]
    plain = run.stepwise_denoiser(prompts, "", 7.5, 0.0, None)
    noise = initial_latents(run.components, [0, 1])
    expected = sample(plain, fresh_scheduler(run.components, 6), noise)
    loop = FusionLoop(run.stepwise_denoiser(prompts, "", 7.5, 0.0, None), None, 0, 0.0)
    assert torch.equal(loop(fresh_scheduler(run.components, 6), noise, [0, 1]), expected)
    full = FusionLoop(run.stepwise_denoiser(prompts, "", 7.5, 5.0, "dog"),
                      run.stepwise_denoiser(prompts, "", 7.0, 0.0, None, 0.6), 1, 1.0)
    fused = full(fresh_scheduler(run.components, 6), noise, [0, 1])
    assert fused.shape == expected.shape and not torch.equal(fused, expected)
    assert torch.equal(fused, full(fresh_scheduler(run.components, 6), noise, [0, 1]))  # seeded: the same again


def test_a_tune_writes_its_run_and_generates_with_and_without_fusion(tiny_model, subject_dir, promptnet_dir,
                                                                      image_encoder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = tune_cmd(tiny_model, subject_dir, out, promptnet_dir, image_encoder, "--steps", "3", "--photo", "01.png",
                    "--validate-every", "3")
    assert main([a for a in argv if a != "--quiet"]) == 0
    assert "reference photo is 01.png" in capsys.readouterr().out
    assert (out / "validation" / "step-000003.png").is_file()
    manifest = json.loads((out / "subject.json").read_text())
    assert manifest["photo"] == "01.png" and manifest["subject"] == "<s*>"
    assert manifest["metrics"]["time_to_subject_seconds"] >= manifest["metrics"]["train_seconds"]
    assert {e["kind"] for e in manifest["assets"]} == {"model", "promptnet", "image_encoder"}
    attention = load_file(str(out / "unet_attention.safetensors"))
    assert attention and all(".attn" in k and k.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v") for k in attention)
    for extra, name in (([], "fused"), (["--no-fusion"], "plain"), (["--refine-steps", "2", "--eta", "0.5"], "two")):
        assert main(["generate", str(out), "a {subject} on the beach", "-n", "2", "--steps", "4", "--out",
                     str(tmp_path / name), "--quiet", *extra]) == 0
        assert len(list((tmp_path / name).glob("p00-*.png"))) == 2
    a, b = (torch.tensor(list(__import__("PIL.Image").Image.open(tmp_path / n / "p00-0.png").getdata()))
            for n in ("fused", "plain"))
    assert not torch.equal(a, b)


def test_steps_0_is_the_encoder_alone(tiny_model, subject_dir, promptnet_dir, image_encoder, tmp_path):
    out = tmp_path / "enc"
    assert main(tune_cmd(tiny_model, subject_dir, out, promptnet_dir, image_encoder, "--steps", "0")) == 0
    tuned = load_file(str(out / "promptnet" / "diffusion_pytorch_model.safetensors"))
    pretrained = load_file(str(Path(promptnet_dir) / "diffusion_pytorch_model.safetensors"))
    assert pretrained["to_tokens.weight"].dtype == torch.float16  # shipped in fp16, tuned in fp32
    assert tuned.keys() == pretrained.keys() and all(torch.equal(tuned[k], pretrained[k].float()) for k in tuned)


def test_the_s_star_file_loads_in_plain_diffusers(tiny_model, subject_dir, promptnet_dir, image_encoder, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "run"
    assert main(tune_cmd(tiny_model, subject_dir, out, promptnet_dir, image_encoder, "--steps", "1")) == 0
    vectors = load_file(str(out / "learned_embeds.safetensors"))["<s*>"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    token_id = pipe.tokenizer.convert_tokens_to_ids("<s*>")
    assert torch.allclose(pipe.text_encoder.get_input_embeddings().weight[token_id], vectors[0].to(torch.float32))
    image = pipe("a <s*> on the beach", num_inference_steps=2, height=32, width=32, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_a_tune_resumes_exactly_after_sigkill(tiny_model, subject_dir, promptnet_dir, image_encoder, tmp_path):
    def cmd(out, *extra):
        return [sys.executable, "-m", "subjectgen.cli", *tune_cmd(tiny_model, subject_dir, out, promptnet_dir,
                                                                   image_encoder, "--steps", "30",
                                                                   "--checkpoint-every", "10", *extra)]

    assert subprocess.run(cmd(tmp_path / "full"), capture_output=True, timeout=600).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-000010").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "subject.json").exists(), "the run finished before it could be killed"
    done = subprocess.run(cmd(out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ("promptnet/diffusion_pytorch_model.safetensors", "unet_attention.safetensors",
                 "learned_embeds.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (out / "loss.csv").read_text() == (tmp_path / "full" / "loss.csv").read_text()


def test_bad_input_is_a_one_line_error(capsys, tiny_model, subject_dir, promptnet_dir, image_encoder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (tune_cmd(tiny_model, empty, tmp_path / "a", promptnet_dir, image_encoder), "holds no"),
        (tune_cmd(tiny_model, subject_dir, tmp_path / "b", promptnet_dir, image_encoder, "--photo", "nope.png"),
         "--photo nope.png is not in the subject folder"),
        (tune_cmd(tiny_model, subject_dir, tmp_path / "c", str(tmp_path), image_encoder), "no PromptNet there"),
        (["train", "lora", "--subject", str(subject_dir), "--class", "dog", "--out", str(tmp_path / "d"),
          "--steps", "0"], "--steps: must be an integer >= 1"),
        (["train", "textual-inversion", "--subject", str(subject_dir), "--class", "dog", "--out", str(tmp_path / "e"),
          "--photo", "x.png"], "--photo is a flag of profusion"),
        (["profusion", "pretrain", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "f")],
         "is not a folder"),
        (["generate", promptnet_dir, "a {subject}", "--out", str(tmp_path / "g")], "is a pretrained PromptNet"),
        (["generate", tiny_model, "a dog", "--no-fusion", "--out", str(tmp_path / "i")],
         "--no-fusion applies to profusion runs"),
        (["bench", "--model", tiny_model, "--methods", "lora,profusion", "--train-steps", "0", "--out",
          str(tmp_path / "j")], "--train-steps 0: lora needs an integer >= 1"),
        (["generate", promptnet_dir.replace("promptnet", "nothing"), "a {subject}", "--refine-steps", "-1", "--out",
          str(tmp_path / "h")], "--refine-steps: must be an integer >= 0"),
    ]
    for argv, message in cases:
        assert exit_code(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not any((tmp_path / name / "run.json").exists() for name in "abcdef")
    assert not (tmp_path / "j").exists()


def exit_code(argv: list[str]) -> int:
    """main's exit code, also for argparse's errors (which exit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_a_promptnet_for_another_base_model_is_refused(capsys, tiny_model, subject_dir, promptnet_dir, image_encoder,
                                                       tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(promptnet_dir, other)
    record = json.loads((other / "subject.json").read_text())
    for entry in record["assets"]:
        if entry["kind"] == "model":
            entry["fingerprint"] = "0" * 16
    (other / "subject.json").write_text(json.dumps(record))
    assert main(tune_cmd(tiny_model, subject_dir, tmp_path / "run", str(other), image_encoder)) == 2
    err = capsys.readouterr().err
    assert "was pretrained for" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "run.json").exists()


def test_captions_put_s_star_in_the_class_nouns_place(capsys, tiny_model, subject_dir, image_encoder, tmp_path):
    from subjectgen.methods.profusion_pretrain import splice_noun

    assert splice_noun("a striped dog on the beach", "dog") == "a striped {token} on the beach"
    assert splice_noun("a stuffed animal with a red collar", "stuffed animal") == "a {token} with a red collar"
    assert splice_noun("a hotdog dog", "dog") == "a hotdog {token}"
    assert exit_code(["profusion", "pretrain", "--model", tiny_model, "--images", str(subject_dir), "--captions",
                      "--image-encoder", image_encoder, "--out", str(tmp_path / "p")]) == 2
    assert "--captions needs --images world" in capsys.readouterr().err
    assert not (tmp_path / "p" / "run.json").exists()


class IndexLatents:
    """A LatentCache stand-in whose 'latent' of image i is the number i."""

    def sample(self, index, generator):
        return index.float().reshape(-1, 1, 1, 1)


def test_instance_references_draw_another_image_of_the_same_identity(capsys, tiny_model, image_encoder, tmp_path):
    from conftest import draw_subject

    from subjectgen.methods.profusion import ReferenceViews
    from subjectgen.methods.profusion_pretrain import identity_groups

    groups = identity_groups(["a", "b", "a", "c", "b", "a"])
    assert groups.tolist() == [0, 1, 0, 2, 1, 0]
    views = ReferenceViews(IndexLatents(), torch.arange(6.0).reshape(6, 1, 1), groups=groups)
    target, reference, states, index = views.draw(600, torch.Generator().manual_seed(0))
    target, reference = target.flatten().long(), reference.flatten().long()
    assert torch.equal(target, index) and torch.equal(states.flatten().long(), reference)
    assert torch.equal(groups[reference], groups[target])
    alone = target == 3  # the only image of its identity is its own reference
    assert torch.equal(reference[alone], target[alone]) and bool((reference[~alone] != target[~alone]).all())
    assert {(t, r) for t, r in zip(target.tolist(), reference.tolist())} == {
        (0, 2), (0, 5), (2, 0), (2, 5), (5, 0), (5, 2), (1, 4), (4, 1), (3, 3)}
    views.groups = None  # the paper's pretraining: reference = target
    target, reference, _, _ = views.draw(8, torch.Generator().manual_seed(0))
    assert torch.equal(target, reference)

    images = tmp_path / "identities"
    for who in ("a", "b"):
        for i in range(2):
            (images / who).mkdir(parents=True, exist_ok=True)
            draw_subject(images / who / f"{i}.png", shift=i + (3 if who == "b" else 0))
    out = tmp_path / "pn"
    assert main(["profusion", "pretrain", "--model", tiny_model, "--images", str(images), "--references", "instance",
                 "--steps", "2", "--batch-size", "2", "--image-encoder", image_encoder, "--out", str(out)]) == 0
    assert "each reference is an image of the target's identity (2 identities)" in capsys.readouterr().out
    assert json.loads((out / "subject.json").read_text())["references"] == "instance"
    flat = tmp_path / "flat"  # images directly in the folder: each its own identity, so nothing to pair
    flat.mkdir()
    for i in range(3):
        draw_subject(flat / f"{i}.png", shift=i)
    assert exit_code(["profusion", "pretrain", "--model", tiny_model, "--images", str(flat), "--references",
                      "instance", "--image-encoder", image_encoder, "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "--references instance needs --images" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()


def test_the_shipped_promptnet_was_pretrained_for_the_shipped_model_and_encoder_by_its_command():
    """The built-in PromptNet's record (its subject.json, shipped as training.json) names the shipped base model and
    image encoder by fingerprint, and settings `subjectgen profusion pretrain` reproduces (docs/RESULTS.md)."""
    from subjectgen import assets
    from subjectgen.config import TrainConfig

    record = json.loads((assets.PROMPTNET / "training.json").read_text())
    prints = {e["kind"]: e for e in record["assets"]}
    assert prints["model"]["fingerprint"] == assets.fingerprint("model", "builtin")
    assert prints["image_encoder"]["fingerprint"] == assets.fingerprint("image_encoder", "builtin")
    assert record["method"] == "profusion-pretrain" and record["images"] > 1000 and record["resumes"] is not None
    settings = record["settings"]
    defaults = TrainConfig(method="profusion-pretrain", subject_dir=None, class_noun=None, out="unused")
    assert settings["images"] in (None, "world") and settings["model"] == "builtin"
    assert settings["num_vectors"] == json.loads((assets.PROMPTNET / "config.json").read_text())["num_vectors"]
    assert record.get("references", "self") in ("self", "instance")
    assert {k: settings[k] for k in ("seed", "max_grad_norm", "lr_warmup_steps")} == {
        k: getattr(defaults, k) for k in ("seed", "max_grad_norm", "lr_warmup_steps")}
