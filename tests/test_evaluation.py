"""Evaluation inside training: the selection rule, eval.csv across kills and resumes, the chosen step's weights."""

from __future__ import annotations

import json
import shutil
import pytest
import torch

from subjectgen.cli import main
from subjectgen.training.evaluation import EvalPoint, choose, default_eval_prompts

from test_training_loop import killed_and_resumed, run_cli, same_tensors, train_cmd


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
    full, out = killed_and_resumed(tiny_model, subject_dir, tmp_path, common, 15)
    rows = (out / "eval.csv").read_text().splitlines()
    assert rows == (full / "eval.csv").read_text().splitlines() and len(rows) == 5  # header, base, 3
    name = "pytorch_lora_weights.safetensors"
    assert same_tensors(full / name, out / name)
    manifest = json.loads((out / "subject.json").read_text())["evaluation"]
    assert manifest["chosen_step"] in (10, 20, 30) and [p["step"] for p in manifest["curve"]] == [10, 20, 30]
    assert manifest == json.loads((full / "subject.json").read_text())["evaluation"]
    metrics = json.loads((out / "subject.json").read_text())["metrics"]  # the kept point's seconds survive too
    assert metrics["time_to_subject_step"] == manifest["chosen_step"] and metrics["time_to_subject_seconds"] > 0


def test_select_best_keeps_the_chosen_steps_weights(tiny_model, subject_dir, evaluator_dirs, tmp_path):
    best = run_cli(train_cmd(tiny_model, subject_dir, tmp_path / "best", *eval_flags(evaluator_dirs, "--select",
                                                                                     "best")))
    assert best.returncode == 0, best.stderr
    chosen = json.loads((tmp_path / "best" / "subject.json").read_text())["evaluation"]["chosen_step"]
    short = run_cli(train_cmd(tiny_model, subject_dir, tmp_path / "short", "--steps", str(chosen)))
    assert short.returncode == 0, short.stderr
    name = "pytorch_lora_weights.safetensors"  # the same trajectory, stopped where the rule chose:
    assert same_tensors(tmp_path / "best" / name, tmp_path / "short" / name)
    assert not (tmp_path / "best" / "eval_best.safetensors").exists()
    from PIL import Image

    plot = Image.open(tmp_path / "best" / "eval.png").convert("RGB")  # the curve, the base and the kept point drawn
    assert plot.size == (560, 360) and len(set(plot.getdata())) > 3


@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual-inversion"])
def test_eval_is_on_by_default_only_on_the_built_in_model_where_a_method_has_its_own(method):
    """A method's own points (the fair comparison's choices: LoRA's and DreamBooth's eight, TI's twelve), spread over
    the steps, and only on the built-in model (whose evaluators are built in)."""
    from subjectgen.config import TrainConfig, default_eval_every
    from subjectgen.methods import registry

    cfg = TrainConfig(method=method, subject_dir="photos", class_noun="dog", out="run", steps=300)
    assert cfg.eval_every is None
    own = {"lora": 37, "dreambooth": 37, "textual-inversion": 25}[method]
    assert default_eval_every(cfg, builtin=True) == own and (own > 0) == (method in registry.eval_on_builtin())
    assert default_eval_every(cfg, builtin=False) == 0
    short = TrainConfig(method=method, subject_dir="photos", class_noun="dog", out="run", steps=3)
    assert default_eval_every(short, builtin=True) == 0  # fewer steps than points: none


def test_a_methods_own_eval_points_and_kept_step_are_the_defaults_on_the_built_in_model_only():
    """MethodSpec.builtin_eval (points, the step kept): resolved on the built-in model, never elsewhere; a flag wins.
    LoRA's is the fair comparison's choice: 400 steps, eval every 50, the best step (docs/RESULTS.md)."""
    from subjectgen.config import TrainConfig, resolve_defaults
    from subjectgen.methods import registry

    def resolved(builtin, **given):
        cfg = TrainConfig(method="lora", subject_dir="photos", class_noun="dog", out="run", **given)
        r = resolve_defaults(cfg, 64, builtin)
        return r.steps, r.eval_every, r.select

    assert resolved(True) == (400, 50, "best") and resolved(True, steps=300) == (300, 37, "best")
    assert resolved(False) == (400, 0, "last")  # no evaluators built in: none, and the last step
    assert resolved(True, eval_every=0) == (400, 0, "last") and resolved(True, select="last") == (400, 50, "last")
    assert resolved(True, eval_every=10) == (400, 10, "best")
    assert "8 points over the steps on the built-in model" in registry.get("lora").defaults_text("eval_every")
    assert "best with eval points on the built-in model, else last" in registry.get("lora").defaults_text("select")


