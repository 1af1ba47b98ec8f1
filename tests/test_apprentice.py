"""The SuTI apprentice: the expert farm (resume, a 2-process split), the ΔCLIP filter, apprentice training, the
IP-Adapter export in plain diffusers, zero-shot runs, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from subjectgen.cli import main

from test_cli import error_of

EXPERTS = ["--count", "2", "--expert-steps", "3", "--images", "2", "--sample-steps", "2"]


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory, tiny_model) -> str:
    """A tiny CLIP vision tower with a text projection beside it, as 'world train-image-encoder' writes (its
    projection the width of the tiny model's text encoder, so the filter can compare the two)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from subjectgen.models import load_model

    width = load_model(tiny_model).text_encoder.config.hidden_size
    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=2,
                                                   projection_dim=width)).save_pretrained(folder)
    save_file({"weight": torch.eye(width), "logit_scale": torch.ones(1)}, str(folder / "text_projection.safetensors"))
    return str(folder)


@pytest.fixture(scope="session")
def clusters(tmp_path_factory) -> Path:
    """Two subjects of 3 photos in DreamBench's layout: the clusters of a farm for any model."""
    from conftest import draw_subject

    root = tmp_path_factory.mktemp("clusters")
    for name, shift in (("red_ball", 0), ("other_ball", 6)):
        (root / name).mkdir()
        for i in range(3):
            draw_subject(root / name / f"{i}.png", shift=shift + i)
    (root / "prompts_and_classes.txt").write_text(
        "Classes\nsubject_name,class\nred_ball,toy\nother_ball,toy\n\nPrompts\nObject Prompts\n"
        "'a {0} {1} on the beach'.format(unique_token, class_token)\n'a {0} {1} in the snow'.format(unique_token, "
        "class_token)\n\nLive Subject Prompts\n'a {0} {1} on the beach'.format(unique_token, class_token)\n")
    return root


@pytest.fixture(scope="session")
def farm(tmp_path_factory, tiny_model, clusters, encoder_dir) -> Path:
    out = tmp_path_factory.mktemp("farm") / "farm"
    assert main(["apprentice", "experts", "--model", tiny_model, "--clusters", str(clusters), "--out", str(out),
                 *EXPERTS, "--quiet"]) == 0
    assert main(["apprentice", "filter", str(out), "--tau-t", "-1", "--tau-s", "-1",
                 "--image-encoder", encoder_dir]) == 0
    return out


@pytest.fixture(scope="session")
def apprentice_dir(tmp_path_factory, farm, encoder_dir) -> Path:
    out = tmp_path_factory.mktemp("apprentice") / "ap"
    assert main(["apprentice", "train", str(farm), "--out", str(out), "--steps", "4", "--batch-size", "2",
                 "--num-tokens", "4", "--image-encoder", encoder_dir, "--quiet"]) == 0
    return out


def test_farm_layout_and_what_the_filter_keeps(farm):
    experts = sorted(p.parent.name for p in farm.glob("experts/*/expert.json"))
    assert experts == ["other_ball", "red_ball"]
    record = json.loads((farm / "experts" / "red_ball" / "expert.json").read_text())
    assert record["prompts"] == [t.replace("{subject}", "toy") for t in record["templates"]]
    assert all((farm / "experts" / "red_ball" / name).is_file() for name in record["images"])
    assert (farm / "experts" / "red_ball" / "run" / "subject.json").is_file()  # the expert is an ordinary LoRA run
    kept = json.loads((farm / "filter.json").read_text())
    assert kept["total"] == 4 and kept["kept"] == 4 and (farm / "kept.png").is_file()


