"""The architecture's proofs: a method registered in a few lines (here, BitFit: only the UNet's biases train)
trains, saves, loads, generates and is benchmarked through the CLI with no edit elsewhere; the denoiser path
equals plain guidance bit for bit; flags of another method are refused; a changed base model is refused."""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from subjectgen.cli import main
from subjectgen.methods import MethodSpec, registry
from subjectgen.methods.base import Method
from subjectgen.world.build import EMOJIBENCH
from subjectgen.world.emoji import sources_available

from test_bench import bench_args
from test_cli import error_of, train_args


class BitFit(Method):
    """Zaken et al. 2022's BitFit as a personalization method: a rare identifier, only the UNet's biases train."""

    def choose_token(self) -> str:
        from subjectgen.subjects import rare_token

        return rare_token(self.components.tokenizer, avoid={self.subject.class_noun})

    def setup(self) -> None:
        for name, p in self.components.unet.named_parameters():
            p.requires_grad_(name.endswith(".bias"))
        self.components.unet.train()

    def save(self, run_dir: Path) -> list[str]:
        from subjectgen.safeio import atomic_save_safetensors

        biases = {n: p for n, p in self.components.unet.named_parameters() if n.endswith(".bias")}
        atomic_save_safetensors(run_dir / "unet_biases.safetensors", biases)
        return ["unet_biases.safetensors"]

    @classmethod
    def load_run(cls, run_dir, manifest, allow_pickle, lora_scale):
        from subjectgen.adapters import Run
        from subjectgen.models import load_model

        components = load_model(manifest["model"], allow_pickle)
        components.unet.load_state_dict(load_file(str(run_dir / "unet_biases.safetensors")), strict=False)
        return Run(manifest, components)

    @classmethod
    def base_networks(cls, run):
        base = run.base_model()
        return base.unet, [base.text_encoder], nullcontext


@pytest.fixture
def bitfit():
    registry.register(MethodSpec("bitfit", "tune only the UNet's biases", BitFit,
                                 defaults={"steps": (200, 3), "lr": (1e-4, 1e-3)}))
    yield
    registry.unregister("bitfit")


def test_a_registered_method_trains_loads_generates_and_benches_through_the_cli(bitfit, tiny_model, evaluator_dirs,
                                                                                tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "bitfit", "--model", tiny_model, "--subject", str(EMOJIBENCH / "dog"), "--class", "dog",
            "--out", str(run), "--quiet", "--checkpoint-every", "2"]
    assert main(argv) == 0
    manifest = json.loads((run / "subject.json").read_text())
    assert manifest["method"] == "bitfit" and manifest["settings"]["steps"] == 3  # its own default, small model
    trained = load_file(str(run / "unet_biases.safetensors"))
    base = load_file(str(Path(tiny_model) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(trained[k], base[k].float()) for k in trained)
    assert "--rank is a flag of lora" in error_of(capsys, argv[:-2] + ["--rank", "8"])
    out = tmp_path / "images"
    assert main(["generate", str(run), "a {subject} on the beach", "-n", "1", "--steps", "3", "--subject-start",
                 "0.4", "--out", str(out)]) == 0
    assert (out / "grid.png").is_file()
    bench = tmp_path / "bench"
    assert main(bench_args(tiny_model, evaluator_dirs, bench, methods="bitfit")) == 0
    results = json.loads((bench / "results.json").read_text())
    references = ["oracle", "baseline"] + (["perfect"] if sources_available() else [])
    assert set(results["summary"]) == {*references, "bitfit"} and results["pairs"]["bitfit"]["dog"]["dino"]
    first_table = (bench / "table.md").read_text().split("\n\n")[0]  # then the notes and the per-type table
    rows = [line.split("|")[1].strip() for line in first_table.splitlines()[2:] if line.startswith("|")]
    assert rows == [*references, "bitfit"]  # the report orders methods as the registry does


def test_switch_at_zero_equals_plain_guidance_bit_for_bit(tiny_model):
    from subjectgen.models import load_model
    from subjectgen.backbones.sd import encode_prompts
    from subjectgen.sampling import (EarlySteps, cfg_denoiser, fresh_scheduler, generate,
                                     initial_latents, sample, switch_at)

    c = load_model(tiny_model)
    cond = encode_prompts(c.tokenizer, c.text_encoder, ["a dog"])
    uncond = encode_prompts(c.tokenizer, c.text_encoder, [""])
    plain = cfg_denoiser(c.unet, {"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond}, 7.5)
    never = cfg_denoiser(c.unet, {"encoder_hidden_states": uncond}, {"encoder_hidden_states": cond}, -3.0)
    noise = initial_latents(c, [3])
    a = sample(plain, fresh_scheduler(c, 6), noise)
    assert torch.equal(sample(switch_at(0, never, plain), fresh_scheduler(c, 6), noise), a)
    assert not torch.equal(sample(switch_at(2, never, plain), fresh_scheduler(c, 6), noise), a)
    # and generate() with an early phase of 0 steps is generate() without one
    early = EarlySteps(0, ["a cat"], c.unet, [c.text_encoder])
    images = [np.asarray(im) for im in generate(c, ["a dog"], [3], steps=6, early=early)]
    assert np.array_equal(images[0], np.asarray(generate(c, ["a dog"], [3], steps=6)[0]))


def test_a_run_whose_base_model_changed_is_refused_and_an_older_run_still_loads(tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    run = tmp_path / "run"
    assert main(train_args(model, EMOJIBENCH / "dog", run)) == 0
    manifest = json.loads((run / "subject.json").read_text())
    assert manifest["assets"][0]["kind"] == "model" and len(manifest["assets"][0]["fingerprint"]) == 16
    generate = ["generate", str(run), "a {subject}", "-n", "1", "--steps", "2", "--out", str(tmp_path / "g")]
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(weights))
    err = error_of(capsys, generate)
    assert "whose files have changed since" in err and str(model) in err
    del manifest["assets"]  # a run from before assets were recorded: nothing to check, it loads
    (run / "subject.json").write_text(json.dumps(manifest))
    assert main(generate) == 0


def test_a_flag_of_another_method_is_a_one_line_error(capsys, tmp_path):
    common = ["--subject", "p", "--class", "dog", "--out", str(tmp_path / "o")]
    err = error_of(capsys, ["train", "textual-inversion", "--rank", "16", *common])
    assert "--rank is a flag of lora, not of textual-inversion" in err
    err = error_of(capsys, ["train", "dreambooth", "--num-vectors=2", *common])
    assert "--num-vectors is a flag of textual-inversion" in err
    assert "unknown flag --bogus (see 'subjectgen train lora --help')" in error_of(capsys, ["train", "lora", "--bogus",
                                                                                        *common])
    assert not (tmp_path / "o").exists()
