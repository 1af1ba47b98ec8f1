"""The CLI under hypothesis-generated flags and values, for every command and method.

Whatever the flags: the exit code is 0 or 2, never a traceback; an error is one line; and --out is either
a complete result or untouched (the one exception: a run whose loss diverged keeps its folder, so that it
can be resumed, and says so). Valid values are drawn small (a run of a step or two on the tiny model);
invalid ones come from outside each setting's declared range (settings.Bound), so a setting added later
is fuzzed by the same code.
"""

from __future__ import annotations

import collections
import itertools
import math
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subjectgen.cli import main
from subjectgen.config import BenchConfig, SampleSettings, TrainConfig
from subjectgen.settings import Bound, flag_of
from subjectgen.world.build import EMOJIBENCH
from subjectgen.world.config import EvaluatorTrainConfig, WorldTrainConfig

from test_cli import train_args

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GARBAGE = st.sampled_from(["", "abc", "1e400", "-1e400", "nan", "inf", "-inf", "0x10", "1,5", "--", " "])
RUN_COUNT = itertools.count()
OUTCOMES: collections.Counter = collections.Counter()  # exit code -> invocations, for the record


def invalid(b: Bound):
    """Text of values outside the range: below it, above it, non-finite, fractional for integers, garbage."""
    options = [GARBAGE]
    if b.low is not None:
        top = b.low if b.low_open else b.low - (1 if b.integer else 1e-9)
        options.append(st.floats(-1e9, top).map(lambda v: str(int(math.floor(v))) if b.integer else repr(v)))
    if b.high is not None:
        low = b.high if b.high_open else b.high + (1 if b.integer else 1e-9)
        options.append(st.floats(low, 1e12).map(lambda v: str(int(math.ceil(v))) if b.integer else repr(v)))
    if b.integer:
        options.append(st.sampled_from(["1.5", "2.25", "-0.5"]))
    return st.one_of(options)


def valid(b: Bound, cap: float):
    """Text of cheap values inside the range (at most `cap`)."""
    low = b.low if b.low is not None else -cap
    if b.integer:
        return st.integers(int(low) + int(b.low_open), int(min(cap, b.high if b.high is not None else cap))).map(str)
    high = min(cap, b.high) if b.high is not None else cap
    return st.floats(low, high, exclude_min=b.low_open, exclude_max=b.high_open or high < cap).map(repr)


def flag_values(cls, caps: dict[str, float], rename: dict[str, str] | None = None):
    """Per numeric flag of `cls`: (strategy of valid texts, strategy of invalid texts)."""
    out = {}
    for f in fields(cls):
        b = f.metadata.get("bound")
        if b is None or f.name not in caps:
            continue
        out[(rename or {}).get(f.name, flag_of(f))] = (valid(b, caps[f.name]), invalid(b))
    return out


def draw_flags(data, flags: dict) -> dict:
    """Half the examples all valid (each flag absent or in range), half with one or two flags out of range."""
    names = sorted(flags)
    wrong = set(data.draw(st.lists(st.sampled_from(names), max_size=2, unique=True), label="invalid flags")) \
        if data.draw(st.booleans(), label="with invalid") else set()
    return {name: data.draw(flags[name][1] if name in wrong else st.one_of(st.none(), flags[name][0]), label=name)
            for name in names}


def argv_of(draws: dict) -> list[str]:
    argv = []
    for name, value in draws.items():
        if value is not None:
            argv += [name, value] if not value.startswith("-") else [f"{name}={value}"]
    return argv


def check_outcome(capsys, argv: list[str], out: Path | None, finished) -> None:
    """Exit 0 or 2, no traceback, one-line errors; --out complete on 0, untouched on 2 (but a diverged run)."""
    next(RUN_COUNT)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exits
        code = exc.code
    err = capsys.readouterr().err
    OUTCOMES[code] += 1
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 2:
        assert len(errors) == 1 and err.strip().splitlines()[-1].startswith("error:"), (argv, err)
        if out is not None and "loss became" not in err:
            assert not out.exists(), (argv, err, list(out.rglob("*")))
    elif out is not None:
        assert finished(out), (argv, err)


TRAIN_CAPS = {"steps": 2, "lr": 1e-2, "batch_size": 2, "seed": 10, "prior_weight": 10, "num_class_images": 2,
              "snr_gamma": 10, "rank": 4, "lora_alpha": 8, "num_vectors": 3, "lr_warmup_steps": 3,
              "max_grad_norm": 10, "checkpoint_every": 3, "validate_every": 3, "sample_steps": 3}
TRAIN_FLAGS = flag_values(TrainConfig, TRAIN_CAPS)
TRAIN_FLAGS.pop("--sample-steps")  # not a train flag (the method's default)


