"""Every pretrained thing subjectgen uses, resolved by kind and reference in one place, with its fingerprint.

Kinds: "model" (a base model: a built-in name, a diffusers folder, a single file, a hub id), "dino" and
"clip" (evaluators), and any kind a method adds for its own pretrained network (register_builtin). A
built-in name resolves to a folder shipped in the package (or, for `tiny`, built into the cache on first
use); anything else is returned as given, for its loader to open. `fingerprint` hashes a local asset's
files, so a run can record exactly which weights it stood on and refuse to load onto others.

`tiny`: random weights at toy size, built in code (for tests and trying the code paths).
`builtin`: the model trained on the built-in emoji world, shipped in the package.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import UserError

ASSETS = Path(__file__).parent / "assets"
SHIPPED = ASSETS / "builtin"   # the built-in base model
EVALUATORS = ASSETS / "evaluators"
EMOJIBENCH = ASSETS / "emojibench"  # the built-in benchmark (subjectgen world build writes it)
IMAGE_ENCODER = ASSETS / "image_encoder"  # the generator side's CLIP image tower (world train-image-encoder)
PROMPTNET = ASSETS / "promptnet"  # ProFusion's PromptNet for the built-in model (profusion pretrain)
APPRENTICE = ASSETS / "apprentice"  # the SuTI apprentice for the built-in model (apprentice train), IP-Adapter format
DEFAULT_MODEL = "builtin"
BUILTIN: dict[str, dict[str, Path]] = {"model": {"builtin": SHIPPED},
                                       "dino": {"builtin": EVALUATORS / "dino"},
                                       "clip": {"builtin": EVALUATORS / "clip"},
                                       "image_encoder": {"builtin": IMAGE_ENCODER},
                                       "promptnet": {"builtin": PROMPTNET},
                                       "apprentice": {"builtin": APPRENTICE}}


def register_builtin(kind: str, name: str, folder: Path) -> None:
    """A method's own shipped network (e.g. a PromptNet) under a short name."""
    BUILTIN.setdefault(kind, {})[name] = Path(folder)


def cache_dir() -> Path:
    return Path(os.environ.get("SUBJECTGEN_CACHE", Path.home() / ".cache" / "subjectgen"))


def builtin_names(kind: str = "model") -> list[str]:
    return list(BUILTIN.get(kind, {})) + (["tiny"] if kind == "model" else [])


def builtin_path(kind: str, ref: str) -> Path | None:
    """The folder of a built-in asset; None if `ref` is not a built-in name of that kind."""
    if kind == "model" and ref == "tiny":
        from .tiny import save_tiny_pipeline

        folder = cache_dir() / "models" / "tiny"
        if not (folder / "model_index.json").is_file():
            save_tiny_pipeline(folder)
        return folder
    return BUILTIN.get(kind, {}).get(ref)


def resolve(kind: str, ref: str) -> str:
    """What a loader opens for this reference: a built-in name's folder, else the reference unchanged."""
    if kind not in BUILTIN:
        raise UserError(f"unknown asset kind '{kind}'")
    path = builtin_path(kind, str(ref))
    return str(path) if path is not None else str(ref)


def fingerprint(kind: str, ref: str) -> str | None:
    """A short hash of a local asset's files (weights and configs): a built-in name, a folder or a single
    file. None for a hub id, whose files are not read here. Hashing a Stable Diffusion folder takes seconds,
    so the hash is kept (in the cache folder) under the files' names, sizes and modification times."""
    path = Path(resolve(kind, ref)).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*")  # not hidden ones, e.g. a hub download's .cache/ metadata
                       if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts))
    elif path.is_file():
        files = [path]
    else:
        return None
    stamp = hashlib.sha256(repr([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()).hexdigest()
    known = _read_fingerprints()
    if stamp not in known:
        known[stamp] = _hash_files(path, files)
        _write_fingerprints(known)
    return known[stamp]


def _hash_files(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(root)).encode() if f != root else b"")
        one = hashlib.sha256()
        with open(f, "rb") as handle:  # in chunks: a checkpoint can be gigabytes (file_digest is 3.11+)
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                one.update(chunk)
        digest.update(one.digest())
    return digest.hexdigest()[:16]


def _fingerprints_file() -> Path:
    return cache_dir() / "fingerprints.json"


def _read_fingerprints() -> dict[str, str]:
    try:
        return json.loads(_fingerprints_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_fingerprints(known: dict[str, str]) -> None:
    """Best effort: an unwritable cache only means hashing again next time."""
    from .safeio import atomic_write_json

    try:
        atomic_write_json(_fingerprints_file(), known)
    except (OSError, UserError):
        pass


def record(kind: str, ref: str) -> dict:
    """How a manifest records an asset it used."""
    return {"kind": kind, "ref": str(ref), "fingerprint": fingerprint(kind, ref)}


def check_recorded(entry: dict, what: str) -> None:
    """A one-line error when a recorded asset's weights are no longer the ones it was recorded with."""
    now = fingerprint(entry["kind"], entry["ref"])
    if entry.get("fingerprint") and now and now != entry["fingerprint"]:
        raise UserError(f"{what} was made with {entry['kind']} '{entry['ref']}' (fingerprint {entry['fingerprint']}), "
                        f"whose files have changed since (now {now}); train it again on the current weights, "
                        "or restore the ones it was made with")


# The methods whose runs need a pretrained network of their own, made for one base model: (asset kind, flag).
PRETRAINED = {"profusion": ("promptnet", "--promptnet"), "apprentice": ("apprentice", "--apprentice")}


def unfit_pretrained(method: str, settings, model: str) -> str | None:
    """Why `method` cannot run on `model` with its pretrained network (named by `settings`' attribute of that
    kind: a BenchConfig's or parsed arguments' `promptnet`, `apprentice`), missing or made for another base model
    by its record's fingerprint; None when it can, or the method needs none."""
    if method not in PRETRAINED:
        return None
    kind, flag = PRETRAINED[method]
    ref = getattr(settings, kind)
    folder = Path(resolve(kind, ref))
    if not folder.is_dir():
        return f"its {flag} {ref} does not exist"
    records = [folder / n for n in ("training.json", "subject.json") if (folder / n).is_file()]
    made = next((e for r in records for e in json.loads(r.read_text()).get("assets", []) if e["kind"] == "model"),
                None)
    if made and made.get("fingerprint") and made["fingerprint"] != fingerprint("model", model):
        return f"its {flag} {ref} was made for {made['ref']}, not for --model {model}"
    return None


def missing_local_path(ref: str) -> bool:
    """A reference that can only be a local path (not a built-in name, not a hub id's owner/name: it starts with
    . / or ~, has a suffix or more than one slash, or its first folder exists here) and is not there."""
    if ref in builtin_names("model") or Path(ref).expanduser().exists():
        return False
    first = ref.split("/", 1)[0]
    return (ref.startswith((".", "/", "~")) or ref.count("/") != 1 or bool(Path(ref).suffix)
            or Path(first).is_dir())
