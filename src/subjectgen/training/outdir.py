"""Run folders: the checks on --out before any work, one writer at a time, and the record of the settings.

A run folder (and a bench folder) has one writer: `hold(folder)` takes an advisory lock (flock on
FOLDER/.subjectgen.lock, holding the writer's pid) before the first write. The kernel drops it when the
holder dies, so a lock left by a killed process is simply taken over.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .checkpoints import list_checkpoints
from ..config import TrainConfig
from ..errors import UserError
from ..methods import registry
from ..safeio import atomic_write_json, read_json

RUN_SPEC = "run.json"  # the settings a run was started with; a resume checks them
RUN_SPEC_FIX = "the run's record is damaged; pass --overwrite (without --resume) to start the run again, or choose " \
               "another --out"
LOCK = ".subjectgen.lock"
# Settings a --resume may change (the way out of a diverged run); run.json records each change.
RESUME_MAY_CHANGE = ("lr", "mixed_precision", "max_grad_norm")

# lock path -> [fd, holds, made], so a holder may take its own lock again (bench -> report); made: what the first
# hold created (the folder, or only the lock file in a folder that was there), which a failed start removes again
_held: dict[str, list] = {}


def hold(folder: Path, what: str = "--out") -> None:
    """Make `folder` and take its writer lock; a one-line error naming the pid of a live holder."""
    folder = Path(folder)
    made = folder if not folder.exists() else None
    folder.mkdir(parents=True, exist_ok=True)
    path = str((folder / LOCK).resolve())
    if path in _held:
        _held[path][1] += 1
        return
    import fcntl

    made = made or (None if os.path.exists(path) else Path(path))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise busy(what, folder, holder) from None
    os.ftruncate(fd, 0)  # a dead holder's pid, if any, is replaced by ours
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = [fd, 1, made]


def busy(what: str, folder: Path, holder: str) -> UserError:
    return UserError(f"{what} {folder} is being written by another subjectgen process (pid {holder}); wait for it "
                     "to finish or choose another folder")


def live_holder(folder: Path) -> str | None:
    """The pid of another live process holding `folder`'s writer lock, without taking it; None when free."""
    path = Path(folder) / LOCK
    if not path.is_file() or str(path.resolve()) in _held:
        return None
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return None


def release(folder: Path, remove_if_empty: bool = False) -> None:
    """Give back one hold of `folder`'s lock (the lock file stays; its pid is only informative).
    remove_if_empty: for a start that failed, what the hold made (the folder, or the lock file in a folder that was
    there) goes again if the folder holds nothing else, so --out is left as it was."""
    path = str((Path(folder) / LOCK).resolve())
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[path]
        made = entry[2]
        if remove_if_empty and made is not None and not contents(folder):  # still ours: the lock is dropped below
            shutil.rmtree(made, ignore_errors=True) if made.is_dir() else made.unlink(missing_ok=True)
        os.close(entry[0])  # closing the descriptor drops the flock


def contents(folder: Path) -> list[Path]:
    """What a folder holds besides its lock file."""
    return [p for p in Path(folder).iterdir() if p.name != LOCK]


def input_digest(cfg: TrainConfig) -> str:
    """A hash of the files the run learns from (the subject's photos; --images: a folder of images or a farm, its
    records and filter included), so a resume on changed data is refused rather than continued silently."""
    import hashlib

    digest = hashlib.sha256()
    for root in (Path(p) for p in (cfg.subject_dir, cfg.images) if p and p != "world" and Path(p).is_dir()):
        for f in sorted(f for f in root.rglob("*") if f.is_file() and not f.name.startswith(".")):
            digest.update(f"{f.relative_to(root)}|".encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def same_run(saved: dict, cfg: TrainConfig, resume: bool) -> bool:
    """Whether run.json's settings are this command's; a resume may change RESUME_MAY_CHANGE."""
    ignore = {"resumes", "inputs"} | (set(RESUME_MAY_CHANGE) if resume else set())
    mine, saved = cfg.identity(), legacy_masked_loss(saved, cfg)
    return {k: v for k, v in saved.items() if k not in ignore} == {k: v for k, v in mine.items() if k not in ignore}


def legacy_masked_loss(saved: dict, cfg: TrainConfig) -> dict:
    """A run.json from before --masked-loss had a default recorded off as False: the same run as None (the method's
    own) where that is still off on every model, so such a run resumes."""
    off = not any(registry.get(cfg.method).default("masked_loss", small) for small in (False, True))
    return {**saved, "masked_loss": None} if saved.get("masked_loss") is False and cfg.masked_loss is None and off \
        else saved


def check_out_dir(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse an --out we cannot write or that holds something else; writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    holder = live_holder(out) if out.is_dir() else None
    if holder is not None:  # a run in progress: say so, not "unfinished" (a --resume would be refused too)
        raise busy("--out", out, holder)
    if out.is_dir() and contents(out):
        spec_file = out / RUN_SPEC
        if not spec_file.is_file():
            raise UserError(f"--out {out} is not empty and holds no subjectgen run; choose a new or empty folder")
        if resume or not overwrite:  # a run --overwrite replaces whole is not read: not even a damaged record stops it
            check_same_run(out, read_json(spec_file, RUN_SPEC_FIX, keys=()), cfg, resume, overwrite)
    check_folder_writable(out)


def check_same_run(out: Path, saved: dict, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """The run in --out (its run.json `saved`) may be resumed, or asks for --overwrite."""
    if resume and not same_run(saved, cfg, resume=True) and not overwrite:
        changeable = ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE)
        raise UserError(f"--out {out} holds a run with different settings; --resume needs the same "
                        f"command (it may change only {changeable}), or choose another --out")
    if resume and not overwrite and saved.get("inputs") not in (None, input_digest(cfg)):
        raise UserError(f"--out {out} holds a run started on other data (its photos or --images changed since); "
                        "restore them, or pass --overwrite (without --resume) to start again")
    if not resume:
        finished = (out / "subject.json").is_file()
        what = ("this finished run" if finished else "an unfinished run of these settings (pass --resume)") \
            if same_run(saved, cfg, resume=False) else "a different run"
        raise UserError(f"--out {out} already holds {what}; choose another folder or pass --overwrite")


def check_folder_writable(out: Path) -> None:
    """A one-line error unless the nearest existing folder of `out` can be written."""
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --out {out} ({ancestor} is not a writable folder); choose another folder")


def record_run(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Start the run folder (its lock already held): clear it for --overwrite, then write the settings. A resume
    that changes a setting appends {"step", "changed": {name: [old, new]}} to run.json's "resumes"."""
    out = Path(out)
    spec_file = out / RUN_SPEC
    saved = read_json(spec_file, RUN_SPEC_FIX, keys=()) if resume and spec_file.is_file() else {}
    if overwrite and not resume and out.is_dir():
        for entry in contents(out):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    spec = cfg.identity()
    changed = {k: [saved[k], spec[k]] for k in RESUME_MAY_CHANGE if k in saved and saved[k] != spec[k]}
    checkpoints = list_checkpoints(out / "checkpoints") if resume else []
    step = int(checkpoints[-1].name.split("-")[1]) if checkpoints else 0
    resumes = saved.get("resumes", []) + ([{"step": step, "changed": changed}] if changed else [])
    atomic_write_json(spec_file, {**spec, "inputs": input_digest(cfg), **({"resumes": resumes} if resumes else {})})
