"""subjectgen: subject-driven text-to-image generation (DreamBooth, LoRA, Textual Inversion) on any SD model.

Names are imported on first use, so `subjectgen --help` starts without loading torch.
"""

from importlib import import_module

_EXPORTS = {
    "Components": "models", "load_model": "models", "Run": "adapters", "load_run": "adapters",
    "SubjectSet": "subjects", "load_subject": "subjects", "TrainConfig": "config", "TrainResult": "training",
    "train": "training", "generate": "sampling", "generate_to_folder": "generation", "UserError": "errors",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'subjectgen' has no attribute {name!r}")
