"""Reliability, round two (issue 36): no user file is ever deleted, a failed start leaves --out as it was,
draws are bounded, multi-worker runs save whole, and bad input is one line."""

from __future__ import annotations

import pytest

from subjectgen.cli import main
from subjectgen.world.emoji import sources_available

from test_cli import error_of

needs_sources = pytest.mark.skipif(not sources_available(), reason="emoji sources not installed (see .ci/run)")


def users_folder(path):
    path.mkdir()
    (path / "thesis.txt").write_text("years of work")
    return path


WRITERS = [["world", "reserved", "--count", "1"], ["world", "build", "--set", "validation"],
           ["world", "train", "--unet-steps", "1", "--vae-steps", "1", "--device", "cpu"],
           ["world", "train-image-encoder", "--steps", "1"], ["world", "train-evaluators", "--clip-steps", "1",
                                                              "--dino-steps", "1"]]


@needs_sources
@pytest.mark.parametrize("argv", WRITERS, ids=lambda a: a[1])
def test_a_writer_never_replaces_a_folder_of_a_users_files(capsys, tmp_path, argv):
    out = users_folder(tmp_path / "mine")
    for extra in ([], ["--overwrite"]):  # not even with --overwrite: the folder is not one subjectgen wrote
        assert "subjectgen did not write" in error_of(capsys, [*argv, "--out", str(out), *extra])
        assert (out / "thesis.txt").read_text() == "years of work" and len(list(out.iterdir())) == 1


@needs_sources
@pytest.mark.parametrize("argv", WRITERS, ids=lambda a: a[1])
def test_the_working_directory_and_its_parents_are_never_replaced(capsys, tmp_path, monkeypatch, argv):
    here = users_folder(tmp_path / "cwd")
    monkeypatch.chdir(here)
    for out in (".", "..", str(here)):
        assert "working directory" in error_of(capsys, [*argv, "--out", out, "--overwrite"])
    assert (here / "thesis.txt").is_file() and (tmp_path / "cwd").is_dir()


@needs_sources
def test_world_reserved_replaces_its_own_folder_only_with_overwrite(capsys, tmp_path):
    out = tmp_path / "held-out"
    argv = ["world", "reserved", "--count", "1", "--out", str(out)]
    assert main(argv) == 0
    first = (out / "subjects.json").read_text()
    assert "--overwrite" in error_of(capsys, argv)
    assert (out / "subjects.json").read_text() == first
    (out / ".subjectgen-output").unlink()  # as an older version wrote it: known by its subjects.json
    assert main([*argv, "--seed", "3", "--overwrite"]) == 0
    assert (out / "subjects.json").read_text() != first


def test_an_empty_folder_is_written_into(tmp_path):
    from subjectgen.safeio import check_output_dir, output_dir

    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "subjects.json")
    with output_dir(tmp_path / "empty", "subjects.json") as tmp:
        (tmp / "subjects.json").write_text("{}")
    assert (tmp_path / "empty" / "subjects.json").is_file()