@pytest.mark.parametrize("method", ["dreambooth", "textual-inversion"])
def test_a_default_masked_loss_applies_where_every_photo_has_a_mask_and_captions_on_the_built_in_model_only(
        method, subject_dir, tmp_path):
    """DreamBooth's and TI's masked loss (the fair comparison's choice on the small models) needs every photo's mask:
    without one it is off unless asked for (then the run's one-line error says what is missing); DreamBooth's
    captions default on the built-in model only (its captioner is built in); --captions off resolves to none."""
    from subjectgen.config import TrainConfig, resolve_defaults
    from subjectgen.methods import registry

    def resolved(folder, builtin=True, **given):
        cfg = TrainConfig(method=method, subject_dir=str(folder), class_noun="dog", out="run", **given)
        r = resolve_defaults(cfg, 64, builtin)
        return r.masked_loss, r.captioning

    captions = "auto" if method == "dreambooth" else None
    assert resolved(subject_dir) == (False, captions)  # conftest's photos: no masks
    assert resolved(subject_dir, masked_loss=True) == (True, captions)  # asked for: kept, the run says what is missing
    masks = subject_dir / "masks"
    masks.mkdir()
    photos = sorted(subject_dir.glob("*.png"))
    for photo in photos[:-1]:
        shutil.copy(photo, masks / photo.name)
    assert resolved(subject_dir)[0] is False  # one photo without its mask: off
    shutil.copy(photos[-1], masks / photos[-1].name)
    assert resolved(subject_dir) == (True, captions)
    assert resolved(subject_dir, masked_loss=False)[0] is False
    assert resolved(subject_dir, builtin=False) == (True, None)  # a small model without a built-in captioner
    assert resolved(subject_dir, captioning="off") == (True, None)
    assert "on the built-in model where every photo has a mask" in registry.get(method).defaults_text("masked_loss")
    assert resolve_defaults(TrainConfig(method="lora", subject_dir=str(subject_dir), class_noun="dog", out="run"),
                            64, True).masked_loss is False  # LoRA's choice had none


def test_what_counts_as_a_photos_mask_for_a_default_masked_loss(tmp_path):
    """A mask file or a transparent background, usable as open_mask reads it; an all-black or wrong-sized mask is
    none (the default is then off; --masked-loss says what is wrong)."""
    from PIL import Image

    from subjectgen.photos import has_mask, masks_beside

    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(tmp_path / "alpha.png")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "plain.png")
    assert has_mask(tmp_path / "alpha.png") and not has_mask(tmp_path / "plain.png")
    (tmp_path / "masks").mkdir()
    for mask, usable in ((Image.new("L", (8, 8), 0), False), (Image.new("L", (4, 4), 255), False),
                         (Image.new("L", (8, 8), 255), True)):
        mask.save(tmp_path / "masks" / "plain.png")
        assert has_mask(tmp_path / "plain.png") is usable and masks_beside(tmp_path) is usable
    assert not masks_beside(tmp_path / "nowhere") and not masks_beside(None)


def test_a_finished_runs_defaults_are_compared_on_its_own_photos(tmp_path, subject_dir):
    """A bench folder whose subjects differ in having masks is one folder of one version's defaults: each finished
    run is compared with what its own photos would get now."""
    from subjectgen.config import TrainConfig, defaults_changed

    bare = TrainConfig(method="dreambooth", subject_dir=str(subject_dir), class_noun="dog", out="run")
    record = {"resolution": 64, "settings": {"subject_dir": str(tmp_path / "masked"), "masked_loss": True,
                                             "steps": 400}}
    (tmp_path / "masked" / "masks").mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "masked" / "a.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "masked" / "masks" / "a.png")
    assert defaults_changed(record, bare) == []  # its photos have masks: on, as it was; this one's have none
    assert defaults_changed({**record, "settings": {**record["settings"], "masked_loss": False}}, bare) == \
        ["masked_loss False -> True"]
    assert defaults_changed(None, bare) == []


