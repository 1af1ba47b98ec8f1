"""The models that come with subjectgen, by short name.

`tiny`: random weights at toy size, built in code on first use (for tests and trying the code paths).
`builtin`: the model trained on the built-in emoji world, shipped in the package once trained;
until it is shipped, `builtin` stands for `tiny`.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).parent / "assets" / "builtin"
DEFAULT_MODEL = "builtin"


def names() -> list[str]:
    return ["builtin", "tiny"]


def resolve(name: str) -> Path | None:
    """The folder of a built-in model, building `tiny` into the cache the first time; None if not a name."""
    if name == "builtin" and (SHIPPED / "model_index.json").is_file():
        return SHIPPED
    if name in ("tiny", "builtin"):
        from .models import cache_dir
        from .tiny import save_tiny_pipeline

        folder = cache_dir() / "models" / "tiny"
        if not (folder / "model_index.json").is_file():
            save_tiny_pipeline(folder)
        return folder
    return None
