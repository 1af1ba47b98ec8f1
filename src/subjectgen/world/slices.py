"""Long CPU training in slices that land: a slice ends cleanly (`--max-minutes`) and leaves its whole state
— weights, AdamW's moments, the step, the data-order generator — in a folder outside the repository; the
next slice (`--resume`) loads it and continues bit for bit. Everything is stored with safetensors and JSON:
nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..assets import cache_dir
from ..errors import UserError
from ..safeio import OUTPUT_MARK, atomic_dir, atomic_save_safetensors, check_output_dir, output_dir

STATE_FILE, RECORD_FILE = "state.safetensors", "record.json"


def default_state_dir(out: Path) -> Path:
    """Where a run writing `out` keeps its slice state: the cache folder, named by the output's absolute path."""
    import hashlib

    out = Path(out).expanduser().resolve()
    return cache_dir() / "world-train" / f"{out.name}-{hashlib.sha256(str(out).encode()).hexdigest()[:8]}"


def _tensors(modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
             generator: torch.Generator) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {f"model.{name}.{k}": v.detach().float().cpu().contiguous()
               for name, m in modules.items() for k, v in m.state_dict().items()}
    state = opt.state_dict()
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["generator"] = generator.get_state()
    return tensors, state["param_groups"]


def save_state(folder: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
               generator: torch.Generator, record: dict, keep: tuple[str, ...] = ()) -> None:
    """The state after a slice, replacing the previous one in one rename (a kill leaves the old one whole); the
    previous state's files named in `keep` (a run's cached data) carry over."""
    tensors, groups = _tensors(modules, opt, generator)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        atomic_save_safetensors(tmp / STATE_FILE, tensors)
        (tmp / RECORD_FILE).write_text(json.dumps({**record, "param_groups": groups}, indent=1, default=str))
        for name in keep:
            if (folder / name).is_file():
                os.link(folder / name, tmp / name)


def read_record(folder: Path) -> dict:
    """The record a slice left (settings, step, slices), without loading its tensors."""
    try:
        return json.loads((Path(folder) / RECORD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"the slice state in {folder} is unreadable ({exc}); remove it and start again "
                        "from the last shipped model") from None


def load_state(folder: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
               generator: torch.Generator) -> dict:
    """Restore what save_state wrote into freshly built modules, optimizer and generator; returns the record."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file() or not (folder / RECORD_FILE).is_file():
        raise UserError(f"no slice state in {folder}; start the run without --resume")
    try:
        tensors, record = load_file(folder / STATE_FILE), json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"the slice state in {folder} is unreadable ({exc}); remove it and start again "
                        "from the last shipped model") from None
    for name, module in modules.items():
        prefix = f"model.{name}."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        dtypes = {k: v.dtype for k, v in module.state_dict().items()}
        module.load_state_dict({k: v.to(dtypes[k]) for k, v in own.items() if k in dtypes})
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, field = key.split(".", 2)
            per_param.setdefault(int(index), {})[field] = value
    opt.load_state_dict({"state": per_param, "param_groups": record.pop("param_groups")})
    generator.set_state(tensors["generator"])
    return record


def check_start(out: Path, state: Path, resume: bool, identity: dict, overwrite: bool = False) -> None:
    """Before a slice, writing nothing: the model folder is new or one a slice wrote (a fresh start replaces one
    only with `overwrite`); --resume needs a state, a fresh start needs none, and a resumed state must be this
    run's (`identity`: its settings and the fingerprint of the model it started from)."""
    if resume and not state.is_dir():
        raise UserError(f"--resume: no slice state in {state}; start the run without --resume")
    if not resume and state.exists():
        raise UserError(f"a slice state of an earlier run is in {state}: add --resume to continue it, "
                        "or remove the folder to start over")
    if resume:
        record = read_record(state)
        if {k: record.get(k) for k in identity} != identity:
            raise UserError(f"the slice state in {state} is of another run (other settings or another --init "
                            "model); give that run's settings, or remove the folder to start over")
    check_output_dir(out, OUTPUT_MARK, overwrite or resume)


def slice_over(step: int, stop_step: int | None, max_minutes: float | None, started: float) -> bool:
    import time

    return (stop_step is not None and step >= stop_step) or (
        max_minutes is not None and time.time() - started > 60 * max_minutes)


def write_model(out: Path, init: str, modules: dict[str, torch.nn.Module], key: str, record: dict) -> Path:
    """`init`'s model folder with these modules (by component name) in place of its own, each in the dtype `init`
    stores it in, and `record` under `key` in training.json. Written whole or not at all."""
    import copy
    import shutil

    from ..assets import resolve

    source = Path(resolve("model", init))
    with output_dir(Path(out), OUTPUT_MARK, overwrite=True) as tmp:  # never a folder a slice did not write
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        for name, module in modules.items():
            dtype = stored_dtype(source / name)
            shutil.rmtree(tmp / name)
            copy.deepcopy(module).to(dtype).save_pretrained(tmp / name, safe_serialization=True)
        info = tmp / "training.json"
        training = json.loads(info.read_text()) if info.is_file() else {}
        info.write_text(json.dumps({**training, key: record}, indent=1, default=str))
    return Path(out)


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype of a component folder's weights file (the built-in model stores fp16)."""
    from safetensors import safe_open

    path = next(folder.glob("*.safetensors"))
    with safe_open(str(path), "pt") as f:
        kind = f.get_slice(next(iter(f.keys()))).get_dtype()
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(kind, torch.float32)


def slice_entry(first: int, record: dict, batch: int, started: float, losses: list[float], **extra) -> dict:
    """What training.json records of one slice: its steps and samples, time, device and threads, its last
    100 steps' mean loss, and the exact command that ran it."""
    import sys
    import time

    return {"from_step": first, "to_step": record["step"], "samples": (record["step"] - first) * batch,
            "seconds": round(time.time() - started, 1), "device": "cpu", "threads": torch.get_num_threads(),
            "loss": round(sum(losses[-100:]) / len(losses[-100:]), 5) if losses else None, **extra,
            "command": " ".join(["subjectgen", *sys.argv[1:]])}