@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual-inversion"])
@FUZZ
@given(data=st.data())
def test_fuzz_train(capsys, tmp_path_factory, tiny_model, method, data):
    draws = draw_flags(data, TRAIN_FLAGS)
    draws["--mixed-precision"] = data.draw(st.sampled_from([None, "no", "bf16", "fp8", ""]), label="mp")
    toggles = data.draw(st.lists(st.sampled_from(["--prior-preservation", "--no-prior-preservation",
                                                  "--train-text-encoder", "--masked-loss", "--resume"]),
                                 max_size=2, unique=True), label="toggles")
    subject = data.draw(st.sampled_from([str(EMOJIBENCH / "dog"), "/nonexistent/photos", str(EMOJIBENCH)]),
                        label="subject")
    noun = data.draw(st.sampled_from(["dog", "", "  "]), label="class")
    out = tmp_path_factory.mktemp("fuzz") / "run"
    argv = ["train", method, "--model", tiny_model, "--subject", subject, "--class", noun, "--out", str(out),
            "--quiet", *argv_of(draws), *toggles]
    if "--steps" not in draws or draws["--steps"] is None:
        argv += ["--steps", "1"]  # the methods' defaults are hundreds of steps
    check_outcome(capsys, argv, out, lambda o: (o / "subject.json").is_file())


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-run") / "run"
    assert main(train_args(tiny_model, EMOJIBENCH / "dog", out, "--steps", "1")) == 0
    return out


SAMPLE_FLAGS = flag_values(SampleSettings, {"n": 2, "seed": 10, "steps": 3, "guidance": 20, "lora_scale": 3,
                                            "subject_start": 1, "batch_size": 3}, rename={"n": "-n"})


@FUZZ
@given(data=st.data())
def test_fuzz_generate(capsys, tmp_path_factory, tiny_model, lora_run, data):
    draws = draw_flags(data, SAMPLE_FLAGS)
    if draws["--steps"] is None:
        draws["--steps"] = "2"
    source = data.draw(st.sampled_from([str(lora_run), tiny_model, "/nonexistent/run", "builtin-typo"]), label="src")
    prompts = data.draw(st.lists(st.sampled_from(["a {subject}", "a dog on the beach", "", "{subject} " * 40]),
                                 min_size=1, max_size=2), label="prompts")
    out = tmp_path_factory.mktemp("fuzz") / "images"
    argv = ["generate", source, *prompts, "--out", str(out), *argv_of(draws)]
    check_outcome(capsys, argv, out, lambda o: (o / "grid.png").is_file())


BENCH_FLAGS = flag_values(BenchConfig, {"prompts": 1, "images_per_prompt": 1, "seed": 10, "sample_steps": 2,
                                        "guidance": 20, "train_steps": 1, "subject_start": 1})


@FUZZ
@given(data=st.data())
def test_fuzz_bench(capsys, tmp_path_factory, tiny_model, evaluator_dirs, data):
    draws = draw_flags(data, BENCH_FLAGS)
    for name, cheap in (("--prompts", "1"), ("--images-per-prompt", "1"), ("--train-steps", "1"),
                        ("--sample-steps", "2")):
        draws[name] = draws[name] or cheap
    methods = data.draw(st.sampled_from(["lora", "textual-inversion", "lora,nope", "", "dreambooth"]), label="m")
    subjects = data.draw(st.sampled_from(["dog", "unicorn", "dog,", ",", "dog,dog"]), label="subjects")  # "" is all 30
    dino, clip = evaluator_dirs
    out = tmp_path_factory.mktemp("fuzz") / "bench"
    argv = ["bench", "--bench", str(EMOJIBENCH), "--model", tiny_model, "--methods", methods, "--subjects", subjects,
            "--dino", dino, "--clip", clip, "--out", str(out), "--quiet", *argv_of(draws)]
    check_outcome(capsys, argv, out, lambda o: (o / "results.json").is_file() and (o / "report.html").is_file())


WORLD_FLAGS = flag_values(WorldTrainConfig, {"seed": 0, "vae_steps": 0, "unet_steps": 0, "vae_batch": 0,
                                             "unet_batch": 0, "unet_stop_step": 0, "unet_max_seconds": 0})
EVAL_FLAGS = flag_values(EvaluatorTrainConfig, {"seed": 0, "clip_steps": 0, "dino_steps": 0})


@FUZZ
@given(data=st.data())
def test_fuzz_world_and_demo_refuse_bad_numbers_before_any_work(capsys, tmp_path_factory, data):
    command = data.draw(st.sampled_from(["train", "train-evaluators", "demo"]), label="command")
    flags = {"train": WORLD_FLAGS, "train-evaluators": EVAL_FLAGS,
             "demo": flag_values(TrainConfig, {"steps": 0})}[command]
    name = data.draw(st.sampled_from(sorted(flags)), label="flag")
    value = data.draw(flags[name][1], label="value")  # only out-of-range values: a valid run renders the world
    out = tmp_path_factory.mktemp("fuzz") / "out"
    base = ["demo"] if command == "demo" else ["world", command]
    argv = [*base, "--out", str(out), *argv_of({name: value})]
    check_outcome(capsys, argv, out, lambda o: False)