def test_a_run_from_before_the_masked_loss_default_resumes_where_the_default_is_still_off(subject_dir):
    """run.json recorded masked_loss False before None meant the method's own: the same run for LoRA (still off),
    not for DreamBooth (on now where masks are). --captions off is part of a run's identity (the built-in model's
    DreamBooth captions by default, kept in the run)."""
    import dataclasses

    from subjectgen.config import TrainConfig
    from subjectgen.training.outdir import same_run

    for method, same in (("lora", True), ("dreambooth", False)):
        cfg = TrainConfig(method=method, subject_dir=str(subject_dir), class_noun="dog", out="run")
        legacy = {**cfg.identity(), "masked_loss": False}
        assert same_run(legacy, cfg, resume=True) is same
        assert same_run(legacy, dataclasses.replace(cfg, masked_loss=False), resume=True)
    off = dataclasses.replace(cfg, captioning="off")
    assert not same_run(cfg.identity(), off, resume=True) and same_run(off.identity(), off, resume=True)
    assert same_run(cfg.identity(), dataclasses.replace(cfg, captioning="auto"), resume=True)


def test_dreambooth_on_the_built_in_model_trains_at_the_fair_comparisons_choice_by_default(tmp_path, subject_dir):
    """The fair comparison's choice for DreamBooth (docs/RESULTS.md) with no flag on the built-in model: eight eval
    points (eval.csv, the curve in subject.json), the step the rule keeps, captions by the built-in captioner kept in
    the run (none written beside the photos), and a masked loss only where every photo has a mask (these have none)."""
    from subjectgen.methods import registry

    assert registry.eval_on_builtin() == ["lora", "dreambooth", "textual-inversion"]
    out = tmp_path / "run"
    assert main(["train", "dreambooth", "--subject", str(subject_dir), "--class", "dog", "--out", str(out), "--steps",
                 "16", "--num-class-images", "2", "--quiet"]) == 0
    manifest = json.loads((out / "subject.json").read_text())
    evaluation, settings = manifest["evaluation"], manifest["settings"]
    assert [p["step"] for p in evaluation["curve"]] == list(range(2, 17, 2)) and evaluation["select"] == "best"
    assert len((out / "eval.csv").read_text().splitlines()) == 10  # header, base, 8 points
    assert (settings["lr"], settings["captioning"], settings["masked_loss"]) == (1e-5, "auto", False)
    assert manifest["captions_written"] == [] and len(manifest["captions_made"]) == len(manifest["captions"]) == 3
    assert all(c.startswith("a {subject} ") for c in manifest["captions"].values())
    assert not list(subject_dir.glob("*.txt"))  # the user's folder is as it was


@pytest.mark.parametrize("given, expected", [(None, 10), ("3", 3)])
def test_eval_points_sample_at_the_eval_sampler_steps(tiny_model, subject_dir, evaluator_dirs, tmp_path, monkeypatch,
                                                      given, expected):
    """The eval points' images take --eval-sample-steps (10 on a small model by default), not generation's 25."""
    import subjectgen.sampling

    real, steps = subjectgen.sampling.generate, []

    def recording(components, prompts, seeds, n_steps, *args, **kwargs):
        steps.append(n_steps)
        return real(components, prompts, seeds, n_steps, *args, **kwargs)

    monkeypatch.setattr(subjectgen.sampling, "generate", recording)
    monkeypatch.setenv("SUBJECTGEN_CACHE", str(tmp_path / "cache"))  # the base row sampled here, not cached
    flags = eval_flags(evaluator_dirs, *(["--eval-sample-steps", given] if given else []))
    flags[flags.index("--steps") + 1], flags[flags.index("--eval-every") + 1] = "4", "2"
    out = tmp_path / "run"
    assert main(train_cmd(tiny_model, subject_dir, out, *flags)[3:]) == 0
    assert steps == [expected] * 3  # the base row, then steps 2 and 4
    assert json.loads((out / "subject.json").read_text())["evaluation"]["sample_steps"] == expected


