"""Method families. Each module states only what is special: what trains, the batch, the loss, what is
saved, how its run folder loads, its denoiser at generation. Which methods exist: registry.py."""

from __future__ import annotations

from .registry import REGISTRY, MethodSpec, get, names, register  # noqa: F401


def make_method(cfg, components, subject):
    """The registered method of `cfg.method`, set up on these components and this subject."""
    return get(cfg.method).load()(cfg, components, subject)
