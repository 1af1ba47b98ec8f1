"""`train --captions auto`: NAME.txt captions with {subject} for the photos that lack one, from a transformers
image-to-text model (a tiny random BLIP built here) or, on the built-in model, the scene interrogator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from subjectgen.cli import main



@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory) -> str:
    """A BLIP captioner at toy size with random weights, saved as transformers saves any (safetensors)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    out = tmp_path_factory.mktemp("captioner")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "on", "the", "sofa", "lawn", "red", "toy"]
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    text = {"vocab_size": len(words), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 64, "bos_token_id": 2, "sep_token_id": 3,
            "pad_token_id": 0, "eos_token_id": 3}
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2}
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16)) \
        .save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=BertTokenizer(str(out / "vocab.txt"))).save_pretrained(out)
    return str(out)


@pytest.fixture
def photos(subject_dir) -> Path:
    """conftest's three photos; the second already has its caption."""
    (subject_dir / "01.txt").write_text("a {subject} on a tiled floor\n", encoding="utf-8")
    return subject_dir


def test_a_captioners_sentence_gets_the_subject_in_the_class_nouns_place():
    from subjectgen.captions import with_subject

    assert with_subject("a dog sitting on a sofa", "dog") == "a {subject} sitting on a sofa"
    assert with_subject("Two  Dogs on {a} lawn\n", "dog") == "Two {subject} on a lawn"  # one line, no braces
    assert with_subject("a teddy bear on a bed", "teddy bear") == "a {subject} on a bed"
    assert with_subject("a hotdog on a plate", "dog") == "a {subject}, a hotdog on a plate"  # words, not letters
    assert with_subject("", "dog") == "a {subject}"


def test_auto_captions_from_a_transformers_captioner_reach_the_training_prompts(tiny_model, photos, tiny_captioner,
                                                                                tmp_path):
    from subjectgen import TrainConfig
    from subjectgen.captions import TransformersCaptioner
    from subjectgen.photos import open_photo
    from subjectgen.training.loop import Trainer
    from subjectgen.training.outdir import release

    want = TransformersCaptioner(tiny_captioner, "dog")([open_photo(photos / f"{i:02d}.png") for i in (0, 2)])
    trainer = Trainer(TrainConfig(method="lora", model=tiny_model, subject_dir=str(photos), class_noun="dog",
                                  out=str(tmp_path / "run"), steps=1, captioning="auto", captioner=tiny_captioner),
                      progress=False)
    try:
        written = [(photos / f"{i:02d}.txt").read_text(encoding="utf-8") for i in range(3)]
        assert written == [f"{want[0]}\n", "a {subject} on a tiled floor\n", f"{want[1]}\n"]  # the old one as it was
        assert all("{subject}" in text for text in want)
        phrase = trainer.method.subject_phrase
        generator, seen = torch.Generator().manual_seed(0), set()
        for _ in range(10):
            seen |= set(trainer.method.batch(trainer.data, generator, 4).prompts)
        assert seen == {want[0].replace("{subject}", phrase), f"a {phrase} on a tiled floor",
                        want[1].replace("{subject}", phrase)}
    finally:
        release(trainer.out)


def train_args(model, photos, out, *extra):
    return ["train", "lora", "--model", model, "--subject", str(photos), "--class", "dog", "--out", str(out),
            "--quiet", "--steps", "1", "--captions", "auto", *extra]


@pytest.mark.parametrize("content, words", [(b"a {subject} on \xff\xfe grass", "is not UTF-8 text"),
                                            (b"a dog on grass", "has no {subject}")])
def test_a_bad_caption_stops_auto_captions_with_nothing_written(tiny_model, photos, tiny_captioner, tmp_path, capsys,
                                                                 content, words):
    (photos / "01.txt").write_bytes(content)
    out = tmp_path / "run"
    assert main(train_args(tiny_model, photos, out, "--captioner", tiny_captioner)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "01.txt" in err and len(err.splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in photos.glob("*.txt")) == ["01.txt"]


@pytest.mark.parametrize("extra, words", [
    (["--captioner", "/nonexistent/blip"], "--captioner /nonexistent/blip: could not load an image-to-text model"),
    ([], "needs --captioner"),  # the tiny model is not the built-in one: no scene interrogator for it
    (["--captioner", "builtin"], "--captioner builtin reads the built-in model's text encoder"),
])
def test_a_captioner_that_cannot_work_is_a_one_line_error_with_nothing_written(tiny_model, photos, tmp_path, capsys,
                                                                               extra, words):
    out = tmp_path / "run"
    assert main(train_args(tiny_model, photos, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in photos.glob("*.txt")) == ["01.txt"]


def test_a_captioner_without_auto_captions_is_refused(tiny_model, photos, tiny_captioner, tmp_path, capsys):
    args = train_args(tiny_model, photos, tmp_path / "run", "--captioner", tiny_captioner)
    args.remove("--captions")
    args.remove("auto")
    assert main(args) == 2
    assert "--captioner needs --captions auto" in capsys.readouterr().err


def test_the_builtin_interrogator_names_the_places_of_emojibench_photos():
    """On the built-in model: of the world's scene words, the one the generator side's image encoder finds closest;
    the photos' places are known (world/scene.py), so its accuracy is measured, not assumed."""
    from subjectgen.assets import EVALUATORS, IMAGE_ENCODER
    from subjectgen.captions import SceneInterrogator
    from subjectgen.models import load_model
    from subjectgen.photos import open_photo
    from subjectgen.world.build import EMOJIBENCH, bench_instances
    from subjectgen.world.catalog import caption
    from subjectgen.world.scene import photo_settings

    components = load_model("builtin")
    right = total = 0
    for name, (noun, instance) in bench_instances(EMOJIBENCH).items():
        interrogator = SceneInterrogator(components, noun)
        paths = sorted((EMOJIBENCH / name).glob("*.png"))
        places = photo_settings(instance)  # photo k is taken at places[k % len(places)]
        got = interrogator([open_photo(p) for p in paths])
        right += sum(g == caption("{subject}", places[k % len(places)]) for k, g in enumerate(got))
        total += len(paths)
    assert Path(interrogator.encoder.name_or_path).resolve() == IMAGE_ENCODER.resolve() != EVALUATORS.resolve()
    assert right / total >= 0.85, f"{right}/{total}"  # 136/144 when written


def test_auto_captions_on_the_builtin_model_default_to_the_interrogator(tmp_path):
    from subjectgen.world.build import EMOJIBENCH

    photos = tmp_path / "dog"
    shutil.copytree(EMOJIBENCH / "dog", photos, ignore=shutil.ignore_patterns("masks"))
    out = tmp_path / "run"
    assert main(["train", "lora", "--subject", str(photos), "--class", "dog", "--out", str(out), "--quiet",
                 "--steps", "1", "--captions", "auto"]) == 0
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in sorted(photos.glob("*.png"))]
    assert all(c.startswith("a {subject} ") and c.endswith("\n") for c in captions)
    manifest = json.loads((out / "subject.json").read_text())
    assert manifest["settings"]["captioning"] == "auto" and manifest["captions_written"] == ["00.txt", "01.txt",
                                                                                           "02.txt", "03.txt"]
    assert list(manifest["captions"].values()) == [c.strip() for c in captions]