def test_the_base_row_is_sampled_once_per_model_and_class_then_read_from_the_cache(tiny_model, subject_dir,
                                                                                    evaluator_dirs, tmp_path,
                                                                                    monkeypatch):
    """The base model's eval images depend on the model and the eval settings only: a second run of the class reads
    them (the same base row in eval.csv), and other weights under the same path make new ones."""
    import shutil

    import subjectgen.sampling

    real, calls = subjectgen.sampling.generate, []

    def recording(components, prompts, *args, **kwargs):
        calls.append(kwargs.get("denoiser_for"))
        return real(components, prompts, *args, **kwargs)

    monkeypatch.setattr(subjectgen.sampling, "generate", recording)
    monkeypatch.setenv("SUBJECTGEN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    flags = eval_flags(evaluator_dirs)
    flags[flags.index("--steps") + 1], flags[flags.index("--eval-every") + 1] = "4", "2"

    def base_row(name):
        calls.clear()
        assert main(train_cmd(str(model), subject_dir, tmp_path / name, *flags)[3:]) == 0
        return (tmp_path / name / "eval.csv").read_text().splitlines()[1], len(calls)

    first, sampled = base_row("first")
    assert sampled == 3  # the base row, then steps 2 and 4
    second, sampled = base_row("second")
    assert sampled == 2 and second == first
    from safetensors.torch import load_file, save_file

    unet = next((model / "unet").glob("*.safetensors"))
    tensors = load_file(str(unet))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(unet))
    third, sampled = base_row("third")
    assert sampled == 3  # other weights: the base row is sampled again


@pytest.mark.parametrize("method, select", [("lora", "best"), ("textual-inversion", "best"), ("dreambooth", "best"),
                                            ("lora", "last")])
def test_time_to_subject_is_the_training_time_to_the_kept_step(tiny_model, subject_dir, evaluator_dirs, tmp_path,
                                                               method, select):
    """Every method that trains: the seconds from the start of train() to the step whose weights are kept, the eval
    points' own time left out; an interval inside the run, so with the eval time it never exceeds the call."""
    import time

    out = tmp_path / "run"
    args = ["train", method, "--model", tiny_model, "--subject", str(subject_dir), "--class", "dog", "--out", str(out),
            "--quiet", *eval_flags(evaluator_dirs, "--select", select)]
    args[args.index("--steps") + 1] = "12"
    args[args.index("--eval-every") + 1] = "4"
    started = time.perf_counter()
    assert main(args) == 0
    wall = time.perf_counter() - started
    manifest = json.loads((out / "subject.json").read_text())
    metrics, chosen = manifest["metrics"], manifest["evaluation"]["chosen_step"]
    assert metrics["time_to_subject_step"] == (chosen if select == "best" else 12)
    assert 0 < metrics["eval_seconds"] and 0 < metrics["time_to_subject_seconds"]
    assert metrics["time_to_subject_seconds"] + metrics["eval_seconds"] <= wall


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


def test_a_photos_caption_is_its_training_prompt_and_a_missing_one_falls_back(tiny_model, tmp_path):
    from conftest import draw_subject

    from subjectgen import TrainConfig
    from subjectgen.training.loop import Trainer

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        draw_subject(photos / f"{i}.png", shift=i)
    (photos / "0.txt").write_text("a {subject} on a tiled floor\n", encoding="utf-8")
    (photos / "2.txt").write_text("a  {subject}\tsitting on a   sofa", encoding="utf-8")
    trainer = Trainer(TrainConfig(method="lora", model=tiny_model, subject_dir=str(photos), class_noun="dog",
                                  out=str(tmp_path / "run"), steps=1), progress=False)
    try:
        phrase = trainer.method.subject_phrase
        want = {0: f"a {phrase} on a tiled floor", 1: f"a {phrase}", 2: f"a {phrase} sitting on a sofa"}
        generator = torch.Generator().manual_seed(0)
        seen = set()
        for _ in range(10):
            batch = trainer.method.batch(trainer.data, generator, 4)
            seen |= set(batch.prompts)
        assert seen == set(want.values())
        assert set(want.values()) <= set(trainer.text_cache.by_prompt)  # every caption's embedding is cached
    finally:
        from subjectgen.training.outdir import release

        release(trainer.out)


@pytest.mark.parametrize("content, words", [(b"a {subject} on \xff\xfe grass", "is not UTF-8 text"),
                                            (b"a dog on grass", "has no {subject}")])