def test_a_farm_does_not_grow_at_other_lora_defaults_than_its_finished_experts(farm, tmp_path, tiny_model, clusters,
                                                                             monkeypatch, capsys):
    """An expert trained after LoRA's defaults changed (the fair comparison's choice became them) would make one farm
    of two kinds: refused, naming the setting; at the same defaults the missing expert is trained again."""
    import dataclasses
    import shutil

    from subjectgen.methods import registry

    copy = tmp_path / "farm"
    shutil.copytree(farm, copy)
    shutil.rmtree(copy / "experts" / "red_ball")
    args = ["apprentice", "experts", "--model", tiny_model, "--clusters", str(clusters), "--out", str(copy),
            *EXPERTS, "--quiet"]
    lora = registry.get("lora")
    monkeypatch.setitem(registry.REGISTRY, "lora", dataclasses.replace(lora, defaults={**lora.defaults,
                                                                                      "lr": (1e-4, 2e-3)}))
    assert "trained at other LoRA defaults than this version's (lr 0.001 -> 0.002)" in error_of(capsys, args)
    assert not (copy / "experts" / "red_ball").exists()  # nothing written
    monkeypatch.setitem(registry.REGISTRY, "lora", lora)
    assert main(args) == 0 and (copy / "experts" / "red_ball" / "expert.json").is_file()


def test_the_filter_keeps_and_drops_by_each_threshold():
    from subjectgen.methods.farm import keep

    assert keep(0.05, 0.6, tau_t=0.04, tau_s=0.5)
    assert not keep(0.03, 0.6, tau_t=0.04, tau_s=0.5)   # follows the prompt no better than the demonstrations
    assert not keep(0.05, 0.4, tau_t=0.04, tau_s=0.5)   # no longer the subject
    assert keep(0.04, 0.5, tau_t=0.04, tau_s=0.5)       # the thresholds themselves are kept


def test_delta_clip_is_the_image_score_minus_the_demonstrations(tiny_model, encoder_dir, clusters):
    from PIL import Image

    from subjectgen.methods.farm import GeneratorClip, delta_clip
    from subjectgen.models import load_model

    clip = GeneratorClip(encoder_dir, load_model(tiny_model))
    demos = [Image.open(p).convert("RGB") for p in sorted((clusters / "red_ball").glob("*.png"))]
    image = [Image.open(clusters / "other_ball" / "0.png").convert("RGB")]
    follows, likeness = delta_clip(clip, image, demos, ["a toy on the beach"])
    out, ref, text = clip.images(image), clip.images(demos), clip.texts(["a toy on the beach"])
    assert follows[0] == pytest.approx(float(out[0] @ text[0] - (ref @ text[0]).mean()), abs=1e-6)
    assert likeness[0] == pytest.approx(float((ref @ out[0]).mean()), abs=1e-6)
    assert delta_clip(clip, demos[:1], demos[:1], ["a toy"])[1][0] == pytest.approx(1.0, abs=1e-5)


def test_a_killed_farm_resumes_without_training_finished_experts_again(farm, tmp_path, tiny_model, clusters):
    import shutil

    copy = tmp_path / "farm"
    shutil.copytree(farm, copy)
    (copy / "experts" / "other_ball" / "expert.json").unlink()  # as if killed while drawing its images
    done = (copy / "experts" / "red_ball" / "expert.json").read_text()
    weights = copy / "experts" / "other_ball" / "run" / "pytorch_lora_weights.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(["apprentice", "experts", "--model", tiny_model, "--clusters", str(clusters), "--out", str(copy),
                 *EXPERTS, "--quiet"]) == 0
    assert (copy / "experts" / "red_ball" / "expert.json").read_text() == done   # untouched
    assert weights.stat().st_mtime_ns == before  # its finished LoRA run was reused, not trained again
    assert (copy / "experts" / "other_ball" / "expert.json").is_file()


