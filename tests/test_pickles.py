"""Pickles never run: a run folder, model folder, evaluator folder or --runs-from source holding a pickle
whose unpickling would write a file is never unpickled by any command (train, generate, score, bench, report)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from subjectgen.cli import main
from subjectgen.world.build import EMOJIBENCH

from test_bench import bench_args
from test_cli import train_args


class Trap:
    """Unpickling this opens (so creates) the marker file: the proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(folder: Path, marker: Path) -> None:
    """A trap under every name a loader might try as a pickle."""
    data = pickle.dumps(Trap(marker))
    for name in ("pytorch_model.bin", "diffusion_pytorch_model.bin", "pytorch_lora_weights.bin",
                 "learned_embeds.bin", "model.ckpt", "optimizer.pt", "scheduler.pkl", "rng_state.pth"):
        (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def trapped(tiny_model, evaluator_dirs, tmp_path_factory):
    """A model, a finished LoRA run with a checkpoint, evaluators and a bench folder, each with traps beside
    their real safetensors files; the marker a trap would create."""
    root = tmp_path_factory.mktemp("trapped")
    probe = root / "probe"
    pickle.loads(pickle.dumps(Trap(probe)))
    assert probe.exists(), "the trap must fire when unpickled, or these tests prove nothing"
    marker = root / "EXECUTED"
    model = root / "model"
    shutil.copytree(tiny_model, model)
    for part in ("unet", "vae", "text_encoder", "."):
        plant(model / part, marker)
    subject = root / "photos"
    shutil.copytree(EMOJIBENCH / "dog", subject)
    run = root / "run"
    assert main(train_args(model, subject, run, "--checkpoint-every", "1")) == 0
    for folder in [run, *sorted((run / "checkpoints").iterdir())]:
        plant(folder, marker)
    evaluators = root / "evaluators"
    for kind, path in zip(("dino", "clip"), evaluator_dirs):
        shutil.copytree(path, evaluators / kind)
        plant(evaluators / kind, marker)
    bench = root / "bench"
    args = bench_args(str(model), (str(evaluators / "dino"), str(evaluators / "clip")), bench)
    args[args.index("--subjects") + 1] = "dog"
    assert main(args) == 0
    for folder in [bench, *[p for p in bench.rglob("*") if p.is_dir()]]:
        plant(folder, marker)
    assert not marker.exists()
    return {"root": root, "marker": marker, "model": model, "subject": subject, "run": run,
            "evaluators": evaluators, "bench": bench, "bench_args": args}


def commands(t: dict) -> dict[str, list[str]]:
    root, ev = t["root"], t["evaluators"]
    resume_run = root / "resume"
    if not resume_run.exists():
        shutil.copytree(t["run"], resume_run)
        (resume_run / "subject.json").unlink()
    bench_args = list(t["bench_args"])
    return {
        "train": train_args(t["model"], t["subject"], root / "new-run"),
        "train --resume": train_args(t["model"], t["subject"], resume_run, "--checkpoint-every", "1", "--resume"),
        "generate": ["generate", str(t["run"]), "a {subject}", "-n", "1", "--steps", "2", "--out", str(root / "g")],
        "generate (model)": ["generate", str(t["model"]), "a dog", "-n", "1", "--steps", "2", "--out", str(root / "g2")],
        "score": ["score", str(root / "g"), "--subject", str(t["subject"]), "--prompt", "a dog",
                  "--dino", str(ev / "dino"), "--clip", str(ev / "clip")],
        "bench (resume)": bench_args,
        "bench --runs-from": bench_args[:bench_args.index("--out") + 1] + [str(root / "bench2")]
        + bench_args[bench_args.index("--out") + 2:] + ["--runs-from", str(t["bench"])],
        "report": ["report", str(t["bench"])],
    }


@pytest.mark.parametrize("name", ["train", "train --resume", "generate", "generate (model)", "score",
                                  "bench (resume)", "bench --runs-from", "report"])
def test_no_command_unpickles_anything(trapped, name):
    argv = commands(trapped)[name]
    assert main(argv) == 0, name
    assert not trapped["marker"].exists(), f"{name} executed a pickle"


def test_a_folder_of_only_pickles_is_refused_not_loaded(capsys, trapped, tmp_path):
    evaluators = tmp_path / "dino"
    shutil.copytree(trapped["evaluators"] / "dino", evaluators)
    (evaluators / "model.safetensors").unlink()
    code = main(["score", str(trapped["subject"]), "--subject", str(trapped["subject"]), "--prompt", "a dog",
                 "--dino", str(evaluators), "--clip", str(trapped["evaluators"] / "clip")])
    assert code == 2 and not trapped["marker"].exists()
    model = tmp_path / "model"
    shutil.copytree(trapped["model"], model)
    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert main(train_args(model, trapped["subject"], tmp_path / "r")) == 2
    assert "--allow-pickle" in capsys.readouterr().err and not trapped["marker"].exists()
