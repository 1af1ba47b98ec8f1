"""DreamBench's metrics against hand computations; the prompt file parsed exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from subjectgen.eval.metrics import load_evaluators, mean_cosine_to_references, oracle_scores, score_images
from subjectgen.eval.prompts import read_benchmark

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dreambench"


def test_mean_cosine_to_every_reference_by_hand():
    generated = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    refs = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # image 0: cos(0°)=1, cos(45°)=0.7071 -> 0.8536; image 1: cos(90°)=0, cos(45°) -> 0.3536
    assert torch.allclose(mean_cosine_to_references(generated, refs), torch.tensor([0.85355, 0.35355]), atol=1e-4)


def test_oracle_leaves_self_pairs_out():
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: (0,1)=0, (0,2)=0.7071, (1,2)=0.7071, each counted twice, over 6 ordered pairs
    assert oracle_scores(refs) == pytest.approx(2 * 0.70711 / 3, abs=1e-4)


class FixedEmbeddings:
    """An evaluator whose DINO embedding of an image is a fixed vector, looked up by the image's colour: the hand
    computations below need known embeddings."""

    def __init__(self, vectors: dict[tuple, list[float]]):
        self.vectors = vectors

    def dino_embed(self, images):
        return torch.tensor([self.vectors[im.getpixel((0, 0))] for im in images])


def test_pres_and_div_match_a_hand_computation():
    from subjectgen.eval.metrics import diversity, prior_preservation

    colours = {(255, 0, 0): [1.0, 0.0], (0, 255, 0): [0.0, 1.0], (0, 0, 255): [1.0, 1.0], (9, 9, 9): [3.0, 0.0]}
    ev = FixedEmbeddings(colours)
    red, green, blue, grey = (Image.new("RGB", (8, 8), c) for c in colours)
    # PRES: each class image against every photo (red, blue), averaged: green (0 + 0.7071) / 2, grey (1 + 0.7071) / 2
    pres = prior_preservation(ev, [green, grey], [red, blue])
    assert pres["per_image"] == pytest.approx([0.35355, 0.85355], abs=1e-4)
    assert pres["pres"] == pytest.approx(0.60355, abs=1e-4)
    # DIV: 1 - the mean cosine over the pairs of distinct images: (red, green) 0, (red, blue) and (green, blue) 0.7071
    assert diversity(ev.dino_embed([red, green, blue])) == pytest.approx(1 - 2 * 0.70711 / 3, abs=1e-4)
    assert diversity(ev.dino_embed([red, grey])) == pytest.approx(0.0, abs=1e-6)  # the same direction: no diversity
    assert diversity(ev.dino_embed([red])) is None  # one image has no pairs


def test_pres_and_div_average_per_subject_then_over_subjects():
    from subjectgen.eval.report import summarize, table

    pairs = {"dog": {"dino": 0.5, "clip_i": 0.5, "clip_t": 0.3, "pres": 0.40, "div": 0.10, "train_seconds": 1.0,
                     "generate_seconds": 1.0},
             "can": {"dino": 0.5, "clip_i": 0.5, "clip_t": 0.3, "pres": 0.60, "div": 0.30, "train_seconds": 1.0,
                     "generate_seconds": 1.0}}
    summary = summarize("lora", pairs)
    assert summary["pres"] == pytest.approx(0.5) and summary["div"] == pytest.approx(0.2)
    text = table({"lora": summary})
    assert "| PRES ↓ | DIV ↑ |" in text and "| 0.500 | 0.200 |" in text and "LPIPS" in text


def test_every_dreambench_prompt_is_in_exactly_one_type(tmp_path):
    """DreamBench's object list: 20 scenes, then 5 property changes; its live list: 10 scenes, 10 outfits, 5
    property changes (the paper's three kinds, in the file's order); the world's contexts by their own kind."""
    import shutil

    from subjectgen.eval.prompts import PROMPT_TYPES, prompt_type
    from subjectgen.world.build import PROMPTS_FILE
    from subjectgen.world.catalog import EDITS, OUTFITS, SCENES, caption

    shutil.copy(PROMPTS_FILE, tmp_path / "prompts_and_classes.txt")
    bench = read_benchmark(tmp_path)
    objects, live = bench.prompts_for("backpack"), bench.prompts_for("dog")
    recontext, accessorize, change = PROMPT_TYPES
    assert [prompt_type(p) for p in objects] == [recontext] * 20 + [change] * 5
    assert [prompt_type(p) for p in live] == [recontext] * 10 + [accessorize] * 10 + [change] * 5
    world = {kind: [caption("{subject}", c) for c in contexts]
             for kind, contexts in zip(PROMPT_TYPES, (SCENES, OUTFITS, EDITS))}
    assert {kind: {prompt_type(p) for p in prompts} for kind, prompts in world.items()} == \
        {kind: {kind} for kind in PROMPT_TYPES}
    assert set(objects) | set(live) <= {p for prompts in world.values() for p in prompts}  # one kind each
    from subjectgen.training.evaluation import default_eval_prompts

    assert [prompt_type(p) for p in default_eval_prompts("dog")] == list(PROMPT_TYPES)  # eval: one prompt per type


