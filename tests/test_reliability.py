"""Reliability: ranges checked before any work, one writer per folder, exact logs across kills, photos,
a diverged run that can be continued, a full disk, plots of any score."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
from PIL import Image

from subjectgen.cli import main
from subjectgen.config import BenchConfig, SampleSettings, TrainConfig
from subjectgen.errors import TrainingDiverged, UserError
from subjectgen.training.outdir import LOCK, hold, release
from subjectgen.settings import Bound
from subjectgen.world.config import EvaluatorTrainConfig, WorldTrainConfig

from test_cli import error_of, train_args


def ranged_fields(cls):
    return [(f.name, f.metadata["bound"]) for f in fields(cls) if "bound" in f.metadata]


def outside(bound: Bound) -> list:
    """Values just outside a range, and the non-finite ones."""
    bad = [math.nan, math.inf, -math.inf]
    if bound.low is not None:
        bad.append(bound.low if bound.low_open else bound.low - 1)
    if bound.high is not None:
        bad.append(bound.high if bound.high_open else bound.high + 1)
    if bound.integer:
        bad.append(1.5)
    return bad


@pytest.mark.parametrize("cls", [TrainConfig, SampleSettings, BenchConfig, WorldTrainConfig, EvaluatorTrainConfig])
def test_every_declared_range_is_enforced_by_the_api(cls):
    required = {"method": "lora", "subject_dir": "s", "class_noun": "dog", "out": "o", "bench": "emoji"}
    base = {f.name: required[f.name] for f in fields(cls) if f.name in required}
    cls(**base)  # the defaults are inside their ranges
    for name, bound in ranged_fields(cls):
        for value in outside(bound):
            with pytest.raises(UserError, match=name.replace("_", "-").split("-")[-1]):
                cls(**base, **{name: value})


@pytest.mark.parametrize("argv,flag", [
    (["--steps", "0"], "--steps"), (["--steps", "-1"], "--steps"), (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr"), (["--rank", "0"], "--rank"), (["--batch-size", "0"], "--batch-size"),
    (["--prior-weight", "-1"], "--prior-weight"), (["--lr-warmup-steps", "-1"], "--lr-warmup-steps"),
    (["--seed", "-3"], "--seed"), (["--snr-gamma", "inf"], "--snr-gamma"), (["--steps", "ten"], "--steps"),
])
def test_train_flags_out_of_range_are_one_line_errors_and_write_nothing(capsys, tmp_path, subject_dir, argv, flag):
    out = tmp_path / "run"
    err = error_of(capsys, train_args("tiny", subject_dir, out, *argv))
    assert f"argument {flag}:" in err and "must be" in err
    assert not out.exists()


def test_prior_preservation_needs_class_images(capsys, tiny_model, subject_dir, tmp_path):
    err = error_of(capsys, train_args(tiny_model, subject_dir, tmp_path / "r", "--prior-preservation",
                                      "--num-class-images", "0"))
    assert "--num-class-images must be at least 1 with prior preservation" in err
    assert not (tmp_path / "r").exists()


def test_the_lock_names_a_live_holder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    code = (f"import os, sys, time; sys.path.insert(0, {str(Path(__file__).parents[1] / 'src')!r});"
            f"from subjectgen.training.outdir import hold; hold({str(folder)!r}); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"pid {holder.pid}"):
        hold(folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    hold(folder)  # the kernel dropped the dead process's lock: taken over, with our pid in the file
    assert (folder / LOCK).read_text().strip() == str(os.getpid())
    hold(folder)  # the holder may take it again (bench -> report) ...
    release(folder)
    release(folder)  # ... and gives it back as often


def test_two_trainings_on_one_out_one_is_refused(tiny_model, subject_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "subjectgen.cli", *train_args(tiny_model, subject_dir, out, "--steps", "40")]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "run.json").is_file() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "another subjectgen process" in second.stderr or "already holds this finished run" in second.stderr
    rows = (out / "loss.csv").read_text().splitlines()
    assert len(rows) == 41 and [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 41)]


def kill_when(cmd: list[str], out: Path, rows: int) -> None:
    """Start a training and SIGKILL it once loss.csv has this many step rows."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    log = out / "loss.csv"
    while proc.poll() is None and time.time() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) > rows:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "subject.json").exists(), "the run finished before it could be killed"


