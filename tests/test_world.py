"""The built-in world: the renderer, EmojiBench, and the shipped model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from subjectgen import generate, load_model
from subjectgen.assets import SHIPPED
from subjectgen.subjects import load_subject
from subjectgen.world.catalog import EDITS, OUTFITS, SCENES, SUBJECTS, VALIDATION, contexts_for, training_instances
from subjectgen.world.emoji import sources_available

needs_sources = pytest.mark.skipif(not sources_available(), reason="emoji sources not installed (see .ci/run)")


def test_emojibench_subjects_are_never_training_instances():
    seen = {i for instances in training_instances().values() for i in instances}
    for name, (noun, inst) in SUBJECTS.items():
        assert inst not in seen, name
    assert len(SUBJECTS) == 30 and len(SCENES) == 20 and len(OUTFITS) == 10 and len(EDITS) == 5
    assert len(contexts_for("dog")) == 35 and len(contexts_for("teapot")) == 25


def test_no_training_or_evaluator_item_is_reserved_or_a_near_neighbour():
    """The rule, over the full item lists: no reserved instance (core or a hue neighbour) is ever rendered."""
    from dataclasses import replace

    from subjectgen.world.build import evaluator_items, training_items
    from subjectgen.world.catalog import NEIGHBOUR_HUES, in_reserved_core, is_reserved

    for items in (training_items(6), evaluator_items(4)):
        instances = {item[1] for item in items}
        assert len(instances) > 1500  # thousands of instances along the composing axes
        for inst in instances:
            assert not is_reserved(inst), inst
            assert not any(in_reserved_core(replace(inst, hue=(inst.hue + d) % 360)) for d in NEIGHBOUR_HUES)
    test_sets = [inst for _, inst in [*SUBJECTS.values(), *VALIDATION.values()]]
    assert all(in_reserved_core(inst) and len(inst.attributes()) >= 2 for inst in test_sets)
    assert len(set(test_sets)) == len(test_sets)


def test_reserved_region_is_about_a_tenth_of_the_instance_space():
    import random

    from subjectgen.world.catalog import in_reserved_core, is_reserved, random_instance

    rng = random.Random(0)
    sample = [random_instance(rng.choice(["dog", "teapot", "kite"]), rng.choice(["noto", "twemoji"]), rng)
              for _ in range(4000)]
    core = sum(map(in_reserved_core, sample)) / len(sample)
    assert 0.07 < core < 0.13 and core < sum(map(is_reserved, sample)) / len(sample) < 0.3


def test_the_test_sets_are_the_draws_the_catalog_says():
    import random

    from subjectgen.world.catalog import sample_reserved

    for name, (noun, inst) in SUBJECTS.items():
        assert sample_reserved(noun, random.Random(f"emojibench-v3|{name}"), inst.emoji) == inst, name
    for name, (noun, inst) in VALIDATION.items():
        assert sample_reserved(noun, random.Random(f"validation-v3|{name}")) == inst, name


@needs_sources
def test_achromatic_emoji_are_those_a_hue_rotation_cannot_change():
    from subjectgen.world.catalog import ACHROMATIC, CLASSES, STYLES
    from subjectgen.world.emoji import emoji_image

    def saturated(name, style):
        image = emoji_image(name, style)
        hsv = np.asarray(image.convert("RGB").convert("HSV"))
        return (hsv[..., 1][np.asarray(image.getchannel("A")) > 128] > 80).mean()

    found = {(n, s) for names in CLASSES.values() for n in names for s in STYLES if saturated(n, s) < 0.2}
    assert found == ACHROMATIC


@needs_sources
def test_test_subjects_look_unlike_every_training_instance_of_their_emoji():
    from subjectgen.world.render import object_image

    def pixels(inst):
        return np.asarray(object_image(inst).convert("RGBA").resize((48, 48))).astype(int)

    training = [i for instances in training_instances().values() for i in instances]
    for name, (noun, inst) in [*SUBJECTS.items(), *VALIDATION.items()]:
        mine = pixels(inst)  # at least 3 % of the pixels differ clearly from each training instance of its emoji
        for other in (t for t in training if (t.emoji, t.style) == (inst.emoji, inst.style)):
            assert (np.abs(pixels(other) - mine).sum(-1) > 60).mean() > 0.03, (name, other)


@needs_sources
def test_world_reserved_writes_a_fresh_bench_folder(tmp_path, capsys):
    from subjectgen.cli import main
    from subjectgen.eval.prompts import read_benchmark
    from subjectgen.world.build import bench_instances
    from subjectgen.world.catalog import in_reserved_core

    assert main(["world", "reserved", "--count", "3", "--seed", "5", "--classes", "dog,teapot",
                 "--out", str(tmp_path / "ho")]) == 0
    bench = read_benchmark(tmp_path / "ho")
    assert list(bench.classes.values()) == ["dog", "teapot", "dog"]
    instances = bench_instances(tmp_path / "ho")
    known = {inst for _, inst in [*SUBJECTS.values(), *VALIDATION.values()]}
    for name, (noun, inst) in instances.items():
        assert in_reserved_core(inst) and inst not in known and bench.classes[name] == noun
        assert 4 <= len(list((tmp_path / "ho" / name).glob("*.png"))) <= 6
    listed = capsys.readouterr().out
    assert main(["world", "reserved", "--count", "3", "--seed", "5", "--classes", "dog,teapot"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == listed.splitlines()[:3]  # same seed, same sample
    assert main(["world", "reserved", "--classes", "dragon"]) == 2
    assert "unknown dragon" in capsys.readouterr().err


@needs_sources
def test_world_build_writes_the_validation_subjects_in_dreambench_layout(tmp_path, capsys):
    from subjectgen.cli import main
    from subjectgen.eval.prompts import read_benchmark
    from subjectgen.world.build import EMOJIBENCH

    assert main(["world", "build", "--set", "validation"]) == 2  # never over the shipped EmojiBench
    assert "--out" in capsys.readouterr().err
    assert main(["world", "build", "--set", "validation", "--out", str(tmp_path / "val")]) == 0
    bench, emojibench = read_benchmark(tmp_path / "val"), read_benchmark(EMOJIBENCH)
    assert bench.classes == {name: noun for name, (noun, _) in VALIDATION.items()}
    assert bench.object_prompts == emojibench.object_prompts and bench.live_prompts == emojibench.live_prompts
    for name in VALIDATION:
        photos = len(list((tmp_path / "val" / name).glob("*.png")))
        assert 4 <= photos <= 6 and len(list((tmp_path / "val" / name / "masks").glob("*.png"))) == photos


@needs_sources
def test_scenes_are_deterministic_and_contexts_differ():
    from subjectgen.world.catalog import Instance
    from subjectgen.world.scene import render_scene

    dog = Instance("dog2", "twemoji")
    a, b = np.asarray(render_scene(dog, "on the beach", 3)), np.asarray(render_scene(dog, "on the beach", 3))
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    snow = np.asarray(render_scene(dog, "in the snow", 3)).astype(int)
    assert a[48:, :, 0].mean() - a[48:, :, 2].mean() > 40      # sand below on the beach
    assert abs(snow[48:, :, 0].mean() - snow[48:, :, 2].mean()) < 20  # white snow


@needs_sources
def test_object_height_sets_the_subjects_size_in_a_scene():
    from subjectgen.world.catalog import Instance
    from subjectgen.world.scene import render_scene

    dog = Instance("dog2", "twemoji")
    empty = np.asarray(render_scene(dog, "red", 0, (0.02, 0.02))).astype(int)  # a 1 px object
    def covered(height):  # pixels that differ from the same scene with a (nearly) invisible object
        return (np.abs(np.asarray(render_scene(dog, "red", 0, height)).astype(int) - empty).sum(-1) > 30).mean()
    assert covered((0.3, 0.3)) < covered((0.5, 0.5)) < covered((0.75, 0.75))


@needs_sources
def test_shipped_emojibench_is_what_world_build_writes(tmp_path):
    from subjectgen.world.build import EMOJIBENCH, write_emojibench

    fresh = write_emojibench(tmp_path / "eb")
    for name in ("dog", "backpack_dog", "teapot"):
        for photo in sorted((EMOJIBENCH / name).glob("*.png")) + sorted((EMOJIBENCH / name / "masks").glob("*.png")):
            shipped = photo.relative_to(EMOJIBENCH)
            assert np.array_equal(np.asarray(Image.open(photo)), np.asarray(Image.open(fresh / shipped)))
    assert (fresh / "prompts_and_classes.txt").read_text() == (EMOJIBENCH / "prompts_and_classes.txt").read_text()


def test_emojibench_layout_mirrors_dreambench():
    from subjectgen.world.build import EMOJIBENCH

    folders = sorted(p.name for p in EMOJIBENCH.iterdir() if p.is_dir())
    assert folders == sorted(SUBJECTS)
    assert all(4 <= len(list((EMOJIBENCH / f).glob("*.png"))) <= 6 for f in folders)
    for folder in folders:  # every photo has its subject mask, for --masked-loss
        subject = load_subject(EMOJIBENCH / folder, SUBJECTS[folder][0], 64, masks=True)
        covered = subject.mask_tensor().mean(dim=(1, 2, 3))
        assert ((covered > 0.03) & (covered < 0.8)).all(), (folder, covered)  # candle: 5 % at its smallest
    text = (EMOJIBENCH / "prompts_and_classes.txt").read_text()
    assert "'a {0} {1} wearing a santa hat'.format(unique_token, class_token)" in text


def test_builtin_model_is_a_plain_sd_pipeline_that_follows_prompts():
    components = load_model("builtin")
    assert components.resolution == 64
    assert type(components.unet).__name__ == "UNet2DConditionModel"
    assert type(components.text_encoder).__name__ == "CLIPTextModel" and len(components.tokenizer) == 49408
    record = json.loads((SHIPPED / "training.json").read_text())
    assert record["data_hash"] and record["config"]["unet_steps"] > 0
    beach, snow = generate(components, ["a dog on the beach", "a dog in the snow"], [0, 0], steps=20)
    beach, snow = np.asarray(beach).astype(int), np.asarray(snow).astype(int)
    assert beach.std() > 20                                    # a picture, not a flat field
    assert beach[48:, :, 0].mean() - beach[48:, :, 2].mean() > 30   # sand
    assert snow[48:, :, 2].mean() > 200 and snow[48:, :, 0].mean() > 200  # white ground


def test_a_run_cut_by_the_clock_records_how_to_reproduce_it(capsys):
    """--max-seconds stops where the clock says; the record then names that step (unet_stop_step) and keeps
    the schedule's length, and --stop-step alone repeats the run: same steps, same weights."""
    import torch

    from subjectgen.world.pretrain import WorldTrainConfig, build_models, train_unet

    def run(**cut):
        cfg = WorldTrainConfig(unet_steps=50, unet_batch=2, text_width=32, text_layers=1,
                               unet_channels=(32, 32, 32), **cut)
        text_encoder, _, unet = build_models(cfg)
        latents = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        train_unet(text_encoder, unet, latents, ["a dog", "a cat", "a dog", "a red dog"], cfg, torch.device("cpu"))
        return cfg, unet.state_dict()

    timed, timed_weights = run(unet_max_seconds=1e-9)
    assert (timed.unet_steps, timed.unet_stop_step, timed.unet_max_seconds) == (50, 1, None)
    assert "step 1/50" in capsys.readouterr().out
    again, again_weights = run(unet_stop_step=timed.unet_stop_step)
    assert again == timed
    assert all(torch.equal(timed_weights[k], again_weights[k]) for k in timed_weights)
    _, longer = run(unet_stop_step=2)
    assert not all(torch.equal(timed_weights[k], longer[k]) for k in timed_weights)


@needs_sources
def test_photos_are_deterministic_and_taken_in_a_few_places_none_a_prompt_context():
    from subjectgen.world.catalog import contexts_for
    from subjectgen.world.render import PHOTO_SETTINGS
    from subjectgen.world.scene import photo_count, photo_settings, render_photo

    assert not set(PHOTO_SETTINGS) & set(contexts_for("dog"))
    for name in ("dog", "teapot", "backpack"):
        inst = SUBJECTS[name][1]
        places = photo_settings(inst)
        assert 2 <= len(places) <= 3 and 4 <= photo_count(inst) <= 6
        first, mask = render_photo(inst, 0)
        again, _ = render_photo(inst, 0)
        assert np.array_equal(np.asarray(first), np.asarray(again))
        background = np.asarray(first).astype(int)[np.asarray(mask) < 10]
        assert background.std(axis=0).mean() > 8  # a place with texture and structure, not a plain backdrop
        sizes = [(np.asarray(render_photo(inst, k)[1]) > 128).mean() for k in range(photo_count(inst))]
        assert max(sizes) > 1.3 * min(sizes)  # varied scale
