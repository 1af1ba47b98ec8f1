"""Checkpoints for exact resume: trainable tensors, optimizer, LR schedule, RNG states; safetensors + JSON.

Each checkpoint is a folder written under a temporary name and renamed, so a kill never leaves half of one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..safeio import atomic_dir, check_safetensors, read_json

KEEP = 2  # checkpoints kept on disk; older ones are removed


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state -> (flat tensors for safetensors, JSON-able rest), keyed 'param.slot'; a slot holding a
    dict (bitsandbytes' 8-bit AdamW keeps its quantized moments in one) flattened into 'param.slot.inner'. A tensor
    sharing its storage with one already taken (8-bit AdamW's quantization maps, one for all parameters) is copied:
    safetensors writes each storage once."""
    tensors, scalars, storages = {}, {}, set()

    def put(key: str, value) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                put(f"{key}.{name}", inner)
        elif torch.is_tensor(value):
            tensor = value.detach().cpu().contiguous()
            storage = tensor.untyped_storage().data_ptr()
            tensors[key] = tensor.clone() if storage in storages else tensor
            storages.add(storage)
        else:
            scalars[key] = value

    for index, slots in state["state"].items():
        put(str(index), slots)
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, *path = key.split(".")
        slots = state.setdefault(int(index), {})
        for name in path[:-1]:
            slots = slots.setdefault(name, {})
        slots[path[-1]] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, step: int, trainable: dict[str, torch.Tensor], optimizer, lr_scheduler,
                    rng_states: torch.Tensor) -> Path:
    """Write checkpoint `step` under `folder` and prune old ones. rng_states: one row per process."""
    final = Path(folder) / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"generators": rng_states.cpu().contiguous(), "torch": torch.get_rng_state()},
                  str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict()}, indent=1))
    for old in list_checkpoints(folder)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())


def load_checkpoint(path: Path) -> dict:
    """Everything a checkpoint holds, as tensors and plain values (no unpickling)."""
    path = Path(path)
    fix = f"remove {path} to resume from the checkpoint before it, or pass --overwrite to start again"
    state = read_json(path / "state.json", fix)
    for name in ("trainable", "optimizer", "rng"):
        try:
            check_safetensors(path / f"{name}.safetensors", "checkpoint file")
        except UserError as exc:
            raise UserError(f"{str(exc).split(';')[0]}; {fix}") from None
    rng = load_file(str(path / "rng.safetensors"))
    return {
        "step": state["step"],
        "trainable": load_file(str(path / "trainable.safetensors")),
        "optimizer": unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer"]),
        "lr_scheduler": state["lr_scheduler"],
        "generators": rng["generators"],
        "torch_rng": rng["torch"],
    }
