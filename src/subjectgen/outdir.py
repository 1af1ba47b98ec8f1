"""Checks on a run's --out folder before any work, and the record of what the run was started with."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import TrainConfig
from .errors import UserError
from .safeio import atomic_write_json

RUN_SPEC = "run.json"  # the settings a run was started with; a resume checks them


def check_out_dir(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse an --out we cannot write or that holds something else; writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    if out.is_dir() and any(out.iterdir()):
        spec_file = out / RUN_SPEC
        if not spec_file.is_file():
            raise UserError(f"--out {out} is not empty and holds no subjectgen run; choose a new or empty folder")
        same = json.loads(spec_file.read_text()) == cfg.identity()
        if resume and not same and not overwrite:
            raise UserError(f"--out {out} holds a run with different settings; --resume needs the same "
                            "command, or choose another --out")
        if not resume and not overwrite:
            finished = (out / "subject.json").is_file()
            what = ("this finished run" if finished else "an unfinished run of these settings (pass --resume)") \
                if same else "a different run"
            raise UserError(f"--out {out} already holds {what}; choose another folder or pass --overwrite")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --out {out} ({ancestor} is not a writable folder); choose another folder")


def record_run(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Start the run folder: clear it for --overwrite, then write the settings."""
    out = Path(out)
    if overwrite and not resume and out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_SPEC, cfg.identity())