@FUZZ
@given(data=st.data())
def test_fuzz_score_and_report(capsys, tmp_path_factory, evaluator_dirs, lora_run, data):
    folder = data.draw(st.sampled_from([str(EMOJIBENCH / "dog"), "/nonexistent", str(lora_run), str(EMOJIBENCH)]),
                       label="folder")
    if data.draw(st.booleans(), label="report"):
        argv = ["report", folder]
    else:
        subject = data.draw(st.sampled_from([str(EMOJIBENCH / "cat"), "/nonexistent", str(lora_run)]), label="s")
        prompt = data.draw(st.sampled_from(["a dog", "", "x" * 500]), label="prompt")
        dino, clip = evaluator_dirs
        argv = ["score", folder, "--subject", subject, "--prompt", prompt, "--dino", dino, "--clip", clip]
    check_outcome(capsys, argv, None, None)


def test_fuzz_reached_both_outcomes():
    """Valid runs and refusals both happened (when the fuzz tests ran in this session)."""
    if sum(OUTCOMES.values()):
        assert OUTCOMES[0] > 0 and OUTCOMES[2] > 0, OUTCOMES


def leaf_commands(parser=None, prefix: tuple = ()):
    """Every command of the CLI as (words, its parser): 'train lora', 'world train-vae', 'apprentice filter', ..."""
    import argparse

    from subjectgen.cli import build_parser

    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaf_commands(sub, (*prefix, name))


def numeric_flags(parser) -> list[str]:
    return sorted(opt for a in parser._actions for opt in a.option_strings
                  if opt.startswith("--") and getattr(a.type, "__name__", "") in ("integer", "number"))


COMMANDS = {" ".join(words): parser for words, parser in leaf_commands()}
# commands whose valid runs the tests above also fuzz (the rest: every numeric flag, with garbage, below)
RUN_FUZZED = {f"train {m}" for m in ("lora", "dreambooth", "textual-inversion", "apprentice", "reference")} | {
    "generate", "bench", "score", "report", "world train", "world train-evaluators", "demo"}


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_train_apprentice(capsys, tmp_path_factory, tiny_model, data):
    """The zero-shot apprentice takes no numbers: its inputs are the model, the photos and the class."""
    fuzz_zero_shot(capsys, tmp_path_factory, data, "apprentice", ["builtin", tiny_model, "/nonexistent/model"])


def fuzz_zero_shot(capsys, tmp_path_factory, data, method: str, models: list[str]) -> None:
    """A zero-shot method's inputs drawn from good and bad ones: the model, the photos and the class."""
    model = data.draw(st.sampled_from(models), label="model")
    subject = data.draw(st.sampled_from([str(EMOJIBENCH / "dog"), "/nonexistent/photos", str(EMOJIBENCH)]),
                        label="subject")
    noun = data.draw(st.sampled_from(["dog", "", "  "]), label="class")
    out = tmp_path_factory.mktemp("fuzz") / "run"
    argv = ["train", method, "--model", model, "--subject", subject, "--class", noun, "--out", str(out), "--quiet"]
    check_outcome(capsys, argv, out, lambda o: (o / "subject.json").is_file())


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_train_reference(capsys, tmp_path_factory, tiny_model, tiny_flux2_model, data):
    """The zero-shot reference row takes no numbers either: a FLUX.2 [klein] model, the photos and the class (on a
    family without reference inputs, a one-line error)."""
    fuzz_zero_shot(capsys, tmp_path_factory, data, "reference", [tiny_flux2_model, tiny_model, "/nonexistent/model"])


def test_no_command_is_left_out_of_the_fuzz_suite():
    left_out = [name for name, parser in COMMANDS.items() if name not in RUN_FUZZED and not numeric_flags(parser)]
    assert left_out == [], f"commands the fuzz suite never reaches: {left_out}"
    assert {"world train-vae", "apprentice experts", "profusion pretrain", "train apprentice"} <= set(COMMANDS)


@FUZZ
@given(data=st.data())
def test_fuzz_every_command_refuses_garbage_in_a_number_before_any_work(capsys, tmp_path_factory, data):
    """Each command with numeric flags, one of them given text no number range allows: one line, exit 2, nothing
    written (argparse converts a flag as it reads it, before any work and before the required flags)."""
    name = data.draw(st.sampled_from(sorted(n for n, p in COMMANDS.items() if numeric_flags(p))), label="command")
    flag = data.draw(st.sampled_from(numeric_flags(COMMANDS[name])), label="flag")
    value = data.draw(GARBAGE.filter(lambda v: v not in ("--",)), label="value")
    out = tmp_path_factory.mktemp("fuzz") / "out"
    argv = [*name.split(), *argv_of({flag: value})]
    if "--out" in COMMANDS[name]._option_string_actions:
        argv += ["--out", str(out)]
    check_outcome(capsys, argv, out, lambda o: False)
