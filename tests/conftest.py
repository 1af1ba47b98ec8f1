"""Shared fixtures: a tiny SD pipeline saved once per session, a subject folder, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    os.environ["SUBJECTGEN_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, cache_root) -> str:
    from subjectgen.tiny import save_tiny_pipeline

    return str(save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd"))


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
