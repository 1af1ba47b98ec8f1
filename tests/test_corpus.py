"""The checked-in corpus (tests/corpus/*/case.json): each folder one input a user might give, with the
exit code and message it must get. Model and run cases hold only what differs from a real tiny model or
finished run; this test builds that base, applies the case (remove, overlay, truncate, manifest edits)
and runs the command in-process. Exit 2 must be one line with no traceback and write nothing in {tmp}."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from subjectgen.cli import main
from subjectgen.world.build import EMOJIBENCH

from test_cli import train_args

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.json").is_file())


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("corpus-run") / "run"
    assert main(train_args(tiny_model, EMOJIBENCH / "dog", run, "--steps", "1")) == 0
    return run


def build(base: Path, target: Path, spec: dict, overlay: Path) -> Path:
    """A copy of `base` with the case's changes: files removed, the case's own files laid over it, a file
    cut to half its bytes, manifest keys replaced."""
    shutil.copytree(base, target)
    for name in spec.get("remove", []):
        path = target / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if overlay.is_dir():
        shutil.copytree(overlay, target, dirs_exist_ok=True)
    if "truncate" in spec:
        path = target / spec["truncate"]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if "manifest" in spec:
        manifest = json.loads((target / "subject.json").read_text())
        (target / "subject.json").write_text(json.dumps({**manifest, **spec["manifest"]}))
    return target


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_corpus_case(name, capsys, monkeypatch, tmp_path, tiny_model, finished_run, evaluator_dirs):
    case = json.loads((CORPUS / name / "case.json").read_text())
    folder = shutil.copytree(CORPUS / name, tmp_path / "case")  # never touch the checked-in files
    work = tmp_path / "work"
    work.mkdir()
    places = {"case": folder, "tmp": work, "tiny": tiny_model, "dog": EMOJIBENCH / "dog",
              "dino": evaluator_dirs[0], "clip": evaluator_dirs[1]}
    if "model" in case:
        places["model"] = build(Path(tiny_model), tmp_path / "model", case["model"], folder / "model")
    if "run" in case:
        places["run"] = build(finished_run, tmp_path / "run", case["run"], folder / "run")
    if case.get("heif_plugin") is False:
        import subjectgen.photos as photos_module

        monkeypatch.setattr(photos_module, "heif_plugin", lambda: False)
    argv = [arg.replace("{" + key + "}", str(value)) if key != "subject" else arg
            for arg in case["args"] for key, value in [next(((k, v) for k, v in places.items()
                                                            if "{" + k + "}" in arg), ("subject", None))]]
    before = sorted(work.rglob("*"))
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == case["exit"], err
    assert "Traceback" not in err
    if code == 2:
        assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert case["stderr"] in err, err
        assert sorted(work.rglob("*")) == before, "an error wrote files"
