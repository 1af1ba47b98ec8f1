"""The command line: user errors are one line with exit code 2 and leave nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from subjectgen.cli import main
from subjectgen.errors import UserError
from subjectgen.models import load_model


def error_of(capsys, argv) -> str:
    capsys.readouterr()  # what earlier commands of the test printed is not this command's error
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def train_args(model, subject, out, *extra):
    return ["train", "lora", "--model", str(model), "--subject", str(subject), "--class", "dog", "--out", str(out),
            "--quiet", "--steps", "2", *extra]


def test_user_errors(capsys, tiny_model, subject_dir, tmp_path):
    out = tmp_path / "out"
    assert "no such folder" in error_of(capsys, train_args(tmp_path / "nope", subject_dir, out))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "unet")
    assert "'unet' component" in error_of(capsys, train_args(broken, subject_dir, out))
    assert "model_index.json" in error_of(capsys, train_args(subject_dir, subject_dir, out))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no images" in error_of(capsys, train_args(tiny_model, empty, out))
    assert "invalid choice" in error_of(capsys, ["train", "dreamboat", "--subject", "x"])
    assert "--class" in error_of(capsys, ["train", "lora", "--subject", str(subject_dir), "--out", str(out)])
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert "cannot write" in error_of(capsys, train_args(tiny_model, subject_dir, blocker / "run"))
    assert not out.exists(), "a failed command must not leave a run folder behind"


def test_out_holding_another_run_needs_overwrite(capsys, tiny_model, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_model, subject_dir, out)) == 0
    assert "this finished run" in error_of(capsys, train_args(tiny_model, subject_dir, out))
    assert "a different run" in error_of(capsys, train_args(tiny_model, subject_dir, out, "--rank", "8"))
    assert main(train_args(tiny_model, subject_dir, out, "--rank", "8", "--overwrite")) == 0
    assert json.loads((out / "subject.json").read_text())["rank"] == 8
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert "holds no subjectgen run" in error_of(capsys, train_args(tiny_model, subject_dir, stranger, "--overwrite"))
    assert (stranger / "notes.txt").exists()


def test_pickled_weights_need_the_flag(capsys, tiny_model, subject_dir, tmp_path):
    model = tmp_path / "pickled"
    shutil.copytree(tiny_model, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), model / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    assert "--allow-pickle" in error_of(capsys, train_args(model, subject_dir, tmp_path / "o"))
    with pytest.raises(UserError, match="pickle"):
        load_model(str(model))
    assert load_model(str(model), allow_pickle=True).unet is not None


def test_generate_writes_images_and_grid(capsys, tiny_model, subject_dir, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(tiny_model, subject_dir, run)) == 0
    out = tmp_path / "gen"
    assert main(["generate", str(run), "a {subject} on the beach", "a {subject}", "-n", "2", "--steps", "3",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["grid.png", "p00-0.png", "p00-1.png", "p01-0.png", "p01-1.png"]
    from PIL import Image

    assert Image.open(out / "grid.png").size == (2 * 16, 2 * 16)
    with pytest.warns(UserWarning, match="no \\{subject\\}"):
        main(["generate", str(run), "a dog", "-n", "1", "--steps", "2", "--out", str(tmp_path / "g2")])
    assert main(["generate", str(run), "a {subject}", "-n", "1", "--steps", "2", "--lora-scale", "0.5",
                 "--out", str(tmp_path / "g3")]) == 0
    assert json.loads((tmp_path / "g3" / "prompts.json").read_text())["lora_scale"] == 0.5
    assert "--lora-scale applies to LoRA run folders" in error_of(
        capsys, ["generate", tiny_model, "a dog", "--lora-scale", "0.5", "--out", str(tmp_path / "g4")])
    assert not (tmp_path / "g4").exists()


def test_a_seed_gives_the_same_image_at_any_batch_size(capsys, tiny_model, tmp_path):
    import numpy as np
    from PIL import Image

    for batch in (1, 3, 8):
        argv = ["generate", tiny_model, "a dog", "a cat", "-n", "3", "--steps", "3", "--batch-size", str(batch),
                "--quiet", "--out", str(tmp_path / f"b{batch}")]
        assert main(argv) == 0
    for name in ("p00-0.png", "p00-2.png", "p01-1.png"):
        one = np.asarray(Image.open(tmp_path / "b1" / name), dtype=int)
        for batch in (3, 8):
            assert np.abs(np.asarray(Image.open(tmp_path / f"b{batch}" / name), dtype=int) - one).max() <= 1
    assert "--batch-size" in error_of(capsys, ["generate", tiny_model, "a dog", "--batch-size", "0", "--out",
                                               str(tmp_path / "b0")])
    assert not (tmp_path / "b0").exists()


def test_compile_trains_the_same_weights_and_needs_a_compiler(capsys, monkeypatch, tiny_model, subject_dir,
                                                                tmp_path):
    import torch
    from safetensors.torch import load_file

    from subjectgen.training import loop

    # dynamo's graphs and AOTAutograd's backward as --compile runs them, without inductor's minutes of C++ builds
    # (its kernels' rounding is torch's; benchmarks/compile_speed.py runs the real one)
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "aot_eager")
    from torch._dynamo.utils import counters

    counters.clear()
    for way in ("eager", "compiled"):
        extra = ["--compile"] if way == "compiled" else []
        assert main(train_args(tiny_model, subject_dir, tmp_path / way, "--steps", "3", *extra)) == 0
        assert (counters["stats"]["unique_graphs"] > 0) == (way == "compiled")  # the compiled forward ran
    eager, compiled = (load_file(str(tmp_path / w / "pytorch_lora_weights.safetensors")) for w in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()  # the compiled wrapper changes no weight's name
    ups = [v for k, v in eager.items() if "lora_B" in k or "lora.up" in k]
    assert ups and any(v.abs().max() > 0 for v in ups)  # LoRA's up weights start at zero: the steps were taken
    for k in eager:  # the same steps, in fused kernels: float rounding only
        assert torch.allclose(eager[k], compiled[k], atol=1e-5, rtol=1e-4), k
    monkeypatch.setattr(loop.shutil, "which", lambda name: None)
    assert "--compile on a CPU needs a C++ compiler" in error_of(
        capsys, train_args(tiny_model, subject_dir, tmp_path / "none", "--compile"))
    assert not (tmp_path / "none").exists()


def test_generate_on_an_unfinished_run_is_an_error(capsys, tmp_path):
    (tmp_path / "run.json").write_text("{}")
    assert "not a finished run" in error_of(capsys, ["generate", str(tmp_path), "a {subject}", "--out",
                                                      str(tmp_path / "g")])


def test_a_real_process_exits_2_without_traceback(tmp_path, subject_dir):
    result = subprocess.run([sys.executable, "-m", "subjectgen.cli", "train", "lora", "--model", str(tmp_path / "x"),
                             "--subject", str(subject_dir), "--class", "dog", "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --model") and "Traceback" not in result.stderr


def test_single_file_pickle_checkpoint_is_refused(capsys, subject_dir, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a checkpoint")
    assert "--allow-pickle" in error_of(capsys, train_args(ckpt, subject_dir, tmp_path / "o"))


def test_masked_loss_without_masks_is_an_error_and_full_masks_equal_no_mask(capsys, tiny_model, subject_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "masked"
    assert "has no mask for --masked-loss" in error_of(capsys, train_args(tiny_model, subject_dir, out, "--masked-loss"))
    assert not out.exists()
    (subject_dir / "masks").mkdir()
    for photo in subject_dir.glob("*.png"):
        Image.new("L", Image.open(photo).size, 255).save(subject_dir / "masks" / photo.name)
    assert main(train_args(tiny_model, subject_dir, out, "--masked-loss", "--steps", "3")) == 0
    assert main(train_args(tiny_model, subject_dir, tmp_path / "plain", "--steps", "3")) == 0
    weights = [load_file(str(tmp_path / run / "pytorch_lora_weights.safetensors")) for run in ("masked", "plain")]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])  # a full mask is no mask
    for photo in subject_dir.glob("*.png"):  # only the top half is the subject: another update
        mask = Image.new("L", Image.open(photo).size, 0)
        mask.paste(255, (0, 0, mask.width, mask.height // 2))
        mask.save(subject_dir / "masks" / photo.name)
    assert main(train_args(tiny_model, subject_dir, tmp_path / "half", "--masked-loss", "--steps", "3")) == 0
    half = load_file(str(tmp_path / "half" / "pytorch_lora_weights.safetensors"))
    assert not all(torch.allclose(half[k], weights[1][k], atol=1e-6) for k in half)
    assert json.loads((tmp_path / "half" / "subject.json").read_text())["settings"]["masked_loss"] is True


def test_score_names_a_missing_folder(capsys, subject_dir, tmp_path):
    err = error_of(capsys, ["score", str(tmp_path / "nope"), "--subject", str(subject_dir), "--prompt", "a dog"])
    assert "images folder" in err and "does not exist" in err


def test_world_train_refuses_bad_steps_before_rendering(capsys, tmp_path):
    out = tmp_path / "world"
    assert "--unet-steps: must be an integer >= 1" in error_of(capsys, ["world", "train", "--out", str(out),
                                                                  "--unet-steps", "0"])
    assert "past --unet-steps" in error_of(capsys, ["world", "train", "--out", str(out), "--unet-steps", "10",
                                                    "--stop-step", "11"])
    assert not out.exists()


def test_subject_start_errors(capsys, tiny_model, tmp_path):
    out = tmp_path / "images"
    assert "applies to run folders" in error_of(capsys, ["generate", tiny_model, "a dog", "--subject-start", "0.2",
                                                         "--out", str(out)])
    assert "--subject-start: must be a finite number in [0, 1)" in error_of(capsys, ["generate", tiny_model, "a dog", "--subject-start", "1", "--out", str(out)])
    assert "in [0, 1)" in error_of(capsys, ["bench", "--out", str(tmp_path / "b"), "--subject-start", "-0.1"])
    assert not out.exists() and not (tmp_path / "b").exists()


def test_generate_on_a_missing_run_talks_about_a_run(capsys, tmp_path):
    err = error_of(capsys, ["generate", str(tmp_path / "runs" / "dog"), "a {subject}", "--out", str(tmp_path / "g")])
    assert err.startswith(f"error: no run folder at {tmp_path / 'runs' / 'dog'}") and "subjectgen train" in err
    assert not (tmp_path / "g").exists()


def test_generate_shows_progress_unless_quiet(capsys, tiny_model, tmp_path):
    argv = ["generate", tiny_model, "a dog", "-n", "2", "--steps", "2", "--out", str(tmp_path / "g")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "generate: 100%" in captured.err and "2/2" in captured.err and "wrote 2 images" in captured.out
    assert main(argv[:-1] + [str(tmp_path / "q"), "--quiet"]) == 0
    assert "generate" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "lora", "--subject", "x", "--class", "dog", "--out", "o", "--stpes", "10"],
     "unknown flag --stpes; did you mean --steps? (see 'subjectgen train lora --help')"),
    (["train", "lora", "--subjet", "x", "--class", "dog", "--out", "o"],  # argparse would say --subject is missing
     "unknown flag --subjet; did you mean --subject? (see 'subjectgen train lora --help')"),
    (["--threads", "1", "generate", "runs/x", "a {subject}", "--stesp", "3"],
     "unknown flag --stesp; did you mean --steps? (see 'subjectgen generate --help')"),
    (["train", "textual-inversion", "--subject", "x", "--class", "dog", "--out", "o", "--rank", "8"],
     "--rank is a flag of lora, not of textual-inversion (see 'subjectgen train textual-inversion --help')"),
    (["world", "reserved", "--cuont", "3"], "unknown flag --cuont; did you mean --count?"),
])
def test_a_misspelt_flag_is_named_with_the_nearest_flag_of_its_command(capsys, argv, message):
    assert message in error_of(capsys, argv)


def test_a_missing_local_path_is_refused_at_once_without_the_hub(tmp_path, subject_dir, monkeypatch):
    """A path that can only be local (its first folder exists here, or it starts with ./, /, ~) is refused before
    torch is imported, and the hub is never mentioned (issue 40)."""
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    probe = ("import sys; from subjectgen.cli import main; code = main(sys.argv[1:]); "
             "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    for argv in (["generate", "runs/nope", "a {subject}", "--out", "o"],
                 ["train", "lora", "--model", "./models/nope", "--subject", str(subject_dir), "--class", "dog",
                  "--out", "o"]):
        result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "hub" not in result.stderr.replace("hub id is", "") and "torch was imported" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_the_api_refuses_a_missing_local_path_without_the_hub(tmp_path, monkeypatch):
    """The API resolves runs and models as the CLI does: a path that can only be local is a UserError naming the
    path, never a hub download attempt (issue 40)."""
    from subjectgen import UserError, generate_to_folder, load_model

    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    for call in (lambda: generate_to_folder("runs/nope", ["a {subject}"], tmp_path / "o"),
                 lambda: load_model("runs/nope"), lambda: load_model("./models/nope")):
        with pytest.raises(UserError) as caught:
            call()
        assert "nope" in str(caught.value) and "hub" not in str(caught.value).replace("hub id", "")
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "o").exists()
