"""Evaluation inside training: the selection rule, eval.csv across kills and resumes, the chosen step's weights."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from subjectgen.cli import main
from subjectgen.training.evaluation import EvalPoint, choose, default_eval_prompts

from test_training_loop import run_cli, train_cmd


def curve(*rows):
    return [EvalPoint(step, dino, 0.0, clip_t) for step, dino, clip_t in rows]


def test_the_rule_takes_the_highest_dino_within_the_clip_t_budget():
    points = curve((10, 0.50, 0.80), (20, 0.70, 0.73), (30, 0.90, 0.60), (40, 0.95, 0.50))
    # 30 and 40 have more likeness but lose more than 10 % of the base's CLIP-T (budget 0.72)
    assert choose(points, base_clip_t=0.80).step == 20
    assert choose(points, base_clip_t=0.60).step == 30  # budget 0.54: 40 (0.50) is still over
    assert choose(points, base_clip_t=0.55).step == 40
    ties = curve((10, 0.70, 0.80), (20, 0.70, 0.79))
    assert choose(ties, base_clip_t=0.80).step == 10  # ties: the earliest
    none_within = curve((10, 0.9, 0.30), (20, 0.95, 0.35), (30, 0.99, 0.20))
    assert choose(none_within, base_clip_t=0.80).step == 20  # the least drift
    assert default_eval_prompts("dog") == ["a {subject} on the beach", "a {subject} wearing a santa hat",
                                           "a red {subject}"]
    assert default_eval_prompts("backpack") == ["a {subject} on the beach", "a red {subject}"]


def eval_flags(evaluator_dirs, *extra):
    dino, clip = evaluator_dirs
    return ["--steps", "30", "--eval-every", "10", "--eval-dino", dino, "--eval-clip", clip, *extra]


def test_eval_csv_and_the_chosen_step_survive_sigkill_and_resume(tiny_model, subject_dir, evaluator_dirs, tmp_path):
    common = eval_flags(evaluator_dirs, "--checkpoint-every", "5", "--select", "best")
    full = run_cli(train_cmd(tiny_model, subject_dir, tmp_path / "full", *common))
    assert full.returncode == 0, full.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(tiny_model, subject_dir, out, *common), stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-000015").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "subject.json").exists(), "the run finished before it could be killed"
    resumed = run_cli(train_cmd(tiny_model, subject_dir, out, *common, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    rows = (out / "eval.csv").read_text().splitlines()
    assert rows == (tmp_path / "full" / "eval.csv").read_text().splitlines() and len(rows) == 5  # header, base, 3
    a = load_file(str(tmp_path / "full" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((out / "subject.json").read_text())["evaluation"]
    assert manifest["chosen_step"] in (10, 20, 30) and [p["step"] for p in manifest["curve"]] == [10, 20, 30]
    assert manifest == json.loads((tmp_path / "full" / "subject.json").read_text())["evaluation"]


def test_select_best_keeps_the_chosen_steps_weights(tiny_model, subject_dir, evaluator_dirs, tmp_path):
    best = run_cli(train_cmd(tiny_model, subject_dir, tmp_path / "best", *eval_flags(evaluator_dirs, "--select",
                                                                                     "best")))
    assert best.returncode == 0, best.stderr
    chosen = json.loads((tmp_path / "best" / "subject.json").read_text())["evaluation"]["chosen_step"]
    short = run_cli(train_cmd(tiny_model, subject_dir, tmp_path / "short", "--steps", str(chosen)))
    assert short.returncode == 0, short.stderr
    a = load_file(str(tmp_path / "best" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "short" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same trajectory, stopped where the rule chose
    assert not (tmp_path / "best" / "eval_best.safetensors").exists()


@pytest.mark.parametrize("flags, words", [
    (["--eval-every", "5", "--eval-dino", "/nonexistent/dino"], "--eval-every: could not load evaluator models"),
    (["--select", "best"], "--select best needs --eval-every"),
])
def test_eval_flags_that_cannot_work_are_one_line_errors_with_nothing_written(tiny_model, subject_dir, tmp_path,
                                                                              capsys, flags, words):
    out = tmp_path / "run"
    assert main(["train", "lora", "--model", tiny_model, "--subject", str(subject_dir), "--class", "dog", "--out",
                 str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and not out.exists()
