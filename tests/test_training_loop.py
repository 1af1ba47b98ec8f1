"""The shared loop: exact resume after SIGKILL, NaN guard, class-image cache, DDP on 2 CPU processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from subjectgen import TrainConfig, train
from subjectgen.errors import TrainingDiverged

CLI = [sys.executable, "-m", "subjectgen.cli"]


def train_cmd(model, photos, out, *extra):
    return CLI + ["train", "lora", "--model", model, "--subject", str(photos), "--class", "dog", "--out", str(out),
                  "--quiet", *extra]


def run_cli(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


def kill_after_checkpoint(cmd: list[str], out, step: int) -> None:
    """Start a training command and SIGKILL it as soon as its checkpoint of `step` is on disk (before it ends)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / f"step-{step:06d}").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "subject.json").exists(), "the run finished before it could be killed"


def killed_and_resumed(model, photos, tmp_path, flags: list[str], step: int):
    """`train lora` with `flags` twice: uninterrupted into full/, and SIGKILLed after its checkpoint of `step`,
    then resumed, into killed/. Returns the two run folders."""
    full, out = tmp_path / "full", tmp_path / "killed"
    done = run_cli(train_cmd(model, photos, full, *flags))
    assert done.returncode == 0, done.stderr
    kill_after_checkpoint(train_cmd(model, photos, out, *flags), out, step)
    resumed = run_cli(train_cmd(model, photos, out, *flags, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    return full, out


def same_tensors(a_file, b_file) -> bool:
    a, b = load_file(str(a_file)), load_file(str(b_file))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_optimizer_state_with_a_dict_in_a_slot_round_trips_through_the_checkpoint_files():
    from subjectgen.training.checkpoints import flatten_optimizer, unflatten_optimizer

    state = {"state": {0: {"step": 3, "quant": {"state1": torch.arange(4, dtype=torch.uint8), "qmap1": torch.ones(2)}},
                       1: {"step": torch.tensor(2.0), "exp_avg": torch.zeros(3)}},
             "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    tensors, meta = flatten_optimizer(state)
    assert set(tensors) == {"0.quant.state1", "0.quant.qmap1", "1.step", "1.exp_avg"}
    back = unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    assert back["state"][0]["step"] == 3 and torch.equal(back["state"][0]["quant"]["state1"], torch.arange(4))
    assert torch.equal(back["state"][1]["exp_avg"], torch.zeros(3)) and back["param_groups"] == state["param_groups"]


def test_adamw8bit_state_of_full_size_layers_goes_through_a_checkpoint(tmp_path):
    """bitsandbytes' 8-bit moments (parameters of 4096 values or more: every real model's) share one quantization map
    between parameters, which safetensors refuses to write twice from one storage."""
    bitsandbytes = pytest.importorskip("bitsandbytes")
    from subjectgen.training.checkpoints import load_checkpoint, save_checkpoint

    def stepped(weights, optimizer, steps):
        for k in range(steps):
            for w in weights:
                w.grad = torch.full_like(w, 0.1 * (k + 1))
            optimizer.step()

    weights = [torch.nn.Parameter(torch.linspace(-1, 1, 4096).view(64, 64)) for _ in range(2)]
    optimizer = bitsandbytes.optim.AdamW8bit(weights, lr=1e-2)
    stepped(weights, optimizer, 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder = save_checkpoint(tmp_path, 2, {}, optimizer, scheduler, torch.zeros(1, 2))
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    resumed = bitsandbytes.optim.AdamW8bit(copies, lr=1e-2)
    resumed.load_state_dict(load_checkpoint(folder)["optimizer"])
    stepped(weights, optimizer, 1)
    stepped(copies, resumed, 1)
    assert all(torch.equal(a, b) for a, b in zip(weights, copies))


def test_adamw8bit_trains_and_resumes_after_sigkill_exactly(tiny_model, subject_dir, tmp_path):
    """bitsandbytes' 8-bit AdamW on the CPU (its CPU kernels: the tested 0.50.2): its state, a dict inside each
    parameter's (it failed to save before), goes through the checkpoint and back."""
    pytest.importorskip("bitsandbytes")
    full, out = killed_and_resumed(tiny_model, subject_dir, tmp_path, ["--steps", "40", "--checkpoint-every", "10",
                                                                       "--optimizer", "adamw8bit"], 20)
    assert same_tensors(full / "pytorch_lora_weights.safetensors", out / "pytorch_lora_weights.safetensors")
    state = load_file(str(next((out / "checkpoints").iterdir()) / "optimizer.safetensors"))
    assert any(".__bnb_optimizer_quant_state__.state1" in key for key in state)  # (tiny layers keep 32-bit moments)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_model, subject_dir, tmp_path):
    common = ["--steps", "160", "--checkpoint-every", "20", "--prior-preservation", "--num-class-images", "4"]
    full, out = killed_and_resumed(tiny_model, subject_dir, tmp_path, common, 40)
    name = "pytorch_lora_weights.safetensors"
    assert same_tensors(full / name, out / name)
    rows = (out / "loss.csv").read_text().splitlines()
    assert len(rows) == 161 and rows == (full / "loss.csv").read_text().splitlines()
    assert len(list((out / "checkpoints").iterdir())) <= 2  # old checkpoints pruned


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_model, subject_dir, tmp_path):
    cfg = TrainConfig(method="lora", model=tiny_model, subject_dir=str(subject_dir), class_noun="dog",
                      out=str(tmp_path / "nan"), steps=50, lr=1e12, checkpoint_every=1, max_grad_norm=0)
    with pytest.raises(TrainingDiverged, match="loss became") as err:
        train(cfg, progress=False)
    assert "last good checkpoint" in str(err.value)
    checkpoints = sorted((tmp_path / "nan" / "checkpoints").iterdir())
    assert checkpoints and all(torch.isfinite(t).all() for t in
                               load_file(str(checkpoints[-1] / "trainable.safetensors")).values())
    assert not (tmp_path / "nan" / "subject.json").exists()


def test_class_images_are_cached_and_reused(tiny_model, subject_dir, tmp_path, cache_root):
    def run(name):
        cfg = TrainConfig(method="lora", model=tiny_model, subject_dir=str(subject_dir), class_noun="cat",
                          out=str(tmp_path / name), steps=2, prior_preservation=True, num_class_images=3, seed=7)
        return train(cfg, progress=False)

    run("a")
    folders = [p for p in (cache_root / "class_images").iterdir() if json.loads(
        (p / "done.json").read_text())["prompt"] == "a cat"]
    assert len(folders) == 1 and len(list(folders[0].glob("*.png"))) == 3
    stamp = (folders[0] / "0000.png").stat().st_mtime_ns
    run("b")
    assert (folders[0] / "0000.png").stat().st_mtime_ns == stamp  # reused, not regenerated


def test_ddp_on_two_cpu_processes(tiny_model, subject_dir, tmp_path):
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "subjectgen.cli"]
    args = train_cmd(tiny_model, subject_dir, out, "--steps", "6", "--checkpoint-every", "3")[3:]
    result = run_cli(launch + args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "subject.json").read_text())
    assert manifest["metrics"]["world_size"] == 2
    generators = load_file(str(out / "checkpoints" / "step-000003" / "rng.safetensors"))["generators"]
    assert generators.shape[0] == 2 and not torch.equal(generators[0], generators[1])  # each rank its own data
    assert load_file(str(out / "pytorch_lora_weights.safetensors"))


def test_latent_cache_draws_each_latent_with_its_own_mask(tiny_model):
    from PIL import Image

    from subjectgen.training.data import LatentCache
    from subjectgen.models import load_model

    components = load_model(tiny_model)
    size = components.resolution
    images = [Image.new("RGB", (size, size), color) for color in ("red", "green", "blue")]
    masks = []
    for i in range(3):
        mask = Image.new("L", (size, size), 0)  # image i: the top (i+1)/4 is the subject
        mask.paste(255, (0, 0, size, size * (i + 1) // 4))
        masks.append(mask)
    cache = LatentCache(components, images, masks)
    (group,) = cache.groups.values()
    assert group.masks.shape[-2:] == group.mean.shape[-2:]
    assert torch.allclose(group.masks.mean(dim=(1, 2, 3)), torch.tensor([0.25, 0.5, 0.75]))
    group.std.zero_()  # each drawn latent is then exactly its image's mean
    drawn = cache.draw(12, torch.Generator().manual_seed(0))
    assert drawn.conditioning == {}  # SD conditions on nothing per image
    for latent, mask in zip(drawn.latents, drawn.masks):
        index = int(((group.mean * cache.scale - latent) ** 2).flatten(1).sum(1).argmin())
        assert torch.equal(mask, group.masks[index])
    assert LatentCache(components, images).draw(2, torch.Generator()).masks is None


def test_lora_frees_the_networks_it_trains_past_and_learns_the_same(tiny_sdxl_model, subject_dir, tmp_path):
    """LoRA steps read cached latents and prompts: the VAE and the frozen text encoders are freed (left on the meta
    device) before the first step; a trained text encoder stays, and so does everything when validation grids will
    sample. The weights learned are the same either way."""
    from subjectgen.training.loop import Trainer
    from subjectgen.training.outdir import release

    cases = {"freed": ({}, {"vae", "text_encoder", "text_encoder_2"}),
             "validated": ({"validate_every": 100}, set()),
             "text-encoder": ({"train_text_encoder": True}, {"vae"})}
    for name, (extra, freed) in cases.items():
        trainer = Trainer(TrainConfig(method="lora", model=tiny_sdxl_model, subject_dir=str(subject_dir),
                                      class_noun="dog", out=str(tmp_path / name), steps=3, prior_preservation=True,
                                      num_class_images=2, **extra), progress=False)
        try:
            on_meta = {n for n in ("vae", "text_encoder", "text_encoder_2", "unet")
                       if next(trainer.components.parts[n].parameters()).is_meta}
            assert on_meta == freed, name
            trainer.run()
        finally:
            release(trainer.out)
    weights = "pytorch_lora_weights.safetensors"
    assert same_tensors(tmp_path / "freed" / weights, tmp_path / "validated" / weights)
