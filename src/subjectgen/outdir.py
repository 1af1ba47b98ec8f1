"""Checks on a run's --out folder before any work: writable, and not holding a different run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import TrainConfig
from .errors import UserError
from .safeio import atomic_write_json

RUN_SPEC = "run.json"  # the settings a run was started with; written first, so a resume can check them


def prepare_out_dir(cfg: TrainConfig, resume: bool, overwrite: bool, accelerator=None) -> Path:
    """Validate --out and record the run's settings; on other processes, just wait for the main one."""
    out = Path(cfg.out)
    is_main = accelerator is None or accelerator.is_main_process
    if is_main:
        check_out_dir(out, cfg, resume, overwrite)
        atomic_write_json(out / RUN_SPEC, cfg.identity())
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out


def check_out_dir(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    if out.is_dir() and any(out.iterdir()):
        spec_file = out / RUN_SPEC
        if not spec_file.is_file():
            raise UserError(f"--out {out} is not empty and holds no subjectgen run; choose a new or empty folder")
        same = json.loads(spec_file.read_text()) == cfg.identity()
        if overwrite:
            shutil.rmtree(out)
        elif resume and not same:
            raise UserError(f"--out {out} holds a run with different settings; --resume needs the same "
                            "command, or choose another --out")
        elif not resume:
            what = "this finished run" if (out / "subject.json").is_file() and same else (
                "an unfinished run of these settings (pass --resume to continue it)" if same else "a different run")
            raise UserError(f"--out {out} already holds {what}; choose another folder or pass --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to --out {out} ({exc.strerror}); choose a folder you can write to") from None
    if resume and not (out / "checkpoints").is_dir() and not os.environ.get("SUBJECTGEN_QUIET"):
        print(f"note: {out} has no checkpoint yet; starting from step 0")
