"""The model-family axis: a family registered from outside the package trains, saves, loads and generates with no
other edit; the family-independent modules name no family's classes."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from subjectgen import backbones, load_model, load_run
from subjectgen.backbones.sd import StableDiffusion
from subjectgen.cli import main
from subjectgen.sampling import generate
from subjectgen.world.build import EMOJIBENCH

SRC = Path(__file__).resolve().parents[1] / "src" / "subjectgen"


@dataclass(frozen=True)
class ClipSkipFamily(StableDiffusion):
    """A toy family: SD's networks under its own pipeline class, conditioned on the text encoder's penultimate
    layer (clip skip 2, as some SD 1.x fine-tunes expect) instead of the last."""

    name: str = "toy-clip-skip"
    title: str = "a toy clip-skip family"
    pipeline_classes: tuple[str, ...] = ("ToyClipSkipPipeline",)
    refusals: dict = field(default_factory=dict)

    def encode_text(self, c, prompts, text_encoders=None):
        encoder = (text_encoders or c.text_encoders)[0]
        ids = c.tokenizer(prompts, padding="max_length", max_length=c.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
        return {"encoder_hidden_states": encoder(ids.to(encoder.device), output_hidden_states=True).hidden_states[-2]}


@pytest.fixture
def toy_family(tiny_model, tmp_path):
    backbones.register(ClipSkipFamily())
    folder = tmp_path / "toy-model"
    shutil.copytree(tiny_model, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "ToyClipSkipPipeline"}))
    yield folder
    backbones.unregister("toy-clip-skip")


def test_a_family_registered_in_a_test_trains_saves_loads_and_generates(toy_family, tiny_model, tmp_path, capsys):
    components = load_model(str(toy_family))
    assert components.backbone.name == "toy-clip-skip"
    cond = components.backbone.encode_text(components, ["a dog"])["encoder_hidden_states"]
    plain = load_model(tiny_model)
    assert not torch.equal(cond, plain.backbone.encode_text(plain, ["a dog"])["encoder_hidden_states"])
    run = tmp_path / "run"
    assert main(["train", "lora", "--model", str(toy_family), "--subject", str(EMOJIBENCH / "dog"), "--class", "dog",
                 "--out", str(run), "--steps", "3", "--quiet"]) == 0
    loaded = load_run(run)
    assert loaded.components.backbone.name == "toy-clip-skip"
    prompt = loaded.prompt_for_model("a {subject}")
    ours = np.asarray(generate(loaded.components, [prompt], [0], steps=3)[0])
    base = np.asarray(generate(components, [prompt], [0], steps=3)[0])
    assert ours.shape == (16, 16, 3) and np.abs(ours.astype(int) - base).max() > 0
    assert main(["generate", str(run), "a {subject} on the beach", "-n", "1", "--steps", "3",
                 "--out", str(tmp_path / "images")]) == 0
    assert len(list((tmp_path / "images").glob("*.png"))) >= 1


FAMILY_CLASSES = re.compile(r"\b(UNet2DConditionModel|\w*Transformer2DModel|CLIPTextModel\w*|CLIPTokenizer|T5\w*Model|"
                            r"StableDiffusion\w*Pipeline|Flux\w*Pipeline|AutoencoderKL\w*)\b")
FAMILY_INDEPENDENT = ["training/loop.py", "training/data.py", "training/losses.py", "sampling.py", "generation.py",
                      "adapters.py", "models.py", "methods/base.py", "methods/dreambooth.py",
                      "methods/textual_inversion.py", "eval/bench.py"]


@pytest.mark.parametrize("module", FAMILY_INDEPENDENT)
def test_family_independent_modules_name_no_familys_classes(module):
    code = "\n".join(line for line in (SRC / module).read_text().splitlines() if not line.lstrip().startswith("#"))
    assert FAMILY_CLASSES.findall(code) == [], f"{module} names a family's classes; that belongs in backbones/"


@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl_model"])
def test_8bit_adamw_without_bitsandbytes_is_refused_in_one_line_before_any_file(request, model, tmp_path, capsys,
                                                                               monkeypatch):
    from subjectgen.training import quantize

    monkeypatch.setattr(quantize, "installed", lambda package: False)
    out, model = tmp_path / "run", request.getfixturevalue(model)
    capsys.readouterr()  # the fixture's own output, if it was made just now
    assert main(["train", "lora", "--model", model, "--subject", str(EMOJIBENCH / "dog"),
                 "--class", "dog", "--out", str(out), "--optimizer", "adamw8bit", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes" in err
    assert not out.exists()


@pytest.mark.parametrize("model, class_name, words", [
    ("tiny_flux_model", "FluxFillPipeline", "FLUX.1 Fill"),
    ("tiny_flux_model", "FluxKontextPipeline", "FLUX.1 Kontext"),
    ("tiny_flux_model", "FluxPriorReduxPipeline", "FLUX.1 Redux"),
    ("tiny_flux2_model", "Flux2Pipeline", "FLUX.2 [dev]"),
    ("tiny_flux2_model", "Flux2KleinInpaintPipeline", "inpainting")])
def test_a_familys_look_alikes_are_refused_in_one_line(request, tmp_path, capsys, model, class_name, words):
    """A family's pipeline variant that is not text-to-image training (fill, edit, redux, another FLUX.2): named."""
    from subjectgen.world.build import EMOJIBENCH

    from test_methods import refused, with_pipeline_class

    folder = with_pipeline_class(request.getfixturevalue(model), tmp_path, class_name)
    capsys.readouterr()  # the fixture's own output, if it was made just now
    out = tmp_path / "run"
    err = refused(capsys, ["train", "lora", "--model", str(folder), "--subject", str(EMOJIBENCH / "dog"),
                           "--class", "dog", "--out", str(out), "--quiet"])
    assert words in err and not out.exists()