def two_worker_bench(tiny_model, evaluator_dirs, out):
    import os
    import subprocess
    import sys

    from test_bench import bench_args

    cmd = [sys.executable, "-m", "subjectgen.cli", *bench_args(tiny_model, evaluator_dirs, out, "dreambooth"),
           "--prompts", "1", "--images-per-prompt", "1", "--train-steps", "2", "--sample-steps", "2",
           "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


def test_a_two_worker_dreambooth_bench_saves_whole_pipelines(tiny_model, evaluator_dirs, tmp_path):
    """Each worker saves its own run: the pipeline's text encoder is written in every worker, not only rank 0's,
    and plain diffusers loads each pipeline. A pipeline left incomplete (a worker killed while saving, or an
    older version's save) is trained again by the rerun, not fatal forever."""
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "bench"
    result = two_worker_bench(tiny_model, evaluator_dirs, out)
    assert result.returncode == 0, result.stderr[-3000:]
    for subject in ("dog", "backpack"):
        pipeline = out / "pairs" / "dreambooth" / subject / "run" / "pipeline"
        assert list((pipeline / "text_encoder").glob("*.safetensors")), subject
        StableDiffusionPipeline.from_pretrained(pipeline)
    broken = out / "pairs" / "dreambooth" / "backpack"
    for f in (broken / "run" / "pipeline" / "text_encoder").iterdir():
        f.unlink()
    (broken / "scores.json").unlink()
    result = two_worker_bench(tiny_model, evaluator_dirs, out)
    assert result.returncode == 0, result.stderr[-3000:]
    StableDiffusionPipeline.from_pretrained(broken / "run" / "pipeline")


def test_a_bench_that_fails_to_start_leaves_out_as_it_was(capsys, tiny_model, evaluator_dirs, tmp_path):
    from test_bench import bench_args

    out = tmp_path / "bench"
    small = ["--prompts", "1", "--images-per-prompt", "1", "--train-steps", "1", "--sample-steps", "2"]
    good = bench_args(tiny_model, evaluator_dirs, out) + small
    bad_dino = [str(tmp_path / "no-dino") if a == evaluator_dirs[0] else a for a in good]
    assert "no-dino" in error_of(capsys, bad_dino)
    assert not out.exists()
    bad_model = [str(tmp_path / "no-model") if a == tiny_model else a for a in good]
    assert "no-model" in error_of(capsys, bad_model)
    assert not out.exists()
    out.mkdir()  # an empty folder stays empty
    assert "no-model" in error_of(capsys, bad_model)
    assert list(out.iterdir()) == [] or [p.name for p in out.iterdir()] == [".subjectgen.lock"]
    assert main(good) == 0  # the corrected command is not refused
    assert (out / "results.json").is_file()


@pytest.fixture
def unreachable_hub(monkeypatch):
    """A machine whose DNS cannot look up the hub (huggingface_hub not yet told it is offline)."""
    import socket

    from huggingface_hub import constants

    from subjectgen import hub

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.offline.cache_clear()
    yield
    hub.offline.cache_clear()


def test_an_offline_machine_gets_one_line_at_once_for_hub_evaluators(capsys, unreachable_hub, tiny_model,
                                                                     evaluator_dirs, tmp_path):
    """Hub-id evaluators on a machine that cannot reach the hub: one line before any worker starts, not
    huggingface_hub's five retries per file in each worker (46 s and 22 lines), and --out as it was."""
    from test_bench import bench_args

    out = tmp_path / "bench"
    argv = bench_args(tiny_model, evaluator_dirs, out) + ["--prompts", "1", "--workers", "2"]
    argv[argv.index(evaluator_dirs[0])] = "nobody/dino-that-is-not-cached"
    err = error_of(capsys, argv)
    assert "--dino nobody/dino-that-is-not-cached" in err and "cannot reach the Hugging Face hub" in err
    assert not out.exists()


def test_an_offline_machine_refuses_a_hub_model_at_once(unreachable_hub):
    from huggingface_hub import constants

    from subjectgen import UserError, load_model

    with pytest.raises(UserError, match="could not download model 'nobody/model'"):
        load_model("nobody/model")
    assert constants.HF_HUB_OFFLINE  # the cache only: no request was retried


def test_a_training_that_fails_to_start_writes_no_run_json(capsys, tiny_model, subject_dir, tmp_path):
    from test_cli import train_args

    out = tmp_path / "run"
    argv = ["profusion", "pretrain", "--model", tiny_model, "--images", str(subject_dir), "--out", str(out),
            "--steps", "1", "--quiet"]
    assert "no-encoder" in error_of(capsys, [*argv, "--image-encoder", str(tmp_path / "no-encoder")])
    assert not out.exists()
    assert "no-model" in error_of(capsys, train_args(tmp_path / "no-model", subject_dir, out))
    assert not out.exists()
    out.mkdir()
    assert "no-encoder" in error_of(capsys, [*argv, "--image-encoder", str(tmp_path / "no-encoder")])
    assert list(out.iterdir()) == []  # an empty folder stays empty: not even the writer lock's file is left
    assert main(argv) == 0  # the corrected command needs no --resume
    assert (out / "run.json").is_file()


@pytest.mark.parametrize("argv", [["world", "reserved", "--count", "100000"],
                                  ["world", "reserved", "--count", "500", "--classes", "vase"],
                                  ["apprentice", "experts", "--count", "1300", "--out", "FARM"]])
def test_a_draw_larger_than_the_world_is_one_line_at_once(tmp_path, argv):
    import subprocess
    import sys

    argv = [str(tmp_path / "farm") if a == "FARM" else a for a in argv]
    done = subprocess.run([sys.executable, "-m", "subjectgen.cli", *argv], capture_output=True, text=True,
                          timeout=300)  # before the fix: the draw looped forever
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "ask for at most" in done.stderr, done.stderr
    assert not (tmp_path / "farm").exists()


def test_the_bound_named_is_the_largest_count_that_draws():
    from subjectgen.errors import UserError
    from subjectgen.world.experts import expert_subjects

    with pytest.raises(UserError, match=r"holds only (\d+) rabbit") as refused:
        expert_subjects(1300)
    most = int(str(refused.value).rsplit(" ", 1)[1])
    assert len(expert_subjects(most)) == most
    with pytest.raises(UserError, match=f"at most {most}$"):
        expert_subjects(most + 1)


# --- bad input: one line, nothing written ----------------------------------------------------------------------
def test_filter_thresholds_must_be_finite(capsys, tmp_path):
    from subjectgen.errors import UserError
    from subjectgen.methods.farm import filter_farm

    for flag in ("--tau-t", "--tau-s"):
        assert f"argument {flag}: must be a finite number" in error_of(capsys, ["apprentice", "filter",
                                                                                str(tmp_path), flag, "nan"])
    with pytest.raises(UserError, match="--tau-t must be a finite number"):
        filter_farm(tmp_path, tau_t=float("nan"))


@pytest.mark.parametrize("method", ["textual-inversion", "profusion"])
def test_a_token_that_is_already_a_word_as_clip_stores_it_is_refused(capsys, tiny_model, subject_dir, tmp_path,
                                                                      method):
    out = tmp_path / "run"
    model = "builtin" if method == "profusion" else tiny_model  # the built-in PromptNet is the built-in model's
    err = error_of(capsys, ["train", method, "--model", model, "--subject", str(subject_dir), "--class", "dog",
                            "--out", str(out), "--token", "teapot", "--steps", "1", "--quiet"])
    assert "token 'teapot' is already a word" in err  # CLIP stores it only as 'teapot</w>'; add_tokens takes it
    assert not (out / "run.json").exists()


@pytest.mark.parametrize("flag", ["--methods", "--subjects"])
def test_an_empty_bench_list_is_refused(capsys, tmp_path, flag):
    out = tmp_path / "bench"
    assert f"{flag} '' names nothing" in error_of(capsys, ["bench", "--out", str(out), flag, "", "--quiet"])
    assert f"{flag} ' , ' names nothing" in error_of(capsys, ["bench", "--out", str(out), flag, " , ", "--quiet"])
    assert not out.exists()


def test_an_empty_class_list_is_refused(capsys):
    assert "--classes '' names nothing" in error_of(capsys, ["world", "reserved", "--classes", ""])


def test_the_apprentice_says_which_photos_it_uses(tmp_path):
    from subjectgen.photos import check_subject_folder

    from conftest import draw_subject

    for i in range(7):
        draw_subject(tmp_path / f"{i:02d}.png", shift=i)
    with pytest.warns(UserWarning, match=r"holds 7 photos.*this method uses the first 5: 00.png, 01.png, 02.png, "
                                         r"03.png, 04.png\)"):
        check_subject_folder(tmp_path, "dog", uses=5)
    for i in range(7, 12):
        draw_subject(tmp_path / f"{i:02d}.png", shift=i % 5)
    with pytest.warns(UserWarning, match=r"holds 12 photos.*\(all are used\)"):
        check_subject_folder(tmp_path, "dog")


def test_generate_takes_the_writer_lock_and_refuses_a_file(capsys, tiny_model, tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path / "images"
    argv = ["generate", tiny_model, "a dog", "-n", "1", "--steps", "2", "--quiet", "--out"]
    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parents[1] / 'src')!r});"
            f"from subjectgen.training.outdir import hold; hold({str(folder)!r}); print('held', flush=True); "
            "time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"pid {holder.pid}" in error_of(capsys, [*argv, str(folder)])
        assert not (folder / "grid.png").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main([*argv, str(folder)]) == 0 and (folder / "grid.png").is_file()
    (tmp_path / "note.txt").write_text("mine")
    assert "is a file" in error_of(capsys, [*argv, str(tmp_path / "note.txt")])
    assert (tmp_path / "note.txt").read_text() == "mine"


