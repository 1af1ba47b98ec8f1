"""The benchmark end to end on the tiny model: outputs, averaging, resume after SIGKILL, 2 processes."""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from subjectgen.adapters import MANIFEST
from subjectgen.cli import main
from subjectgen.errors import UserError
from subjectgen.world.build import EMOJIBENCH
from subjectgen.world.emoji import sources_available

SMALL = ["--subjects", "dog,backpack", "--prompts", "2", "--images-per-prompt", "2", "--train-steps", "4"]


def bench_args(tiny_model: str, evaluator_dirs, out: Path, methods: str = "lora") -> list[str]:
    dino, clip = evaluator_dirs
    return ["bench", "--bench", str(EMOJIBENCH), "--model", tiny_model, "--methods", methods, "--out", str(out),
            "--dino", dino, "--clip", clip, "--quiet", *SMALL]


@pytest.fixture(scope="module")
def finished(tiny_model, evaluator_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "out"
    # at one thread, as the subprocesses compared with it run (run_bench_process, --workers auto): a sum split
    # over two threads rounds differently, and four training steps carry that past 1e-5 (CI, 2 cores)
    assert main(["--threads", "1", *bench_args(tiny_model, evaluator_dirs, out)]) == 0
    return out


def test_bench_writes_every_output(finished):
    results = json.loads((finished / "results.json").read_text())
    assert set(results["pairs"]) == {"oracle", "baseline", "lora"} | ({"perfect"} if sources_available() else set())
    pair = results["pairs"]["lora"]["dog"]
    assert [p["prompt"] for p in pair["prompts"]] == ["a dog in the jungle", "a dog in the snow"]  # identifier removed
    assert pair["identifier"] and pair["identifier"] != "dog" and pair["train_seconds"] > 0
    for method in ("baseline", "lora"):
        for subject in ("dog", "backpack"):
            files = [f for p in results["pairs"][method][subject]["prompts"] for f in p["files"]]
            assert len(files) == 4 and all((finished / f).is_file() for f in files)
    for name in ("table.md", "report.html", "scores.png", "tradeoff.png"):
        assert (finished / name).stat().st_size > 0
    assert "| lora |" in (finished / "table.md").read_text()
    by_type = results["summary"]["lora"]["by_type"]  # two prompts, both scenes: one type, equal to the whole table
    assert list(by_type) == ["recontextualization"] and by_type["recontextualization"]["subjects"] == 2
    assert by_type["recontextualization"]["clip_t"] == pytest.approx(results["summary"]["lora"]["clip_t"])
    assert "| lora | recontextualization |" in (finished / "table.md").read_text()
    assert "By prompt type" in (finished / "report.html").read_text()
    assert results["protocol"]["images_per_prompt"] == 2 and "torch" in results["versions"]


def test_averages_per_subject_then_over_subjects(finished):
    results = json.loads((finished / "results.json").read_text())
    pairs = results["pairs"]["lora"]
    for subject in pairs.values():  # a prompt's score is its images' mean; a subject's, its prompts' mean
        for prompt in subject["prompts"]:
            assert prompt["dino"] == pytest.approx(sum(prompt["per_image"]["dino"]) / 2)
        assert subject["clip_t"] == pytest.approx(sum(p["clip_t"] for p in subject["prompts"]) / 2)
    summary = results["summary"]["lora"]
    assert summary["clip_i"] == pytest.approx((pairs["dog"]["clip_i"] + pairs["backpack"]["clip_i"]) / 2)
    images = [v for s in pairs.values() for p in s["prompts"] for v in p["per_image"]["clip_i"]]
    assert summary["clip_i_per_image"] == pytest.approx(sum(images) / len(images))
    oracle = results["summary"]["oracle"]
    assert -1 <= oracle["dino"] <= 1 and "clip_t" not in oracle and oracle["subjects"] == 2


def test_pres_and_div_are_scored_from_the_images_on_disk(finished, evaluator_dirs):
    """PRES from each pair's class-prompt images ('a dog', seed + k), DIV from each prompt's images, for the baseline
    and the method; the perfect row has DIV but no PRES (it has no model to drift)."""
    from subjectgen.eval.metrics import load_evaluators, mean_pairwise_cosine

    ev = load_evaluators(*evaluator_dirs)
    results = json.loads((finished / "results.json").read_text())
    photos = [Image.open(p).convert("RGB") for p in sorted((EMOJIBENCH / "dog").glob("*.png"))]
    for method in ("baseline", "lora"):
        pair = results["pairs"][method]["dog"]
        assert pair["pres_files"] == [f"pairs/{method}/dog/images/class-{k}.png" for k in range(4)]
        class_images = ev.dino_embed([Image.open(finished / f).convert("RGB") for f in pair["pres_files"]])
        want = torch.nn.functional.cosine_similarity(class_images[:, None], ev.dino_embed(photos)[None], dim=-1)
        assert pair["pres"] == pytest.approx(float(want.mean()), abs=1e-5)
        prompt = pair["prompts"][1]
        images = ev.dino_embed([Image.open(finished / f).convert("RGB") for f in prompt["files"]])
        assert prompt["div"] == pytest.approx(1 - mean_pairwise_cosine(images), abs=1e-5)
        assert pair["div"] == pytest.approx(sum(p["div"] for p in pair["prompts"]) / 2)
        assert pair["pres_seconds"] > 0 and results["summary"][method]["pres"] is not None
    if "perfect" in results["pairs"]:
        assert "pres" not in results["pairs"]["perfect"]["dog"] and results["summary"]["perfect"]["div"] is not None
    assert "| PRES ↓ | DIV ↑ |" in (finished / "table.md").read_text()


def test_rerun_skips_finished_pairs_and_report_rebuilds(finished, tiny_model, evaluator_dirs, capsys):
    done = finished / "pairs" / "lora" / "dog" / "scores.json"
    before = done.stat().st_mtime_ns
    assert main(bench_args(tiny_model, evaluator_dirs, finished)) == 0
    assert done.stat().st_mtime_ns == before
    (finished / "table.md").unlink()
    assert main(["report", str(finished)]) == 0
    assert "| baseline |" in (finished / "table.md").read_text()


def test_other_settings_in_the_same_folder_are_refused(finished, tiny_model, evaluator_dirs, capsys):
    args = bench_args(tiny_model, evaluator_dirs, finished)
    args[args.index("--prompts") + 1] = "3"
    assert main(args) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(bench_args(tiny_model, evaluator_dirs, finished) + ["--masked-loss"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_a_bench_folder_from_before_a_setting_existed_resumes(finished, tiny_model, evaluator_dirs, capsys):
    spec = finished / "bench.json"
    original = spec.read_text()
    saved = json.loads(original)
    assert saved.pop("masked_loss") is None and saved.pop("captioning") is None
    try:
        spec.write_text(json.dumps(saved))  # as a bench written before --masked-loss and --captions existed
        assert main(bench_args(tiny_model, evaluator_dirs, finished)) == 0
        done = finished / "pairs" / "lora" / "dog" / "scores.json"
        before = done.stat().st_mtime_ns
        spec.write_text(json.dumps({**saved, "version": 2, "masked_loss": False}))  # version 2: every pair trained off
        assert main(bench_args(tiny_model, evaluator_dirs, finished)) == 2  # each method's own may be on now
        assert "masked_loss False there, None now, captioning 'off' there, None now" in capsys.readouterr().err
        assert main(bench_args(tiny_model, evaluator_dirs, finished) + ["--no-masked-loss", "--captions", "off"]) == 0
        assert done.stat().st_mtime_ns == before  # the same pairs: nothing trained or scored again
    finally:
        spec.write_text(original)  # the session's folder, as the other tests find it


def test_unknown_subject_is_a_one_line_error(tiny_model, evaluator_dirs, tmp_path, capsys):
    args = bench_args(tiny_model, evaluator_dirs, tmp_path / "out")
    args[args.index("--subjects") + 1] = "dog,unicorn"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unicorn" in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_masked_loss_bench_checks_every_mask_first_and_trains_with_them(tiny_model, evaluator_dirs, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"  # EmojiBench's photos without its masks/ folders
    for name in ("dog", "backpack"):
        shutil.copytree(EMOJIBENCH / name, bare / name, ignore=shutil.ignore_patterns("masks"))
    shutil.copy(EMOJIBENCH / "prompts_and_classes.txt", bare)
    args = bench_args(tiny_model, evaluator_dirs, tmp_path / "out") + ["--masked-loss"]
    args[args.index("--bench") + 1] = str(bare)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no mask for --masked-loss" in err and err.count("\n") == 1 and not (tmp_path / "out").exists()
    args[args.index("--bench") + 1] = str(EMOJIBENCH)
    args[args.index("--subjects") + 1] = "dog"
    assert main(args) == 0
    manifest = json.loads((tmp_path / "out" / "pairs" / "lora" / "dog" / "run" / "subject.json").read_text())
    assert manifest["settings"]["masked_loss"] is True


def run_bench_process(args: list[str], env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "subjectgen.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or {**os.environ, "OMP_NUM_THREADS": "1"},
                            **kwargs)


def test_killed_bench_resumes_to_the_same_results(finished, tiny_model, evaluator_dirs, tmp_path):
    out = tmp_path / "out"
    process = run_bench_process(bench_args(tiny_model, evaluator_dirs, out))
    first = out / "pairs" / "baseline" / "dog" / "scores.json"
    deadline = time.time() + 300
    while not first.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-run: some pairs done, the rest not
    process.wait()
    assert first.is_file() and not (out / "results.json").exists()
    stamp = first.stat().st_mtime_ns
    resumed = run_bench_process(bench_args(tiny_model, evaluator_dirs, out))
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert first.stat().st_mtime_ns == stamp  # not redone
    got = json.loads((out / "results.json").read_text())["summary"]
    want = json.loads((finished / "results.json").read_text())["summary"]
    for method in ("baseline", "lora"):
        for metric in ("dino", "clip_i", "clip_t"):
            assert got[method][metric] == pytest.approx(want[method][metric], abs=1e-5)


def test_two_processes_split_the_subjects(finished, tiny_model, evaluator_dirs, tmp_path):
    out = tmp_path / "out"
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "subjectgen.cli"]
    result = subprocess.run([sys.executable, *launch, *bench_args(tiny_model, evaluator_dirs, out)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads((out / "results.json").read_text())
    want = json.loads((finished / "results.json").read_text())
    assert got["pairs"]["lora"]["backpack"]["clip_i"] == pytest.approx(want["pairs"]["lora"]["backpack"]["clip_i"],
                                                                        abs=1e-5)
    runs = [json.loads((out / "pairs" / "lora" / s / "run" / "subject.json").read_text()) for s in ("dog", "backpack")]
    assert [r["metrics"]["world_size"] for r in runs] == [1, 1]  # each process trained its own subject alone


def test_demo_report_scores_base_and_personalized(tiny_model, tmp_path):
    from subjectgen.demo import run_demo

    out = run_demo(tmp_path / "demo", "dog", model=tiny_model, steps=3, progress=False)
    scores = json.loads((out / "scores.json").read_text())
    for name in ("base", "personalized"):
        assert all(-1 <= scores[name]["mean"][m] <= 1 for m in ("dino", "clip_i", "clip_t"))
        assert [p["prompt"] for p in scores[name]["prompts"]][1] == "a dog on the beach"
    page = (out / "report.html").read_text()
    assert "CLIP-T" in page and f"{scores['personalized']['mean']['dino']:.3f}" in page
    assert (out / "grid.png").is_file()


def test_the_demo_report_says_plainly_when_the_personalized_images_are_worse():
    from subjectgen.demo import summary

    def scores(dino, clip_i, clip_t):
        rows = [{"prompt": p, "dino": dino, "clip_i": clip_i, "clip_t": t}
                for p, t in zip(("a dog", "a red dog"), clip_t)]
        return {"mean": {"dino": dino, "clip_i": clip_i, "clip_t": sum(clip_t) / 2}, "prompts": rows}

    manifest = {"subject": "mpp dog", "class": "dog", "settings": {"steps": 300}}
    prompts = ["a {subject}", "a red {subject}"]
    worse = summary(manifest, prompts, {"base": scores(0.75, 0.27, (0.78, 0.70)),
                                        "personalized": scores(0.68, 0.25, (0.42, 0.69))}, "the sample dog")
    assert "'a mpp dog'" in worse[0] and "300 steps" in worse[0]
    assert "not look more like the photos" in worse[1] and "not learned" in worse[1]
    assert "follow 1 of 2 prompts" in worse[2] and "a red mpp dog" in worse[2] and "weaker or missing" in worse[2]
    better = summary(manifest, prompts, {"base": scores(0.5, 0.2, (0.7, 0.7)),
                                         "personalized": scores(0.6, 0.3, (0.7, 0.69))}, "the sample dog")
    assert "look more like the photos" in better[1] and "not" not in better[1]
    assert "follow 2 of 2 prompts" in better[2] and "weaker" not in better[2]


def test_the_default_demo_is_the_subject_and_prompts_chosen_on_the_validation_set(tiny_model, tmp_path):
    from subjectgen.demo import DEMO, run_demo
    from subjectgen.world.catalog import VALIDATION

    spec = json.loads((DEMO / "demo.json").read_text())
    if spec["subject"] in VALIDATION:  # chosen by the rule; else EmojiBench's dog, and the note says why
        assert VALIDATION[spec["subject"]][0] == spec["class"] and "chosen with its prompts" in spec["note"]
    else:
        assert spec["subject"] == "dog" and "no validation subject met the rule" in spec["note"]
    assert len(spec["prompts"]) == 4 and all("{subject}" in p for p in spec["prompts"])
    out = run_demo(tmp_path / "demo", model=tiny_model, steps=2, progress=False)
    scores = json.loads((out / "scores.json").read_text())
    assert [p["prompt"] for p in scores["base"]["prompts"]] == [p.replace("{subject}", spec["class"])
                                                               for p in spec["prompts"]]
    photos = sorted(p.name for p in (DEMO / spec["subject"]).glob("*.png"))
    assert sorted(p.name for p in (out / "photos").glob("*.png")) == photos
    page = (out / "report.html").read_text()
    assert html.escape(spec["note"], quote=True) in page and "personalized · seed 1" in page
    assert page.index("What happened") < page.index("The subject's photos")  # the plain words come first
    plain = page[page.index("What happened"):page.index("The subject's photos")]
    assert html.escape(scores["summary"][1], quote=True) in plain and "<div class='row'>" not in plain


def test_a_method_can_be_added_to_a_finished_bench(finished, tiny_model, evaluator_dirs):
    args = bench_args(tiny_model, evaluator_dirs, finished, methods="textual-inversion")
    assert main(args) == 0
    results = json.loads((finished / "results.json").read_text())
    assert {"lora", "textual-inversion"} <= set(results["summary"])


DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dreambench"


@pytest.mark.skipif(not DREAMBENCH.is_dir(), reason="../shared/datasets/dreambench not present")
def test_bench_runs_on_the_real_dreambench_folder(tiny_model, evaluator_dirs, tmp_path):
    dino, clip = evaluator_dirs
    out = tmp_path / "db"
    assert main(["bench", "--bench", str(DREAMBENCH), "--model", tiny_model, "--methods", "lora", "--out", str(out),
                 "--dino", dino, "--clip", clip, "--quiet", "--subjects", "dog,teapot", "--prompts", "1",
                 "--images-per-prompt", "1", "--train-steps", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"]["lora"]["teapot"]["prompts"][0]["prompt"] == "a teapot in the jungle"
    assert results["pairs"]["lora"]["dog"]["prompts"][0]["prompt"] == "a dog in the jungle"
    photos = [p for p in (DREAMBENCH / "dog").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert len(list((out / "photos" / "dog").glob("*.png"))) == len(photos)


def test_a_bench_folder_refuses_to_resume_on_other_weights(finished, tiny_model, evaluator_dirs, tmp_path, capsys):
    """Same model name, other weights (as `builtin` after a retrain): the finished pairs must not be mixed in."""
    import shutil

    from safetensors.torch import load_file, save_file

    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_model, retrained)
    args = bench_args(str(retrained), evaluator_dirs, finished)
    spec = finished / "bench.json"
    saved = json.loads(spec.read_text())
    spec.write_text(json.dumps({**saved, "model": str(retrained)}))  # the folder as if started on this path
    try:
        weights = next((retrained / "unet").glob("*.safetensors"))
        tensors = load_file(weights)
        name = next(iter(tensors))
        save_file({**tensors, name: tensors[name] + 1}, weights)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "other settings (model_hash " in err and " now); rerun it" in err and "\n" not in err.strip()
        shutil.copy(next((Path(tiny_model) / "unet").glob("*.safetensors")), weights)  # the same weights: resumes
        assert main(args) == 0
    finally:
        spec.write_text(json.dumps(saved))


def test_subject_start_is_part_of_the_protocol_and_changes_only_the_methods_images(finished, tiny_model,
                                                                                    evaluator_dirs, tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "late"
    assert main(bench_args(tiny_model, evaluator_dirs, out) + ["--subject-start", "0.5"]) == 0
    assert json.loads((out / "bench.json").read_text())["subject_start"] == 0.5

    def pixels(folder, method):
        return np.asarray(Image.open(folder / "pairs" / method / "dog" / "images" / "p00-0.png"))

    assert np.array_equal(pixels(out, "baseline"), pixels(finished, "baseline"))
    assert not np.array_equal(pixels(out, "lora"), pixels(finished, "lora"))


def test_runs_from_reuses_what_was_made_the_same_way(finished, tiny_model, evaluator_dirs, tmp_path, capsys):
    def same(out, method, subject, name):
        mine, theirs = (folder / "pairs" / method / subject / name for folder in (out, finished))
        return mine.read_bytes() == theirs.read_bytes()

    out = tmp_path / "sweep"  # only a sampling setting differs: the runs and the baseline are copied
    args = bench_args(tiny_model, evaluator_dirs, out) + ["--subject-start", "0.5", "--runs-from", str(finished)]
    assert main(args) == 0
    for subject in ("dog", "backpack"):  # a retrained run would write a new manifest (its own train seconds)
        assert same(out, "lora", subject, f"run/{MANIFEST}") and same(out, "lora", subject, "train_seconds.json")
        assert same(out, "baseline", subject, "scores.json")
        assert not same(out, "lora", subject, "scores.json")
    assert "runs_from" not in json.loads((out / "bench.json").read_text())  # copied runs are the same runs

    out = tmp_path / "longer"  # other training: the baseline is copied, the runs are trained afresh
    args = bench_args(tiny_model, evaluator_dirs, out) + ["--runs-from", str(finished)]
    args[args.index("--train-steps") + 1] = "5"
    assert main(args) == 0
    assert same(out, "baseline", "dog", "scores.json") and not same(out, "lora", "dog", f"run/{MANIFEST}")

    args.append("--masked-loss")  # nothing made the same way: refused before anything is written
    args[args.index("--out") + 1] = str(tmp_path / "other")
    args[args.index("--prompts") + 1] = "1"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "prompts" in err and err.count("\n") == 1 and not (tmp_path / "other").exists()
    assert main(bench_args(tiny_model, evaluator_dirs, tmp_path / "x") + ["--runs-from", str(tmp_path)]) == 2
    assert "not a bench folder" in capsys.readouterr().err


def test_new_evaluators_score_the_same_images_again_without_training_or_sampling(finished, tiny_model,
                                                                                 evaluator_dirs, tmp_path):
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)  # another DINO: only the evaluators differ from `finished`
    dino = tmp_path / "dino"
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(dino)
    out = tmp_path / "rescored"
    args = bench_args(tiny_model, (str(dino), evaluator_dirs[1]), out) + ["--runs-from", str(finished)]
    assert main(args) == 0
    for method in ("baseline", "lora"):
        for subject in ("dog", "backpack"):
            mine, theirs = (folder / "pairs" / method / subject for folder in (out, finished))
            assert all(a.read_bytes() == b.read_bytes() for a, b in zip(sorted((mine / "images").iterdir()),
                                                                         sorted((theirs / "images").iterdir())))
            assert (mine / "generate_seconds.json").read_bytes() == (theirs / "generate_seconds.json").read_bytes()
            old, new = (json.loads((f / "scores.json").read_text()) for f in (theirs, mine))
            assert new["clip_t"] == pytest.approx(old["clip_t"]) and new["dino"] != pytest.approx(old["dino"])
    assert (out / "pairs" / "lora" / "dog" / "run" / MANIFEST).read_bytes() == \
        (finished / "pairs" / "lora" / "dog" / "run" / MANIFEST).read_bytes()  # not trained again


def test_workers_split_the_subjects_and_give_the_same_scores(finished, tiny_model, evaluator_dirs, tmp_path):
    from subjectgen.threads import available_cores

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "subjectgen.cli", *bench_args(tiny_model, evaluator_dirs, out), "--workers", "auto"]
    env = {k: v for k, v in os.environ.items() if k not in ("SUBJECTGEN_WORKERS", "OMP_NUM_THREADS",
                                                             "SUBJECTGEN_THREADS")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    if available_cores() >= 2:  # a small model on a CPU, 2 subjects: one process each, at one thread
        assert "bench: 2 worker processes (a small model on" in result.stdout
    got, want = (json.loads((f / "results.json").read_text())["pairs"] for f in (out, finished))
    for method in ("baseline", "lora"):
        for subject in ("dog", "backpack"):
            assert got[method][subject]["clip_i"] == pytest.approx(want[method][subject]["clip_i"], abs=1e-5)
    assert "| lora |" in result.stdout  # rank 0 prints the table once
    bad = subprocess.run(cmd[:-2] + ["--subjects", "unicorn", "--workers", "2"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1  # checked once, before any worker starts


def test_gain_score_matches_a_hand_computation():
    from subjectgen.eval.report import add_gains, table

    def pair(dino, clip_t=0.5):
        return {"dino": dino, "clip_t": clip_t}

    pairs = {"baseline": {"a": pair(0.2, 0.8), "b": pair(0.3, 0.6)}, "perfect": {"a": pair(0.6, 0.8), "b": pair(0.31)},
             "lora": {"a": pair(0.4, 0.6), "b": pair(0.4, 0.5)}}
    summary = {m: {"dino": sum(p["dino"] for p in v.values()) / 2, "clip_t": sum(p["clip_t"] for p in v.values()) / 2,
                   "subjects": 2} for m, v in pairs.items()}
    add_gains(summary, pairs)
    # means: baseline 0.25, perfect 0.455, lora 0.40 -> (0.40 - 0.25) / (0.455 - 0.25)
    assert summary["lora"]["gain"] == pytest.approx(0.15 / 0.205)
    # per subject: a = 0.2 / 0.4 = 0.5; b = 0.1 / 0.01 = 10, clipped to 2 -> mean 1.25
    assert summary["lora"]["gain_per_subject"] == pytest.approx(1.25)
    assert summary["lora"]["clip_t_vs_baseline"] == pytest.approx(0.55 / 0.7 - 1)
    assert "gain" not in summary["perfect"] and "gain" not in summary["baseline"]
    summary["lora"]["gain"] = 1.3
    text = table(summary)
    assert "| gain |" in text and "1.30 (copies the photos)" in text and "-21.4%" in text


@pytest.mark.skipif(not sources_available(), reason="emoji sources not installed (see .ci/run)")
def test_a_world_made_bench_gets_a_perfect_row_and_gain_scores(finished):
    from subjectgen.world.build import render_prompt
    from subjectgen.world.catalog import SUBJECTS

    results = json.loads((finished / "results.json").read_text())
    perfect = results["pairs"]["perfect"]["dog"]
    noun, inst = SUBJECTS["dog"]
    first = perfect["prompts"][0]  # the world's render of the subject in the prompt's context, seed + k
    assert first["prompt"] == "a dog in the jungle"
    rendered = render_prompt(noun, inst, "a dog in the jungle", 1)
    assert (finished / first["files"][1]).read_bytes() and \
        list(Image.open(finished / first["files"][1]).getdata()) == list(rendered.getdata())
    s = results["summary"]
    assert s["lora"]["gain"] == pytest.approx((s["lora"]["dino"] - s["baseline"]["dino"]) /
                                              (s["perfect"]["dino"] - s["baseline"]["dino"]))
    assert "| perfect |" in (finished / "table.md").read_text()


@pytest.mark.skipif(not sources_available(), reason="emoji sources not installed (see .ci/run)")
@pytest.mark.parametrize("field, value, words", [("emoji", "unicorn_of_nowhere", "names an instance the world cannot"),
                                                 ("hue", "red", "has an attribute the world does not have"),
                                                 ("tone", [90], "has an attribute the world does not have")])
def test_a_bench_folder_naming_an_unknown_instance_is_a_one_line_error(tiny_model, evaluator_dirs, tmp_path, capsys,
                                                                       field, value, words):
    import shutil

    folder = tmp_path / "bench"
    shutil.copytree(EMOJIBENCH, folder)
    mapping = json.loads((folder / "subjects.json").read_text())
    mapping["dog"][field] = value  # a wrong name, or a value of the wrong type
    (folder / "subjects.json").write_text(json.dumps(mapping))
    dino, clip = evaluator_dirs
    args = ["bench", "--bench", str(folder), "--model", tiny_model, "--out", str(tmp_path / "out"), "--dino", dino,
            "--clip", clip, "--quiet", *SMALL]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"subject 'dog' {words}" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_score_is_marked_best_only_when_it_beats_the_baseline():
    """The demo's own case: the personalized row lost on DINO and CLIP-T and won on CLIP-I (issue 40)."""
    from subjectgen.eval.html import metric_table

    rows = {"baseline": {"dino": 0.751, "clip_i": 0.266, "clip_t": 0.781},
            "personalized": {"dino": 0.681, "clip_i": 0.386, "clip_t": 0.416}}
    html = metric_table(rows, references=("baseline",))
    assert html.count("class='best'") == 1 and "<td class='best'>0.386</td>" in html
    two = {**rows, "other": {"dino": 0.70, "clip_i": 0.30, "clip_t": 0.79}}
    html = metric_table(two, references=("baseline",))  # the best method per column, if above the baseline
    assert "<td class='best'>0.386</td>" in html and "<td class='best'>0.790</td>" in html
    assert html.count("class='best'") == 2


def test_eval_curves_average_over_subjects_from_the_base_row():
    from subjectgen.eval.report import eval_curve

    def row(step, clip_t, dino):
        return {"step": step, "clip_t": clip_t, "dino": dino, "clip_i": 0.0, "backdrop": 0.0}

    pairs = {"dog": {"evaluation": {"base": row(0, 0.8, 0.2), "chosen_step": 4,
                                    "curve": [row(2, 0.7, 0.3), row(4, 0.6, 0.5), row(6, 0.4, 0.6)]}},
             "can": {"evaluation": {"base": row(0, 0.6, 0.4), "chosen_step": 2,
                                    "curve": [row(2, 0.5, 0.5), row(4, 0.4, 0.7)]}},
             "cat": {"dino": 0.5}}  # a pair without eval points takes no part
    curve, chosen = eval_curve(pairs)
    # the steps both runs scored (2, 4), after the base rows; the chosen points: dog's step 4, can's step 2
    assert [v for point in curve for v in point] == pytest.approx([0.7, 0.3, 0.6, 0.4, 0.5, 0.6])
    assert chosen == pytest.approx((0.55, 0.5))
    assert eval_curve({"dog": {"dino": 0.5}}) == ([], None)


def test_the_tradeoff_figure_draws_each_methods_curve_and_chosen_point(tmp_path):
    import numpy as np

    from subjectgen.eval.plots import COLOURS, scatter_plot

    dots = {"baseline": [(0.8, 0.2), (0.7, 0.3)], "lora": [(0.5, 0.6), (0.6, 0.5)]}
    scatter_plot(tmp_path / "plain.png", dots, "CLIP-T", "DINO")
    scatter_plot(tmp_path / "curves.png", dots, "CLIP-T", "DINO", curves={"lora": [(0.75, 0.25), (0.65, 0.45),
                                                                                    (0.55, 0.55)]},
                 chosen={"lora": (0.65, 0.45)})
    plain, curves = (np.asarray(Image.open(tmp_path / n)) for n in ("plain.png", "curves.png"))
    lora = np.all(curves == COLOURS[1], axis=-1).sum() - np.all(plain == COLOURS[1], axis=-1).sum()
    baseline = np.all(curves == COLOURS[0], axis=-1).sum() - np.all(plain == COLOURS[0], axis=-1).sum()
    assert lora > 50 and baseline == 0  # the line and the diamond in LoRA's colour, nothing added to the baseline's


def test_a_bench_with_eval_points_keeps_each_runs_curve_and_chosen_step(tiny_model, evaluator_dirs, tmp_path):
    out = tmp_path / "out"
    args = bench_args(tiny_model, evaluator_dirs, out) + ["--eval-every", "2", "--select", "best"]
    args[args.index("--subjects") + 1] = "dog"
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    pair = results["pairs"]["lora"]["dog"]
    run = json.loads((out / "pairs" / "lora" / "dog" / "run" / "subject.json").read_text())
    assert pair["evaluation"]["chosen_step"] == run["evaluation"]["chosen_step"] in (2, 4)
    assert [r["step"] for r in pair["evaluation"]["curve"]] == [2, 4] and run["settings"]["eval_dino"] == \
        evaluator_dirs[0]  # scored with the bench's evaluators
    assert pair["time_to_subject_seconds"] == run["metrics"]["time_to_subject_seconds"]
    assert run["metrics"]["time_to_subject_step"] == pair["evaluation"]["chosen_step"]
    assert results["summary"]["lora"]["time_to_subject_seconds_per_subject"] == pair["time_to_subject_seconds"]
    assert "evaluation" not in results["pairs"]["baseline"]["dog"]
    assert (out / "tradeoff.png").is_file() and "eval curve" in (out / "report.html").read_text()


def test_with_eval_points_other_evaluators_are_other_runs(tmp_path):
    """--select best keeps the step the evaluators score best: another DINO may keep another step, so its runs are
    not copied (without eval points they are: only the scores differ)."""
    from subjectgen.config import BenchConfig
    from subjectgen.eval.bench import reusable

    for every, want in ((0, {"runs", "images"}), (2, set())):
        old = BenchConfig("emoji", "x", eval_every=every, select="best" if every else "last", dino="a", clip="c")
        (tmp_path / "bench.json").write_text(json.dumps(old.protocol()))
        new = BenchConfig("emoji", "y", eval_every=every, select=old.select, dino="b", clip="c").protocol()
        if want:
            assert reusable(tmp_path, new) == want
        else:
            with pytest.raises(UserError, match="other settings"):
                reusable(tmp_path, new)


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_the_fair_checks_run_on_every_family(family, evaluator_dirs, tmp_path_factory):
    """PRES, DIV, the per-type table, eval curves and time to subject ask nothing of a family: the bench on tiny SDXL
    and FLUX.1 models gives them all, as on SD."""
    from subjectgen import tiny

    model = str(getattr(tiny, f"save_tiny_{family}_pipeline")(tmp_path_factory.mktemp("models") / family))
    out = tmp_path_factory.mktemp("bench") / "out"
    args = bench_args(model, evaluator_dirs, out) + ["--eval-every", "2", "--select", "best", "--pres-images", "2"]
    args[args.index("--subjects") + 1] = "dog"
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    for method in ("baseline", "lora"):
        pair, summary = results["pairs"][method]["dog"], results["summary"][method]
        assert len(pair["pres_files"]) == 2 and -1 <= pair["pres"] <= 1 and 0 <= pair["div"] <= 2
        assert list(summary["by_type"]) == ["recontextualization"]
    lora = results["pairs"]["lora"]["dog"]
    assert lora["evaluation"]["chosen_step"] in (2, 4) and lora["time_to_subject_seconds"] > 0


def test_an_older_bench_folder_reads_as_this_versions(tmp_path):
    from subjectgen.eval.report import read_protocol

    spec = tmp_path / "bench.json"
    for saved, subject_start in (({"subject_start": 0.0}, None),  # version 1's 0 was every run's own
                                 ({"subject_start": 0.5}, 0.5),
                                 ({"subject_start": 0.0, "version": 2}, 0.0), ({"subject_start": None, "version": 2}, None)):
        spec.write_text(json.dumps({**saved, "eval_every": 0, "select": "last"}))
        legacy = "version" not in saved  # no eval points and the last step: what train kept by default then
        assert read_protocol(spec) == {"subject_start": subject_start, "version": 4, "masked_loss": False,
                                       "captioning": "off", "eval_every": None if legacy else 0,
                                       "select": None if legacy else "last", "train_options": {}}
    spec.write_text(json.dumps({"eval_every": 50, "select": "best"}))  # asked for: kept
    assert read_protocol(spec) == {"eval_every": 50, "select": "best", "subject_start": None, "version": 4,
                                   "masked_loss": False, "captioning": "off", "train_options": {}}
    for masked in (False, True):  # before version 3 every pair trained as asked, and made no caption
        spec.write_text(json.dumps({"masked_loss": masked, "version": 2}))
        assert (read_protocol(spec)["masked_loss"], read_protocol(spec)["captioning"]) == (masked, "off")
        spec.write_text(json.dumps({"masked_loss": masked, "version": 3}))  # version 3's own
        assert (read_protocol(spec)["masked_loss"], read_protocol(spec).get("captioning")) == (masked, None)
    spec.write_text(json.dumps({"train_options": {"rank": 8}, "version": 4}))  # version 4's own
    assert read_protocol(spec)["train_options"] == {"rank": 8}


def test_a_methods_own_training_settings_reach_only_the_methods_that_take_them(tiny_model, evaluator_dirs, tmp_path,
                                                                               capsys):
    """--rank reaches LoRA, --num-vectors Textual Inversion, --prior-preservation both; the folder's protocol keeps
    them, so a rerun without them is another bench."""
    out = tmp_path / "out"
    args = bench_args(tiny_model, evaluator_dirs, out, "lora,textual-inversion") + [
        "--subjects", "dog", "--rank", "2", "--num-vectors", "2", "--prior-preservation", "--num-class-images", "2"]
    assert main(args) == 0
    settings = {m: json.loads((out / "pairs" / m / "dog" / "run" / MANIFEST).read_text())["settings"]
                for m in ("lora", "textual-inversion")}
    assert (settings["lora"]["rank"], settings["textual-inversion"]["num_vectors"]) == (2, 2)
    assert settings["textual-inversion"]["rank"] == 4  # not LoRA's flag's: TI has no rank
    assert all(s["prior_preservation"] and s["num_class_images"] == 2 for s in settings.values())
    assert json.loads((out / "bench.json").read_text())["train_options"] == {
        "rank": 2, "prior_preservation": True, "num_class_images": 2, "num_vectors": 2}
    pairs = sorted(p.name for p in (out / "pairs").glob("*/*"))
    assert main(args[:args.index("--rank")]) == 2  # the same folder at the methods' own: refused, nothing trained
    err = capsys.readouterr().err
    assert "training options --rank 2 --prior-preservation --num-class-images 2 --num-vectors 2 there, none now" in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in (out / "pairs").glob("*/*")) == pairs


def test_a_bench_trains_and_samples_in_its_mixed_precision(tiny_model, evaluator_dirs, tmp_path, monkeypatch):
    """--mixed-precision bf16 (what a big model needs on a GPU): the runs train in it, and every run, the baseline's
    too, samples in its dtype (Run.place), so all the methods' images come from one precision."""
    from subjectgen.adapters import Run

    placed, place = [], Run.place

    def recording(run, device, dtype=torch.float32, base_quantization=None):
        placed.append((run.manifest.get("method") or "baseline", dtype, base_quantization,
                       {p.dtype for p in run.components.denoiser.parameters()}))
        return place(run, device, dtype, base_quantization)

    monkeypatch.setattr(Run, "place", recording)
    out = tmp_path / "out"
    assert main(bench_args(tiny_model, evaluator_dirs, out) + ["--subjects", "dog", "--mixed-precision", "bf16",
                                                               "--gradient-checkpointing"]) == 0
    settings = json.loads((out / "pairs" / "lora" / "dog" / "run" / MANIFEST).read_text())["settings"]
    assert settings["mixed_precision"] == "bf16" and settings["gradient_checkpointing"]
    assert {method for method, *_ in placed} == {"baseline", "lora"}
    assert all(dtype == torch.bfloat16 and quantization is None and held == {torch.bfloat16}
               for _, dtype, quantization, held in placed)


def test_runs_with_other_training_options_are_not_reused_but_the_baseline_is(finished):
    from subjectgen.eval.bench import folder_protocol, reusable

    protocol = folder_protocol(finished / "bench.json")
    assert "runs" in reusable(finished, protocol)
    assert reusable(finished, {**protocol, "train_options": {"rank": 8}}) == {"baseline"}


@pytest.mark.parametrize("flags, words", [
    (["--methods", "lora", "--num-vectors", "2"], "--num-vectors: none of the bench's methods (lora) takes it; it is for "
                                                  "textual-inversion"),
    (["--methods", "profusion", "--prior-weight", "2"], "--prior-weight: none of the bench's methods (profusion)"),
    (["--methods", "lora", "--rank", "0"], "--rank: must be an integer >= 1"),
    (["--methods", "textual-inversion", "--prior-preservation"],  # TI makes no class images by default
     "--methods textual-inversion: --num-class-images must be at least 1 with prior preservation"),
    (["--methods", "dreambooth", "--base-quantization", "int8"], "--base-quantization: none of the bench's methods "
                                                                 "(dreambooth) takes it; it is for lora"),
    (["--methods", "lora", "--mixed-precision", "fp16"], "--mixed-precision fp16 needs a GPU"),
])
def test_a_training_setting_no_method_can_take_is_a_one_line_error(tiny_model, evaluator_dirs, tmp_path, capsys,
                                                                   flags, words):
    args = bench_args(tiny_model, evaluator_dirs, tmp_path / "out") + flags
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own check of a number's range
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, words", [({"rank": 0}, "--rank 0: lora needs an integer >= 1"),
                                            ({"rank": True}, "--rank True: lora needs"),
                                            ({"prior_preservation": 1}, "--prior-preservation takes no value"),
                                            ({"mixed_precision": "fp8"}, "--mixed-precision fp8: choose one of no, "),
                                            ({"base_quantization": "int4"}, "--base-quantization int4: choose one"),
                                            ({"steps": 5}, "--steps is not a training setting the bench passes on")])
def test_a_bench_config_checks_its_training_options(options, words):
    from subjectgen.config import BenchConfig

    with pytest.raises(UserError, match=words):
        BenchConfig("emoji", "out", methods=["lora"], train_options=options)


def test_with_each_methods_own_eval_points_the_evaluators_decide_where_a_run_kept_its_best(tmp_path):
    from subjectgen.eval.bench import eval_settings, evaluators_decide_runs
    from subjectgen.config import BenchConfig

    own = BenchConfig("emoji", "x").protocol()
    assert (own["eval_every"], own["select"]) == (None, None)
    own_points = eval_settings(BenchConfig("emoji", "x", dino="d"))  # train's own, scored by the bench's evaluators
    assert (own_points["eval_every"], own_points["select"], own_points["eval_dino"]) == (None, None, "d")
    assert eval_settings(BenchConfig("emoji", "x", eval_every=0)) == {"eval_every": 0}
    run = tmp_path / "pairs" / "lora" / "dog" / "run" / MANIFEST
    run.parent.mkdir(parents=True)
    for select, decide in (("last", False), ("best", True)):
        run.write_text(json.dumps({"resolution": 64, "settings": {"select": select}}))
        assert evaluators_decide_runs(tmp_path, own) == decide
        assert not evaluators_decide_runs(tmp_path, {**own, "eval_every": 0})
        assert evaluators_decide_runs(tmp_path, {**own, "select": "best"})


def test_a_pair_is_not_trained_at_other_defaults_than_its_folders_finished_runs(tmp_path, monkeypatch):
    import dataclasses
    from types import SimpleNamespace

    from subjectgen.config import TrainConfig
    from subjectgen.eval.bench import check_same_defaults
    from subjectgen.methods import registry

    cfg = TrainConfig(method="lora", subject_dir=str(tmp_path), class_noun="dog", out=str(tmp_path / "run"))
    ctx = SimpleNamespace(out=tmp_path / "b")
    check_same_defaults(ctx, cfg)  # no finished run: nothing to compare
    done = ctx.out / "pairs" / "lora" / "dog" / "run" / MANIFEST
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"resolution": 64, "settings": {"steps": 300, "lr": 1e-3, "rank": 4, "eval_every": 0,
                                                                 "select": "last", "captioning": None}}))
    spec = registry.get("lora")
    old = dataclasses.replace(spec, defaults={"steps": (500, 300), "lr": (1e-4, 1e-3)}, builtin_eval=None)
    monkeypatch.setitem(registry.REGISTRY, "lora", old)
    check_same_defaults(ctx, cfg)  # the run's own version's defaults on a small model
    monkeypatch.setitem(registry.REGISTRY, "lora", dataclasses.replace(
        old, defaults={**old.defaults, "steps": (500, 400), "subject_start": (0.0, 0.4)}))
    with pytest.raises(UserError, match=r"its lora runs were trained at other defaults than this version's "
                                        r"\(steps 300 -> 400\)"):  # subject_start: newer than the run, not compared
        check_same_defaults(ctx, cfg)
    check_same_defaults(ctx, dataclasses.replace(cfg, steps=300))  # the old value, passed: the same runs
    monkeypatch.setitem(registry.REGISTRY, "lora", dataclasses.replace(old, builtin_eval=(8, "best")))
    builtin = dataclasses.replace(cfg, model="builtin")  # where a method's own eval points apply
    with pytest.raises(UserError, match=r"\(eval_every 0 -> 37, select last -> best\)"):
        check_same_defaults(ctx, builtin)
    check_same_defaults(ctx, dataclasses.replace(builtin, eval_every=0))
    monkeypatch.setitem(registry.REGISTRY, "lora", dataclasses.replace(old, builtin_defaults={"captioning": "auto"}))
    with pytest.raises(UserError, match=r"\(captioning None -> auto\)"):  # a default captioner on the built-in model
        check_same_defaults(ctx, dataclasses.replace(builtin, eval_every=0))
    check_same_defaults(ctx, dataclasses.replace(builtin, eval_every=0, captioning="off"))  # off: none, as the runs'


def test_the_demo_says_which_step_it_kept_and_why():
    from subjectgen.demo import sampled, trained

    curve = [{"step": 50, "clip_t": 0.62}, {"step": 100, "clip_t": 0.50}]
    run = {"settings": {"steps": 400, "subject_start": 0.4},
           "evaluation": {"select": "best", "chosen_step": 50, "curve": curve, "base": {"clip_t": 0.65}}}
    assert trained(run).startswith("400 steps and kept step 50, the most likeness that keeps 90%")
    run["evaluation"]["base"]["clip_t"] = 0.80  # 0.62 < 0.72: the rule's fallback
    assert "the one that kept the most of the base model's prompt-following (none kept 90% of it)" in trained(run)
    assert "first 40% of the steps drawn without the subject" in sampled(run)
    last = {"settings": {"steps": 300, "subject_start": 0.0}, "evaluation": {**run["evaluation"], "select": "last"}}
    assert (trained(last), sampled(last)) == ("300 steps", "")