def test_loss_log_after_kills_before_and_after_a_checkpoint_equals_an_uninterrupted_run(tiny_model, subject_dir,
                                                                                        tmp_path):
    def cmd(out, *extra):
        return [sys.executable, "-m", "subjectgen.cli", "train", "lora", "--model", tiny_model, "--subject",
                str(subject_dir), "--class", "dog", "--out", str(out), "--quiet", "--steps", "120",
                "--checkpoint-every", "50", *extra]

    assert subprocess.run(cmd(tmp_path / "full"), capture_output=True, timeout=600).returncode == 0
    out = tmp_path / "killed"
    kill_when(cmd(out), out, rows=5)                # before the first checkpoint
    assert not (out / "checkpoints").exists()
    kill_when(cmd(out, "--resume"), out, rows=70)   # after it: resumes from step 50
    done = subprocess.run(cmd(out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "loss.csv").read_text() == (tmp_path / "full" / "loss.csv").read_text()


def test_a_half_written_last_row_is_dropped_on_resume(tmp_path):
    from subjectgen.training import LossLog

    path = tmp_path / "loss.csv"
    path.write_text("step,loss,instance,prior,lr\n1,0.5,0.5,,0.001\n2,0.4,0.4,,0.001\n3,0.3")
    LossLog(path, True, start_step=2)
    assert path.read_text().splitlines() == ["step,loss,instance,prior,lr", "1,0.5,0.5,,0.001", "2,0.4,0.4,,0.001"]
    LossLog(path, True, start_step=0)
    assert path.read_text().splitlines() == ["step,loss,instance,prior,lr"]


def diverging(tiny_model, subject_dir, out, *extra):
    return train_args(tiny_model, subject_dir, out, "--lr", "1e12", "--max-grad-norm", "0", "--steps", "20", *extra)


def test_a_diverged_run_continues_from_its_checkpoint_with_the_suggested_command(capsys, monkeypatch, tiny_model,
                                                                                 subject_dir, tmp_path):
    import subjectgen.methods.base as base  # the method's loss hook computes it

    real_loss, calls = base.diffusion_loss, []

    def diverges_at_step_7(*args, **kwargs):  # the loss of a run gone bad after good checkpoints at steps 3 and 6
        calls.append(1)
        loss, parts = real_loss(*args, **kwargs)
        return (loss * math.nan if len(calls) >= 7 else loss), parts

    out = tmp_path / "nan"
    argv = train_args(tiny_model, subject_dir, out, "--steps", "12", "--checkpoint-every", "3", "--lr", "1e-3")
    monkeypatch.setattr(base, "diffusion_loss", diverges_at_step_7)
    err = error_of(capsys, argv)
    assert "loss became nan at step 7" in err and "step-000006" in err
    assert "add --resume --lr 0.0001 to the same command" in err
    monkeypatch.undo()
    assert main(argv + ["--resume", "--lr", "0.0001"]) == 0  # the command the message gave, as given
    manifest = json.loads((out / "subject.json").read_text())
    assert manifest["settings"]["lr"] == 1e-4
    assert manifest["resumes"] == [{"step": 6, "changed": {"lr": [1e-3, 1e-4]}}]
    rows = [r.split(",") for r in (out / "loss.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(1, 13)) and all(math.isfinite(float(r[1])) for r in rows)
    assert [float(r[-1]) for r in rows] == [1e-3] * 6 + [1e-4] * 6


def test_a_diverged_run_without_checkpoint_says_start_again(capsys, tiny_model, subject_dir, tmp_path):
    out = tmp_path / "nan"
    err = error_of(capsys, diverging(tiny_model, subject_dir, out))
    assert "no checkpoint was written yet" in err and "add --overwrite --lr 1e+11" in err
    assert main(diverging(tiny_model, subject_dir, out) + ["--overwrite", "--lr", "1e-4"]) == 0
    assert json.loads((out / "subject.json").read_text())["settings"]["lr"] == 1e-4


def test_resume_still_refuses_other_changes(capsys, tiny_model, subject_dir, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(TrainingDiverged):
        from subjectgen.training import train

        train(TrainConfig(method="lora", model=tiny_model, subject_dir=str(subject_dir), class_noun="dog",
                          out=str(out), steps=5, lr=1e12, max_grad_norm=0), progress=False)
    err = error_of(capsys, train_args(tiny_model, subject_dir, out, "--rank", "8", "--resume"))
    assert "different settings" in err and "--lr" in err


# --- photos -----------------------------------------------------------------------------------------------


def photos(folder: Path, n: int = 2, size=(40, 40), suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (200, 30 * i, 40)).save(folder / f"{i:02d}{suffix}")
    return folder


def test_a_tiny_photo_is_refused_by_name(capsys, tiny_model, tmp_path):
    folder = photos(tmp_path / "p")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    err = error_of(capsys, train_args(tiny_model, folder, tmp_path / "run"))
    assert "dot.png is 1x1 px" in err and "at least 32 px" in err
    assert not (tmp_path / "run").exists()


def test_avif_photos_are_read(tiny_model, tmp_path):
    from subjectgen.subjects import load_subject

    subject = load_subject(photos(tmp_path / "p", suffix=".avif"), "dog", 32)
    assert [p.name for p in subject.paths] == ["00.avif", "01.avif"] and subject.images[0].size == (32, 32)


def test_heic_is_refused_by_name_without_its_plugin(capsys, tiny_model, tmp_path, monkeypatch):
    import subjectgen.photos as photos_module

    monkeypatch.setattr(photos_module, "heif_plugin", lambda: False)
    folder = photos(tmp_path / "p")
    (folder / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    err = error_of(capsys, train_args(tiny_model, folder, tmp_path / "run"))
    assert "phone.heic is a HEIC/HEIF photo" in err and "pillow-heif" in err


def test_skipped_files_and_many_photos_are_named_in_warnings(tiny_model, tmp_path):
    from subjectgen.subjects import load_subject

    folder = photos(tmp_path / "p", n=11)
    (folder / "notes.txt").write_text("my dog")
    with pytest.warns(UserWarning) as caught:
        load_subject(folder, "dog", 32)
    text = " | ".join(str(w.message) for w in caught)
    assert "skipping" in text and "notes.txt" in text and "holds 11 photos" in text


# --- a full disk ------------------------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target", ["pathlib.Path.write_bytes", "PIL.Image.Image.save",
                                    "subjectgen.safeio.save_file", "subjectgen.training.checkpoints.save_file",
                                    "diffusers.StableDiffusionPipeline.save_lora_weights"])
def test_a_full_disk_is_a_one_line_error_and_leaves_no_partial_file(capsys, monkeypatch, tiny_model, subject_dir,
                                                                    tmp_path, target):
    out = tmp_path / "run"
    monkeypatch.setattr(target, no_space)
    err = error_of(capsys, train_args(tiny_model, subject_dir, out, "--checkpoint-every", "1", "--validate-every", "1"))
    assert "no space left on the device while writing" in err
    assert not (out / "subject.json").exists()
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".final")
                 or (p.parent.name == "checkpoints" and p.name.startswith("."))]
    assert not leftovers, leftovers


def test_a_full_disk_while_generating_is_a_one_line_error(capsys, monkeypatch, tiny_model, tmp_path):
    monkeypatch.setattr("PIL.Image.Image.save", no_space)
    err = error_of(capsys, ["generate", tiny_model, "a dog", "-n", "1", "--steps", "2", "--quiet",
                            "--out", str(tmp_path / "g")])
    assert "no space left" in err and "p00-0.png" in err
    assert not list((tmp_path / "g").glob("*")) if (tmp_path / "g").exists() else True


# --- plots ------------------------------------------------------------------------------------------------


def test_plots_draw_negative_and_missing_scores(tmp_path):
    from subjectgen.eval.plots import bar_chart, scatter_plot

    bar_chart(tmp_path / "bars.png", {"a": [-0.2, 0.5, None], "b": [0.1, -0.05, math.nan]}, ["DINO", "CLIP-I", "CLIP-T"])
    scatter_plot(tmp_path / "dots.png", {"a": [(-0.3, -0.1), (0.2, math.inf)], "b": []}, "CLIP-T", "DINO")
    bars = Image.open(tmp_path / "bars.png")
    assert bars.size == (560, 360) and len(set(bars.getdata())) > 2
    assert Image.open(tmp_path / "dots.png").size == (560, 360)


def test_a_plot_failure_keeps_the_results_and_the_report(monkeypatch, tmp_path):
    import subjectgen.eval.report as report

    out = tmp_path / "bench"
    pair = out / "pairs" / "lora" / "dog"
    pair.mkdir(parents=True)
    (out / "bench.json").write_text(json.dumps(BenchConfig("emoji", str(out)).protocol()))
    (pair / "scores.json").write_text(json.dumps({
        "method": "lora", "subject": "dog", "class": "dog", "dino": -0.1, "clip_i": 0.2, "clip_t": -0.05,
        "prompts": [], "train_seconds": 1.0, "generate_seconds": 1.0, "steps": 2, "identifier": "sks dog"}))

    def broken(*args, **kwargs):
        raise ValueError("y1 must be greater than or equal to y0")

    monkeypatch.setattr(report, "bar_chart", broken)
    with pytest.warns(UserWarning, match="could not draw the plots"):
        report.write_outputs(out)
    assert (out / "results.json").is_file() and (out / "table.md").is_file() and (out / "report.html").is_file()
    monkeypatch.undo()
    report.write_outputs(out)  # the real plot draws the negative scores
    assert (out / "scores.png").is_file()


def test_argument_errors_come_before_torch_is_imported():
    code = ("import sys\nfrom subjectgen.cli import main\n"
            "for argv in (['train', 'lora', '--steps', '0', '--subject', 'p', '--class', 'dog', '--out', 'o'],\n"
            "             ['train', 'textual-inversion', '--rank', '4', '--subject', 'p', '--class', 'dog', '--out', 'o'],\n"
            "             ['generate', 'run', 'a dog', '--out', 'o', '-n', '0'],\n"
            "             ['bench', '--out', 'o', '--subject-start', '2']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exc:\n        assert exc.code == 2, exc.code\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False" and result.stderr.count("error:") == 4


def test_real_photos_on_the_built_in_model_get_a_warning(tmp_path):
    from subjectgen.subjects import load_subject

    folder = photos(tmp_path / "p", size=(512, 384))
    with pytest.warns(UserWarning, match="up to 384 px and are scaled down to 64 px.*use a Stable Diffusion model"):
        load_subject(folder, "dog", 64, model="builtin")
    with pytest.warns(UserWarning) as caught:  # another small model: the scale, not the emoji-world advice
        load_subject(folder, "dog", 64, model="tiny")
    assert "scaled down" in str(caught[0].message) and "emoji" not in str(caught[0].message)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_subject(photos(tmp_path / "small", size=(128, 128)), "dog", 64, model="builtin")  # 2x: no warning
        load_subject(folder, "dog", 64)  # a check of the photos alone (bench's mask check) warns of nothing


def test_the_thread_policy_uses_the_allowed_cores_shared_by_a_launch_and_obeys_threads(monkeypatch, capsys,
                                                                                      tiny_model, tmp_path):
    import torch

    from subjectgen import threads

    for name in ("SUBJECTGEN_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert threads.choose_threads() == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.choose_threads() == 1  # 6 cores over 4 processes: 1 each, never more threads than cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads() == 3 and threads.choose_threads(2) == 2
    before = torch.get_num_threads()
    try:
        argv = ["--threads", "1", "generate", tiny_model, "a dog", "-n", "1", "--steps", "2", "--quiet",
                "--out", str(tmp_path / "g")]
        assert main(argv) == 0 and torch.get_num_threads() == 1
        assert "--threads: must be an integer >= 1" in error_of(capsys, ["--threads", "0", "report", "x"])
    finally:
        torch.set_num_threads(before)


def test_auto_workers_are_processes_for_a_small_model_on_a_cpu_and_one_otherwise(monkeypatch, capsys, tiny_model,
                                                                                 tmp_path):
    from subjectgen.workers import SMALL_UNET_BYTES, WORKER_BASE_BYTES, choose_workers, unet_bytes

    for name in ("SUBJECTGEN_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    small = dict(cuda=False, cores=6, memory=None)
    assert choose_workers("auto", 30, tiny_model, **small).workers == 6       # one per core, at one thread each
    assert choose_workers("auto", 4, tiny_model, **small).workers == 4        # no more than the jobs
    assert choose_workers("auto", 30, tiny_model, 2, **small).workers == 3    # --threads 2: 6 cores / 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_workers("auto", 30, tiny_model, **small).workers == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    size = unet_bytes(tiny_model)
    assert 0 < size < SMALL_UNET_BYTES and unet_bytes("builtin") < SMALL_UNET_BYTES
    assert choose_workers("auto", 30, tiny_model, cuda=False, cores=6,
                          memory=2 * (WORKER_BASE_BYTES + 4 * size) + 1).workers == 2  # what the memory holds
    assert choose_workers("auto", 30, tiny_model, cuda=True, cores=6, memory=None).workers == 1   # a GPU
    assert choose_workers("auto", 30, "org/hub-model", **small).workers == 1  # unknown size: threads
    big = tmp_path / "big"
    (big / "unet").mkdir(parents=True)
    with open(big / "unet" / "diffusion_pytorch_model.safetensors", "wb") as f:
        f.truncate(SMALL_UNET_BYTES + 1)  # sparse: a Stable Diffusion-sized UNet without the disk
    assert choose_workers("auto", 30, str(big), **small).workers == 1
    assert choose_workers(3, 30, str(big), **small).workers == 3  # a number is taken as given,
    assert choose_workers(3, 2, str(big), **small).workers == 2   # but no more than the jobs
    assert "--workers: must be 'auto' or an integer >= 1" in error_of(capsys, ["bench", "--workers", "0", "--out", "x"])


def test_path_and_photo_errors_come_before_torch_and_diffusers_are_imported(tmp_path):
    """A typo in a path, a folder without photos, a broken photo: the one-line error without loading torch."""
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    cases = [["train", "lora", "--subject", str(tmp_path / "nope"), "--class", "dog", "--out", str(tmp_path / "o")],
             ["train", "lora", "--subject", str(empty), "--class", "dog", "--out", str(tmp_path / "o")],
             ["train", "dreambooth", "--subject", str(broken), "--class", "dog", "--out", str(tmp_path / "o")],
             ["generate", str(tmp_path / "no" / "run"), "a dog", "--out", str(tmp_path / "g")],
             ["bench", "--bench", str(tmp_path / "nope"), "--out", str(tmp_path / "b")],
             ["score", str(tmp_path / "nope"), "--subject", str(empty), "--prompt", "a dog"],
             ["report", str(tmp_path / "nope")]]
    code = ("import json, sys\nfrom subjectgen.cli import main\n"
            f"codes = [main(argv) for argv in json.loads({json.dumps(json.dumps(cases))})]\n"
            "print(codes, 'torch' in sys.modules, 'diffusers' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == f"{[2] * len(cases)} False False", result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(cases) and all(line.startswith("error: ") for line in errors), errors
    assert "does not exist" in errors[0] and "holds no images" in errors[1] and "not an image" in errors[2]
    assert "no run folder at" in errors[3] and "is not a folder" in errors[4] and "no bench.json" in errors[6]
    assert not (tmp_path / "o").exists() and not (tmp_path / "g").exists() and not (tmp_path / "b").exists()