def test_world_train_on_cuda_without_a_gpu_is_one_line_before_any_work(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "model"
    assert "--device cpu" in error_of(capsys, ["world", "train", "--out", str(out), "--device", "cuda"])
    assert not out.exists()


def test_a_rank_without_a_master_address_is_one_line(capsys, tmp_path, monkeypatch, tiny_model, evaluator_dirs):
    from test_bench import bench_args

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    out = tmp_path / "bench"
    assert "without MASTER_ADDR" in error_of(capsys, bench_args(tiny_model, evaluator_dirs, out))
    assert not out.exists()


def test_a_damaged_checkpoint_on_resume_is_one_line_naming_it(capsys, tiny_model, subject_dir, tmp_path):
    from test_cli import train_args

    out = tmp_path / "run"
    assert main(train_args(tiny_model, subject_dir, out, "--steps", "4", "--checkpoint-every", "2")) == 0
    (out / "subject.json").unlink()  # as if killed after its last checkpoint
    last = sorted((out / "checkpoints").glob("step-*"))[-1] / "trainable.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    err = error_of(capsys, train_args(tiny_model, subject_dir, out, "--steps", "4", "--checkpoint-every", "2",
                                      "--resume"))
    assert str(last) in err and "damaged or truncated" in err and "remove" in err


