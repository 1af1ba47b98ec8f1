"""Shared fixtures: a tiny SD pipeline saved once per session, a subject folder, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# one bench / farm process unless a test asks for more (--workers auto would launch one per core)
os.environ["SUBJECTGEN_WORKERS"] = "1"


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    os.environ["SUBJECTGEN_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, cache_root) -> str:
    from subjectgen.tiny import save_tiny_pipeline

    return str(save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory, cache_root) -> str:
    from subjectgen.tiny import save_tiny_sdxl_pipeline

    return str(save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_flux_model(tmp_path_factory, cache_root) -> str:
    from subjectgen.tiny import save_tiny_flux_pipeline

    return str(save_tiny_flux_pipeline(tmp_path_factory.mktemp("models") / "tiny-flux"))


@pytest.fixture(scope="session")
def tiny_flux2_model(tmp_path_factory, cache_root) -> str:
    from subjectgen.tiny import save_tiny_flux2_klein_pipeline

    return str(save_tiny_flux2_klein_pipeline(tmp_path_factory.mktemp("models") / "tiny-flux2"))


@pytest.fixture(scope="session")
def evaluator_dirs(tmp_path_factory) -> tuple[str, str]:
    """Tiny real transformers models in the layout of facebook/dino-vits16 and openai/clip-vit-base-patch32."""
    import torch
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    from subjectgen.tiny import clip_tokenizer

    root = tmp_path_factory.mktemp("evaluators")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(root / "dino")
    clip = CLIPModel(CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2}, projection_dim=16))
    clip.save_pretrained(root / "clip")
    clip_tokenizer().save_pretrained(root / "clip")
    return str(root / "dino"), str(root / "clip")


def draw_subject(path: Path, shift: int = 0, size=(40, 32)) -> None:
    image = Image.new("RGB", size, (190, 215, 250))
    draw = ImageDraw.Draw(image)
    draw.ellipse((6 + shift, 4, 28 + shift, 28), fill=(210, 50, 40))
    draw.rectangle((14 + shift, 12, 20 + shift, 18), fill=(250, 230, 30))
    image.save(path)


@pytest.fixture
def subject_dir(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        draw_subject(folder / f"{i:02d}.png", shift=2 * i)
    return folder


def pytest_terminal_summary(terminalreporter):
    """How many CLI invocations the fuzz suite generated, for the record."""
    import sys

    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None:
        terminalreporter.write_line(f"fuzz: {next(fuzz.RUN_COUNT)} generated CLI invocations, by exit code "
                                    f"{dict(sorted(fuzz.OUTCOMES.items()))}")
