"""The HTML reports in a real headless browser (Debian's Chromium; CI installs it): they render, their images
load, and every link and image path points at a file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subjectgen.cli import main
from subjectgen.world.build import EMOJIBENCH

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (CI installs Debian's chromium)")
WIDTH, HEIGHT = 1200, 1400


def screenshot(page: Path, png: Path) -> np.ndarray:
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--allow-file-access-from-files", f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={png}",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=180)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def local_references(page: Path) -> list[Path]:
    text = page.read_text()
    refs = re.findall(r"(?:src|href)='([^']+)'", text)
    return [(page.parent / r).resolve() for r in refs if not r.startswith(("http", "#"))]


@pytest.fixture(scope="module")
def bench_report(tiny_model, evaluator_dirs, tmp_path_factory) -> Path:
    dino, clip = evaluator_dirs
    out = tmp_path_factory.mktemp("browser") / "bench"
    assert main(["bench", "--bench", str(EMOJIBENCH), "--model", tiny_model, "--methods", "lora", "--out", str(out),
                 "--dino", dino, "--clip", clip, "--quiet", "--subjects", "dog,teapot", "--prompts", "2",
                 "--images-per-prompt", "2", "--train-steps", "2"]) == 0
    return out


def test_every_image_and_link_of_the_reports_is_a_file(bench_report):
    pages = [bench_report / "report.html", *sorted((bench_report / "subjects").glob("*.html"))]
    assert len(pages) == 3
    for page in pages:
        refs = local_references(page)
        assert refs and all(r.is_file() for r in refs), [r for r in refs if not r.is_file()]
    text = (bench_report / "subjects" / "dog.html").read_text()
    assert "a dog in the jungle" in text and "lora · seed 1" in text and "photo 1" in text
    assert "higher is better" in (bench_report / "report.html").read_text()


@needs_browser
def test_the_bench_report_renders_with_its_images_in_chromium(bench_report, tmp_path):
    page = screenshot(bench_report / "report.html", tmp_path / "report.png")
    assert page.shape == (HEIGHT, WIDTH, 3)
    assert (np.abs(page - page[0, 0]).sum(-1) > 30).mean() > 0.05  # text, tables and pictures, not a blank page
    bare = tmp_path / "bare"
    shutil.copytree(bench_report, bare)
    for png in bare.rglob("*.png"):
        png.unlink()  # the same page with every image missing must look different: the images are drawn
    without = screenshot(bare / "report.html", tmp_path / "bare.png")
    assert (np.abs(page - without).sum(-1) > 30).mean() > 0.01
    subject = screenshot(bench_report / "subjects" / "dog.html", tmp_path / "dog.png")
    assert (np.abs(subject - subject[0, 0]).sum(-1) > 30).mean() > 0.05
