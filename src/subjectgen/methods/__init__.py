"""Method families. Each module states only what is special: what trains, the prompts, what is saved."""

from __future__ import annotations

from ..config import METHODS, TrainConfig
from ..errors import UserError
from ..models import Components
from ..subjects import SubjectSet
from .base import Method


def make_method(cfg: TrainConfig, components: Components, subject: SubjectSet) -> Method:
    from .dreambooth import DreamBooth, DreamBoothLoRA
    from .textual_inversion import TextualInversion

    classes = {"dreambooth": DreamBooth, "lora": DreamBoothLoRA, "textual-inversion": TextualInversion}
    if cfg.method not in classes:
        raise UserError(f"unknown method '{cfg.method}'; choose one of: {', '.join(METHODS)}")
    return classes[cfg.method](cfg, components, subject)
