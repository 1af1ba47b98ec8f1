"""Method families. Each module states only what is special: what trains, the batch, the loss, what is
saved, how its run folder loads, its denoiser at generation. Which methods exist: registry.py."""

from __future__ import annotations

from .registry import REGISTRY, MethodSpec, get, names, register


__all__ = ["REGISTRY", "MethodSpec", "get", "names", "register"]