def test_scores_per_prompt_type_average_per_subject_then_over_subjects():
    from subjectgen.eval.report import by_prompt_type

    def prompt(template, dino):
        return {"template": template, "dino": dino, "clip_i": dino, "clip_t": dino}

    dog = {"prompts": [prompt("a {subject} on the beach", 0.2), prompt("a {subject} in the snow", 0.4),
                       prompt("a {subject} wearing a red hat", 0.5), prompt("a red {subject}", 0.9)]}
    can = {"prompts": [prompt("a {subject} on the beach", 0.6), prompt("a cube shaped {subject}", 0.1)]}
    types = by_prompt_type([dog, can])
    assert types["recontextualization"]["dino"] == pytest.approx((0.3 + 0.6) / 2)
    assert types["accessorization"] == {"dino": 0.5, "clip_i": 0.5, "clip_t": 0.5, "subjects": 1}  # the dog only
    assert types["property"]["clip_t"] == pytest.approx(0.5) and types["property"]["subjects"] == 2


@pytest.mark.skipif(not DREAMBENCH.is_dir(), reason="../shared/datasets/dreambench not present")
def test_dreambench_prompt_file_parsed_exactly():
    bench = read_benchmark(DREAMBENCH)
    assert len(bench.classes) == 30 and len(bench.object_prompts) == 25 and len(bench.live_prompts) == 25
    assert sum(bench.is_live(s) for s in bench.classes) == 9
    assert bench.prompts_for("dog")[11] == "a {subject} wearing a santa hat"
    assert bench.prompts_for("teapot")[24] == "a cube shaped {subject}"
    assert sorted(p.name for p in DREAMBENCH.iterdir() if p.is_dir()) == sorted(bench.classes)


@pytest.fixture(scope="module")
def evaluators(evaluator_dirs):
    return load_evaluators(*evaluator_dirs)


def test_scores_match_a_hand_computation(evaluators):
    red, blue = Image.new("RGB", (40, 40), (220, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 220))
    scores = score_images(evaluators, [red, blue], [red, red], "a dog")
    assert scores["dino"] == pytest.approx((1.0 + scores["per_image"]["dino"][1]) / 2, abs=1e-5)
    assert scores["per_image"]["dino"][0] == pytest.approx(1.0, abs=1e-5)   # identical to both photos
    assert scores["per_image"]["clip_i"][0] == pytest.approx(1.0, abs=1e-5)
    assert scores["per_image"]["clip_i"][1] < 1.0
    img = evaluators.clip_image_embed([blue])[0]
    txt = evaluators.clip_text_embed(["a dog"])[0]
    assert scores["per_image"]["clip_t"][1] == pytest.approx(float(torch.cosine_similarity(img, txt, dim=0)), abs=1e-5)


def test_score_command_prints_json(evaluators, tmp_path, capsys):
    import json

    from subjectgen.cli import main

    (tmp_path / "gen").mkdir()
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 40), (220, 30, 30)).save(tmp_path / "gen" / "a.png")
    Image.new("RGB", (40, 40), (220, 30, 30)).save(tmp_path / "photos" / "p.png")
    root = Path(evaluators.clip.name_or_path).parent
    assert main(["score", str(tmp_path / "gen"), "--subject", str(tmp_path / "photos"), "--prompt", "a dog",
                 "--dino", str(root / "dino"), "--clip", str(root / "clip")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dino"] == pytest.approx(1.0, abs=1e-5) and out["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert -1 <= out["clip_t"] <= 1 and out["images"] == 1


@pytest.mark.parametrize("bars", [True, False])
def test_loading_evaluators_leaves_the_library_settings_as_they_were(evaluator_dirs, bars):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from subjectgen.models import quiet_loading

    libs = (diffusers_logging, transformers_logging)
    before = [lib.get_verbosity() for lib in libs]
    for lib in libs:
        (lib.enable_progress_bar if bars else lib.disable_progress_bar)()
    try:
        with quiet_loading():
            assert not any(lib.is_progress_bar_enabled() for lib in libs)
        load_evaluators(*evaluator_dirs)
        assert [lib.is_progress_bar_enabled() for lib in libs] == [bars, bars]
        assert [lib.get_verbosity() for lib in libs] == before
    finally:
        for lib in libs:
            lib.enable_progress_bar()
