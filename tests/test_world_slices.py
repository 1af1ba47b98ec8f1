"""Continued training of the built-in model on World v3 (`world train-vae`, `world train --init`), in slices
that equal one run bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from subjectgen.errors import UserError
from subjectgen.world.catalog import training_instances
from subjectgen.world.config import VaeTuneConfig
from subjectgen.world.emoji import sources_available
from subjectgen.world.vae_tune import tune_vae

pytestmark = pytest.mark.skipif(not sources_available(), reason="emoji sources not installed (see .ci/run)")


def few_instances() -> dict:
    every = training_instances()
    return {noun: every[noun][:2] for noun in ("dog", "backpack")}


def weights(folder) -> dict:
    return load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")


def test_two_slices_equal_one_run_bit_for_bit(tmp_path, tiny_model):
    cfg = VaeTuneConfig(init=tiny_model, steps=4, batch=2, scene_seeds=1, photos=1)
    sliced, whole = tmp_path / "sliced", tmp_path / "whole"
    first = tune_vae(sliced, cfg, tmp_path / "state-a", stop_step=2, instances=few_instances())
    assert first["step"] == 2 and (sliced / "vae").is_dir()
    second = tune_vae(sliced, cfg, tmp_path / "state-a", resume=True, instances=few_instances())
    one = tune_vae(whole, cfg, tmp_path / "state-b", instances=few_instances())
    assert [(s["from_step"], s["to_step"]) for s in second["slices"]] == [(0, 2), (2, 4)]
    assert [(s["from_step"], s["to_step"]) for s in one["slices"]] == [(0, 4)]
    a, b, init = weights(sliced), weights(whole), load_file(
        f"{tiny_model}/vae/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the decoder moved; the encoder (every latent the UNet learned from) did not
    assert any(not torch.equal(a[k], init[k]) for k in a if k.startswith("decoder."))
    assert all(torch.equal(a[k], init[k]) for k in a if k.startswith(("encoder.", "quant_conv.")))
    record = json.loads((sliced / "training.json").read_text())["vae_continued"]
    assert record["step"] == 4 and len(record["slices"]) == 2 and record["slices"][1]["samples"] == 4


def test_whole_vae_moves_the_encoder_and_resume_checks_its_state(tmp_path, tiny_model):
    cfg = VaeTuneConfig(init=tiny_model, part="all", steps=2, batch=2, scene_seeds=1, photos=1)
    tune_vae(tmp_path / "out", cfg, tmp_path / "state", instances=few_instances())
    a, init = weights(tmp_path / "out"), load_file(f"{tiny_model}/vae/diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], init[k]) for k in a if k.startswith("encoder."))
    with pytest.raises(UserError, match="--resume to continue"):
        tune_vae(tmp_path / "out", cfg, tmp_path / "state", instances=few_instances())
    with pytest.raises(UserError, match="another run"):
        tune_vae(tmp_path / "out", VaeTuneConfig(init=tiny_model, part="all", steps=3, batch=2, scene_seeds=1,
                                                 photos=1), tmp_path / "state", resume=True,
                 instances=few_instances())
    with pytest.raises(UserError, match="no slice state"):
        tune_vae(tmp_path / "out", cfg, tmp_path / "nothing", resume=True, instances=few_instances())


def test_continued_unet_in_two_slices_equals_one_run_bit_for_bit(tmp_path, tiny_model, capsys, monkeypatch):
    from subjectgen.cli import main
    from subjectgen.world import build
    from subjectgen.world.config import UnetContinueConfig
    from subjectgen.world.continue_unet import continue_unet

    items = build.training_items(1, few_instances())[:24]
    cfg = UnetContinueConfig(init=tiny_model, steps=4, batch=3)
    continue_unet(tmp_path / "sliced", cfg, tmp_path / "state-a", stop_step=1, items=items)
    continue_unet(tmp_path / "sliced", cfg, tmp_path / "state-a", resume=True, stop_step=2, items=items)
    assert (tmp_path / "state-a" / "data.safetensors").is_file()  # kept across the state's replacement

    def render_again(*args, **kwargs):
        raise AssertionError("a resumed slice rendered the world again instead of reading its state's data")

    with monkeypatch.context() as patch:
        patch.setattr(build, "render_training_set", render_again)
        sliced = continue_unet(tmp_path / "sliced", cfg, tmp_path / "state-a", resume=True, items=items)
    continue_unet(tmp_path / "whole", cfg, tmp_path / "state-b", items=items)
    assert [(s["from_step"], s["to_step"]) for s in sliced["slices"]] == [(0, 1), (1, 2), (2, 4)]
    for part in ("unet", "text_encoder"):
        files = [load_file(next((tmp_path / run / part).glob("*.safetensors"))) for run in ("sliced", "whole")]
        init = load_file(next((Path(tiny_model) / part).glob("*.safetensors")))
        assert all(torch.equal(files[0][k], files[1][k]) for k in files[0])
        assert any(not torch.equal(files[0][k], init[k]) for k in files[0])
    assert torch.equal(weights(tmp_path / "sliced")["decoder.conv_out.weight"],
                       load_file(f"{tiny_model}/vae/diffusion_pytorch_model.safetensors")["decoder.conv_out.weight"])
    record = json.loads((tmp_path / "sliced" / "training.json").read_text())["unet_continued"]
    assert record["step"] == 4 and record["slices"][2]["samples"] == 6 and "command" in record["slices"][2]
    # the CLI refuses a from-seed flag on a continued model, in one line and before any file
    assert main(["world", "train", "--init", tiny_model, "--out", str(tmp_path / "cli"), "--vae-steps", "5"]) == 2
    assert "not a setting of a continued model" in capsys.readouterr().err and not (tmp_path / "cli").exists()


def test_slices_never_replace_a_folder_they_did_not_write(tmp_path, tiny_model, capsys, monkeypatch):
    from subjectgen.cli import main

    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    for out in (users, tmp_path):
        monkeypatch.chdir(tmp_path)
        assert main(["world", "train-vae", "--init", tiny_model, "--out", str(out), "--steps", "1"]) == 2
        assert "subjectgen" in capsys.readouterr().err
    assert (users / "notes.txt").read_text() == "keep me"
    cfg = VaeTuneConfig(init=tiny_model, steps=1, batch=2, scene_seeds=1, photos=1)
    tune_vae(tmp_path / "ours", cfg, tmp_path / "state", instances=few_instances())
    with pytest.raises(UserError, match="--overwrite"):  # a fresh start over a finished run's folder
        tune_vae(tmp_path / "ours", cfg, tmp_path / "state-2", instances=few_instances())
    tune_vae(tmp_path / "ours", cfg, tmp_path / "state-2", instances=few_instances(), overwrite=True)