def test_a_run_manifest_lacking_a_key_is_one_line(capsys, tiny_model, subject_dir, tmp_path):
    import json

    from test_cli import train_args

    run = tmp_path / "run"
    assert main(train_args(tiny_model, subject_dir, run, "--steps", "1")) == 0
    manifest = json.loads((run / "subject.json").read_text())
    del manifest["model"]
    (run / "subject.json").write_text(json.dumps(manifest))
    err = error_of(capsys, ["generate", str(run), "a {subject}", "-n", "1", "--steps", "2", "--out",
                            str(tmp_path / "images")])
    assert "subject.json lacks 'model'" in err
    assert not (tmp_path / "images").exists()


def test_the_filter_refuses_an_image_encoder_made_for_another_model(tiny_model):
    from subjectgen.errors import UserError
    from subjectgen.methods.farm import GeneratorClip
    from subjectgen.models import load_model

    with pytest.raises(UserError, match="train-image-encoder --model"):
        GeneratorClip("builtin", load_model(tiny_model))


def test_a_resume_on_changed_photos_is_refused(capsys, tiny_model, subject_dir, tmp_path):
    from conftest import draw_subject
    from test_cli import train_args

    out = tmp_path / "run"
    args = train_args(tiny_model, subject_dir, out, "--steps", "4", "--checkpoint-every", "2")
    assert main(args) == 0
    (out / "subject.json").unlink()  # as if killed after its last checkpoint
    draw_subject(subject_dir / "00.png", shift=7)  # the photos change meanwhile
    assert "started on other data" in error_of(capsys, [*args, "--resume"])
    assert main([*args, "--overwrite"]) == 0  # a fresh start on the new photos is fine
    (out / "subject.json").unlink()
    assert main([*args, "--resume"]) == 0  # and unchanged photos resume


def test_fp16_on_a_cpu_is_one_line_before_the_run_starts(capsys, tiny_model, subject_dir, tmp_path):
    """accelerate runs fp16 without autocast on a CPU: the frozen weights cast to fp16 met fp32 activations at the
    first step, a traceback after run.json was written (the next run then asked for --resume)."""
    import torch

    from test_cli import train_args

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    argv = train_args(tiny_model, subject_dir, out, "--steps", "1")
    assert "--mixed-precision fp16 needs a GPU" in error_of(capsys, [*argv, "--mixed-precision", "fp16"])
    assert not out.exists()
    assert main([*argv, "--mixed-precision", "bf16"]) == 0


def test_a_damaged_run_record_is_one_line_and_overwrite_replaces_the_run(capsys, tiny_model, subject_dir, tmp_path):
    from test_cli import train_args

    out = tmp_path / "run"
    argv = train_args(tiny_model, subject_dir, out, "--steps", "1")
    assert main(argv) == 0
    (out / "run.json").write_text('{"method": "lo')  # damaged outside subjectgen (its own writes are atomic)
    for extra in ([], ["--resume"], ["--resume", "--overwrite"]):
        err = error_of(capsys, [*argv, *extra])
        assert "run.json is not valid JSON" in err and "pass --overwrite (without --resume)" in err
    assert main([*argv, "--overwrite"]) == 0  # the way out it names works: the record is not read, only replaced
    assert (out / "subject.json").is_file()



def test_the_photo_count_warning_is_printed_once(tmp_path):
    """The CLI's early check of the photos (before torch loads) and the training's own both warned."""
    import os
    import subprocess
    import sys

    from conftest import draw_subject

    (tmp_path / "photos").mkdir()
    for i in range(7):
        draw_subject(tmp_path / "photos" / f"{i:02d}.png", shift=i)
    done = subprocess.run([sys.executable, "-m", "subjectgen.cli", "train", "apprentice", "--subject",
                           str(tmp_path / "photos"), "--class", "dog", "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("holds 7 photos") == 1, done.stderr
