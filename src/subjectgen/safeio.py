"""Writing weights, images and JSON atomically (temporary name, then rename); which suffixes are pickles.

Every writer runs inside `writing(target, tmp)`: a full disk (ENOSPC, a quota) or a read-only place is a
one-line UserError naming the target, and the temporary file or folder is removed, so nothing is
half-written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file

from .errors import UserError

PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def disk_errno(exc: BaseException) -> int | None:
    """The errno of a write failure, also when a library wraps it (safetensors raises its own error type)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    text = str(exc)
    if "No space left on device" in text or "os error 28" in text:
        return errno.ENOSPC
    return None


@contextmanager
def writing(target: Path, tmp: Path | None = None) -> Iterator[None]:
    """Translate a full or read-only disk into a one-line UserError naming `target`; remove `tmp` on any failure."""
    try:
        yield
    except BaseException as exc:
        if tmp is not None:
            remove(tmp)
        code = disk_errno(exc)
        if code in DISK_FULL:
            raise UserError(f"no space left on the device while writing {target}; free some space (or choose "
                            "another folder) and run the command again") from None
        if code in NOT_WRITABLE:
            raise UserError(f"cannot write {target} ({os.strerror(code)}); choose a folder you can write to") from None
        raise


def remove(path: Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename."""
    final = Path(final)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    with writing(final, tmp):
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


OUTPUT_MARK = ".subjectgen-output"  # in every folder a command writes whole: how the tool knows its own folders


def check_output_dir(out: Path, manifest: str, overwrite: bool = False, what: str = "--out") -> None:
    """Refuse, writing nothing, an `out` that `output_dir` must not replace: a file, the working directory or a
    folder above it, a folder of someone else's files (neither OUTPUT_MARK nor `manifest`, the file this kind of
    folder always holds, which older versions wrote without the mark), or one of ours without `overwrite`."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise UserError(f"{what} {out} is a file; give a folder to write")
    here, target = Path.cwd().resolve(), out.resolve()
    if target == here or target in here.parents:
        raise UserError(f"{what} {out} is the working directory or a folder above it, which subjectgen never "
                        "replaces; give a new folder")
    if not any(out.iterdir()):
        return
    if not ((out / OUTPUT_MARK).is_file() or (out / manifest).is_file()):
        raise UserError(f"{what} {out} holds files subjectgen did not write (no {manifest}); choose a new or empty "
                        "folder")
    if not overwrite:
        raise UserError(f"{what} {out} already holds what subjectgen wrote; pass --overwrite to replace it, or "
                        "choose another folder")


@contextmanager
def output_dir(out: Path, manifest: str, overwrite: bool = False, what: str = "--out") -> Iterator[Path]:
    """`atomic_dir` for a folder a user named: checked (again, at the moment of writing) by `check_output_dir`,
    and marked as ours."""
    check_output_dir(out, manifest, overwrite, what)
    with atomic_dir(out) as tmp:
        (tmp / OUTPUT_MARK).write_text("written by subjectgen; a later command may replace this folder\n")
        yield tmp


def atomic_file(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary name beside `path`, then one rename: a reader sees the old file or the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")  # the suffix tells Pillow the format
    with writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_file(path, lambda tmp: tmp.write_bytes(data))


def read_json(path: Path, fix: str, keys: tuple[str, ...] | None = None) -> Any:
    """The JSON in `path`; a missing, unreadable or damaged file is a one-line UserError naming it and `fix`.
    keys: the file must hold an object with these keys (valid JSON that lacks one is damaged too)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing; {fix}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}); {fix}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); {fix}") from None
    if keys is not None and not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; {fix}")
    missing = [k for k in keys or () if k not in data]
    if missing:
        raise UserError(f"{path} lacks '{missing[0]}'; {fix}")
    return data


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def atomic_save_image(path: Path, image) -> None:
    atomic_file(path, image.save)


def check_safetensors(path: Path, what: str = "weights file") -> None:
    """A one-line UserError unless `path` is a complete safetensors file (its header read, its size checked)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; restore it, or train (or download) again")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        reason = str(exc).split(": ", 1)[-1]
        raise UserError(f"{what} {path} is damaged or truncated ({reason}); restore it, or train (or download) "
                        "again") from None