def test_two_processes_split_the_clusters_with_no_overlap(tmp_path, tiny_model, clusters):
    out = tmp_path / "farm"
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "subjectgen.cli", "apprentice", "experts", "--model", tiny_model, "--clusters",
           str(clusters), "--out", str(out), *EXPERTS, "--quiet"]
    subprocess.run(cmd, env={**env, "RANK": "0"}, check=True, capture_output=True)  # one after the other: a split,
    subprocess.run(cmd, env={**env, "RANK": "1"}, check=True, capture_output=True)  # not a race, is what is tested
    ranks = {p.parent.name: json.loads(p.read_text())["rank"] for p in out.glob("experts/*/expert.json")}
    assert ranks == {"red_ball": 0, "other_ball": 1}


def test_workers_launch_the_farm_as_local_processes_that_split_the_clusters(tmp_path, tiny_model, clusters, farm):
    out = tmp_path / "farm"
    cmd = [sys.executable, "-m", "subjectgen.cli", "apprentice", "experts", "--model", tiny_model, "--clusters",
           str(clusters), "--out", str(out), *EXPERTS, "--workers", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "farm: 2 worker processes (--workers)" in result.stdout and "2 experts" in result.stdout
    ranks = {p.parent.name: json.loads(p.read_text())["rank"] for p in out.glob("experts/*/expert.json")}
    assert ranks == {"red_ball": 0, "other_ball": 1}
    for name in ranks:  # the same experts as one process trains, so the same images (float rounding aside)
        for mine in sorted((out / "experts" / name / "images").glob("*.png")):
            theirs = farm / "experts" / name / "images" / mine.name
            assert np.abs(np.asarray(Image.open(mine), float) - np.asarray(Image.open(theirs), float)).max() <= 2
    bad = subprocess.run(cmd[:-2] + ["--seed", "5", "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1  # another farm's settings: refused once, up front


def test_apprentice_training_changes_only_its_own_weights(farm, tiny_model, encoder_dir, tmp_path):
    from subjectgen.config import TrainConfig
    from subjectgen.training.loop import Trainer

    cfg = TrainConfig(method="apprentice-train", model=tiny_model, subject_dir=None, class_noun=None,
                      out=str(tmp_path / "ap"), images=str(farm), image_encoder=encoder_dir, steps=5, batch_size=2,
                      num_tokens=4, lr=1e-2)
    trainer = Trainer(cfg, progress=False)
    unet = trainer.components.unet
    adapter = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert adapter and all("encoder_hid_proj" in n or "_ip." in n for n in adapter)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    text = {n: p.detach().clone() for n, p in trainer.components.text_encoder.named_parameters()}
    trainer.run()
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= adapter
    assert all(torch.equal(p, text[n]) for n, p in trainer.components.text_encoder.named_parameters())


def test_the_ip_adapter_export_loads_in_plain_diffusers_and_generates_our_images(apprentice_dir, tiny_model,
                                                                                tmp_path, subject_dir):
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from subjectgen.models import load_model
    from subjectgen.sampling import initial_latents

    flat = load_file(str(apprentice_dir / "ip_adapter.safetensors"))
    assert {k.split(".")[0] for k in flat} == {"image_proj", "ip_adapter"}
    assert flat["image_proj.latents"].shape[1] == 4  # --num-tokens 4 per demonstration
    run = tmp_path / "run"
    assert main(["train", "apprentice", "--model", tiny_model, "--subject", str(subject_dir), "--class", "toy",
                 "--out", str(run), "--apprentice", str(apprentice_dir), "--quiet"]) == 0
    assert main(["generate", str(run), "a {subject} on the beach", "-n", "1", "--seed", "3", "--steps", "4",
                 "--out", str(tmp_path / "ours"), "--quiet"]) == 0
    ours = np.asarray(Image.open(tmp_path / "ours" / "p00-0.png"), dtype=np.int16)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.load_ip_adapter(str(run), subfolder="", weight_name="ip_adapter.safetensors")
    demos = [Image.open(p) for p in sorted((run / "demos").glob("*.png"))]
    latents = initial_latents(load_model(tiny_model), [3])
    theirs = pipe("a toy on the beach", ip_adapter_image=[demos], num_inference_steps=4, guidance_scale=7.5,
                  latents=latents, output_type="np").images[0]
    assert np.abs(ours - np.round(theirs * 255).astype(np.int16)).max() <= 1
    base = np.asarray(Image.open(tmp_path / "ours" / "p00-0.png"))
    assert main(["generate", str(run), "a {subject} on the beach", "-n", "1", "--seed", "3", "--steps", "4",
                 "--ip-scale", "0", "--out", str(tmp_path / "scale0"), "--quiet"]) == 0
    assert not np.array_equal(base, np.asarray(Image.open(tmp_path / "scale0" / "p00-0.png")))  # the demos matter


def test_a_zero_shot_run_is_an_ordinary_run_folder(apprentice_dir, tiny_model, tmp_path, subject_dir):
    run = tmp_path / "run"
    assert main(["train", "apprentice", "--model", tiny_model, "--subject", str(subject_dir), "--class", "toy",
                 "--out", str(run), "--apprentice", str(apprentice_dir), "--quiet"]) == 0
    manifest = json.loads((run / "subject.json").read_text())
    assert manifest["method"] == "apprentice" and manifest["subject"] == "toy" and len(manifest["demos"]) == 3
    assert manifest["metrics"]["time_to_subject_seconds"] > 0 and manifest["settings"]["steps"] == 0
    states = load_file(str(run / "demo_states.safetensors"))
    assert states["states"].shape[0] == 3 and states["zero"].shape == states["states"].shape
    assert {e["kind"] for e in manifest["assets"]} == {"model", "apprentice"}


def test_bad_input_is_one_line_and_writes_nothing(apprentice_dir, tiny_model, tmp_path, subject_dir, capsys, farm):
    two = tmp_path / "two"
    two.mkdir()
    for p in sorted(subject_dir.glob("*.png"))[:2]:
        (two / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "run"
    cases = [
        (["train", "apprentice", "--model", tiny_model, "--subject", str(two), "--class", "toy", "--out", str(out),
          "--apprentice", str(apprentice_dir)], "at least 3 photos"),
        (["train", "apprentice", "--model", "builtin", "--subject", str(subject_dir), "--class", "toy", "--out",
          str(out), "--apprentice", str(apprentice_dir)], "another base model"),
        (["train", "apprentice", "--model", tiny_model, "--subject", str(subject_dir), "--class", "toy", "--out",
          str(out), "--apprentice", str(tmp_path)], "no apprentice there"),
        (["apprentice", "train", str(tmp_path), "--out", str(out)], "not an expert farm"),
        (["train", "apprentice", "--subject", str(subject_dir), "--class", "toy", "--out", str(out), "--lr", "1"],
         "does not apply to apprentice"),
    ]
    for argv, expected in cases:
        assert exit_code(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    empty = tmp_path / "empty-farm"
    empty.mkdir()
    (empty / "farm.json").write_text(json.dumps({"model": tiny_model}))
    assert main(["apprentice", "filter", str(empty)]) == 2
    assert "no finished expert" in capsys.readouterr().err


def exit_code(argv: list[str]) -> int:
    """main's exit code, also for an argument error (argparse exits)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_the_bench_runs_the_apprentice_like_any_method(apprentice_dir, tiny_model, evaluator_dirs, tmp_path):
    from subjectgen.world.build import EMOJIBENCH

    dino, clip = evaluator_dirs
    out = tmp_path / "bench"
    assert main(["bench", "--bench", str(EMOJIBENCH), "--model", tiny_model, "--methods", "apprentice", "--apprentice",
                 str(apprentice_dir), "--subjects", "dog", "--prompts", "1", "--images-per-prompt", "1", "--out",
                 str(out), "--dino", dino, "--clip", clip, "--ip-scale", "0.5", "--quiet"]) == 0
    pair = json.loads((out / "results.json").read_text())["pairs"]["apprentice"]["dog"]
    assert pair["identifier"] == "dog" and pair["train_seconds"] > 0
    assert (out / pair["prompts"][0]["files"][0]).is_file()
    assert "| apprentice |" in (out / "table.md").read_text()


def test_a_fresh_adapter_starts_as_a_no_op_and_round_trips_through_the_file(tiny_model, tmp_path):
    from subjectgen.methods import ip_adapter as ipa
    from subjectgen.models import load_model

    base, adapted = load_model(tiny_model).unet, load_model(tiny_model).unet
    state = ipa.new_state(adapted, image_width=32, num_tokens=4, seed=0)
    ipa.install(adapted, state)
    for part in state:  # diffusers' loader and our inverse agree on every name and value
        back = ipa.installed_state(adapted)[part]
        assert set(back) == set(state[part]) and all(torch.equal(back[k], state[part][k]) for k in back)
    size, width = base.config.sample_size, base.config.cross_attention_dim
    x, text = torch.randn(1, 4, size, size), torch.randn(1, 7, width)
    demos = {"image_embeds": [torch.randn(1, 3, 5, 32)]}
    with torch.no_grad():
        assert torch.equal(adapted(x, 10, text, added_cond_kwargs=demos).sample, base(x, 10, text).sample)
    ipa.install(adapted, ipa.new_state(adapted, 32, 4, seed=0, values="to_v"))  # IP-Adapter's own init is not
    with torch.no_grad():
        assert not torch.equal(adapted(x, 10, text, added_cond_kwargs=demos).sample, base(x, 10, text).sample)


def test_an_apprentice_resumed_after_a_refilter_is_refused(capsys, farm, encoder_dir, tmp_path):
    """The filter decides the apprentice's data: a resume after it ran again with other thresholds would continue
    on other triples."""
    import shutil

    mine = shutil.copytree(farm, tmp_path / "farm")
    out = tmp_path / "ap"
    argv = ["apprentice", "train", str(mine), "--out", str(out), "--steps", "2", "--checkpoint-every", "1",
            "--batch-size", "2", "--num-tokens", "4", "--image-encoder", encoder_dir, "--quiet"]
    assert main(argv) == 0
    (out / "subject.json").unlink()  # as if killed after its last checkpoint
    record = json.loads((mine / "filter.json").read_text())  # a re-filter that keeps one image fewer
    record["images"][0]["kept"] = False
    (mine / "filter.json").write_text(json.dumps(record))
    assert "started on other data" in error_of(capsys, [*argv, "--resume"])
    assert main([*argv, "--overwrite"]) == 0


def test_an_expert_resumes_only_on_the_photos_it_started_with(capsys, tiny_model, clusters, tmp_path):
    """A killed farm's unfinished expert, or a finished one, whose cluster's photos changed meanwhile: one line naming
    the cluster, and its folder is left as it was; the photos restored, the farm finishes."""
    import shutil

    from conftest import draw_subject
    mine = shutil.copytree(clusters, tmp_path / "clusters")
    out = tmp_path / "farm"
    argv = ["apprentice", "experts", "--model", tiny_model, "--clusters", str(mine), "--out", str(out), *EXPERTS,
            "--quiet"]
    assert main(argv) == 0
    expert = out / "experts" / "red_ball"
    (expert / "expert.json").unlink()  # killed in its run
    (expert / "run" / "subject.json").unlink()
    before = {p: p.read_bytes() for p in expert.rglob("*") if p.is_file()}
    original = (mine / "red_ball" / "0.png").read_bytes()
    draw_subject(mine / "red_ball" / "0.png", shift=9)
    assert "photos of cluster red_ball changed" in error_of(capsys, argv)
    assert {p: p.read_bytes() for p in expert.rglob("*") if p.is_file()} == before
    (mine / "red_ball" / "0.png").write_bytes(original)
    assert main(argv) == 0 and (expert / "expert.json").is_file()
    draw_subject(mine / "other_ball" / "1.png", shift=9)  # a finished expert's cluster
    assert "photos of cluster other_ball changed" in error_of(capsys, argv)
