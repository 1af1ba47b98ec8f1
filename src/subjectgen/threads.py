"""How many CPU threads torch may use: the cores this process may run on, shared among the processes of one
launch, unless the user says otherwise. torch's own default counts the machine's cores, not the ones a
container or `taskset` allows, and a small model loses everything to threads waiting on each other."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def asked_threads(requested: int | None = None) -> int | None:
    """The threads the user asked for: --threads, else SUBJECTGEN_THREADS or OMP_NUM_THREADS; None if not asked."""
    for value in (requested, os.environ.get("SUBJECTGEN_THREADS"), os.environ.get("OMP_NUM_THREADS")):
        if value:
            return max(1, int(value))
    return None


def choose_threads(requested: int | None = None) -> int:
    """The threads asked for (asked_threads); else the available cores divided among the processes of an
    `accelerate launch` / torchrun on this machine (LOCAL_WORLD_SIZE)."""
    asked = asked_threads(requested)
    if asked:
        return asked
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, processes))


def apply_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads by the policy above; returns the number."""
    import torch

    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