def test_a_bad_caption_file_is_a_one_line_error_with_nothing_written(tiny_model, tmp_path, capsys, content, words):
    from conftest import draw_subject

    photos = tmp_path / "photos"
    photos.mkdir()
    draw_subject(photos / "0.png")
    (photos / "0.txt").write_bytes(content)
    out = tmp_path / "run"
    assert main(["train", "lora", "--model", tiny_model, "--subject", str(photos), "--class", "dog", "--out",
                 str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "0.txt" in err and len(err.splitlines()) == 1 and not out.exists()


def test_the_backdrop_warning_names_only_what_the_run_does_not_do_already():
    from subjectgen.training.evaluation import BACKDROP_MARGIN, backdrop_warning

    base, close = EvalPoint(0, 0.5, 0.1, 0.7, 0.10), EvalPoint(50, 0.6, 0.2, 0.6, 0.10 + BACKDROP_MARGIN / 2)
    assert backdrop_warning(base, close) is None  # within the margin: no line
    copied = EvalPoint(100, 0.7, 0.3, 0.4, 0.30)
    plain = backdrop_warning(base, copied)
    assert "step 100 copy the photos' backgrounds" in plain and "captions (NAME.txt" in plain and "--masked-loss" in plain
    both = backdrop_warning(base, copied, captioned=True, masked=True)  # DreamBooth's defaults on the built-in model
    assert "captions" not in both and "--masked-loss" not in both and both.endswith("fewer --steps or a lower --lr help")


def write_left_masks(folder):
    """A mask beside each photo with the subject on its left third (not the centre half the fallback paints)."""
    from PIL import Image

    (folder / "masks").mkdir()
    for photo in sorted(folder.glob("*.png")):
        with Image.open(photo) as image:
            mask = Image.new("L", image.size, 0)
        mask.paste(255, (0, 0, mask.width // 3, mask.height))
        mask.save(folder / "masks" / photo.name)


def test_the_backdrop_paints_over_the_photos_masks_with_or_without_a_masked_loss(subject_dir):
    """The backdrop score's masks are the photos' own wherever every photo has one, not only under --masked-loss
    (else a run's warning would move with its loss); a folder with a photo lacking one paints the centre half."""
    from subjectgen.subjects import load_subject
    from subjectgen.training.evaluation import backdrop_masks

    assert backdrop_masks(load_subject(subject_dir, "dog", 32), subject_dir) is None  # no masks: the centre half
    photos = sorted(subject_dir.glob("*.png"))
    write_left_masks(subject_dir)
    unmasked, masked = (load_subject(subject_dir, "dog", 32, masks=m) for m in (False, True))
    got = backdrop_masks(unmasked, subject_dir)
    assert [m.size for m in got] == [(32, 32)] * len(photos)
    assert [m.tobytes() for m in got] == [m.tobytes() for m in masked.masks]  # what the masked loss paints
    assert backdrop_masks(masked, subject_dir) is masked.masks
    (subject_dir / "masks" / photos[0].name).unlink()
    assert backdrop_masks(unmasked, subject_dir) is None


def test_a_runs_backdrop_score_paints_over_the_photos_masks_without_a_masked_loss(tiny_model, subject_dir,
                                                                                  evaluator_dirs, tmp_path, monkeypatch):
    from subjectgen.training import evaluation

    write_left_masks(subject_dir)
    painted, real = [], evaluation.backdrops
    monkeypatch.setattr(evaluation, "backdrops", lambda images, masks=None: painted.append(masks) or real(images, masks))
    dino, clip = evaluator_dirs
    assert main(["train", "lora", "--model", tiny_model, "--subject", str(subject_dir), "--class", "dog", "--out",
                 str(tmp_path / "run"), "--quiet", "--steps", "2", "--eval-every", "2", "--eval-dino", dino,
                 "--eval-clip", clip, "--no-masked-loss"]) == 0
    assert len(painted) == 1 and painted[0] is not None and len(painted[0]) == 3  # the photos' masks, not None


def test_the_backdrop_score_ranks_a_copy_of_the_photos_background_above_a_scene():
    from subjectgen.eval.metrics import backdrop_similarity, backdrops, load_evaluators
    from subjectgen.photos import open_mask, open_photo
    from subjectgen.world.build import EMOJIBENCH, bench_instances, render_prompt
    from subjectgen.world.emoji import sources_available

    if not sources_available():
        pytest.skip("emoji sources not installed (see .ci/run)")
    ev = load_evaluators("builtin", "builtin")
    noun, inst = bench_instances(EMOJIBENCH)["backpack"]
    paths = sorted((EMOJIBENCH / "backpack").glob("*.png"))
    photos = [open_photo(p) for p in paths]
    masks = [open_mask(p, im.size) for p, im in zip(paths, photos)]
    backgrounds = backdrops(photos[1:], masks[1:])
    copied = backdrops(photos[:1], masks[:1])[0]  # a held-out photo's place, without its subject
    scene = render_prompt(noun, inst, "a backpack on the beach", 0)
    assert backdrop_similarity(ev, [copied], backgrounds) > backdrop_similarity(ev, [scene], backgrounds)
