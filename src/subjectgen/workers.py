"""Many small jobs on a CPU (a bench's subjects, a farm's experts): worker processes or threads.

A small model (the built-in one: a 17 MB UNet) keeps one core busy with its own small matmuls, but two threads of
one process spend much of their time waiting on each other; N processes at one thread each use N cores better
(`benchmarks/workers.py`, docs/RESULTS.md). A Stable Diffusion UNet's matmuls are large enough for threads, and a
GPU is one device, so there `auto` is one process. `auto` is capped by the jobs, the cores and the free memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .threads import asked_threads, available_cores

AUTO = "auto"
SMALL_UNET_BYTES = 256 * 2**20  # above this (an SD UNet: 1.7-3.4 GB) threads use the cores well
WORKER_BASE_BYTES = 2**30  # a worker beside its model: torch, the evaluators, a batch (the bench peaked at 0.65 GiB)


@dataclass(frozen=True)
class Choice:
    workers: int
    why: str


def default_workers():
    """--workers' default: SUBJECTGEN_WORKERS if set (e.g. 1 in a test suite), else auto."""
    return workers_type(os.environ.get("SUBJECTGEN_WORKERS") or AUTO)


def workers_type(text: str):
    """argparse type of --workers: 'auto' or an integer >= 1."""
    import argparse

    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be '{AUTO}' or an integer >= 1, not {text!r}")
    return value


def unet_bytes(model: str) -> int | None:
    """The size of a local model's UNet weights (a diffusers folder, or a single checkpoint file); None for a
    hub id, whose files are not looked at here."""
    from . import assets

    path = Path(assets.resolve("model", model)).expanduser()
    if path.is_file():
        return path.stat().st_size
    unet = path / "unet"
    if not unet.is_dir():
        return None
    sizes = [f.stat().st_size for f in unet.iterdir() if f.suffix in (".safetensors", ".bin")]
    return max(sizes) if sizes else None  # a folder may hold fp32 and fp16 copies: one is loaded


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def choose_workers(requested, jobs: int, model: str, threads: int | None = None, *, cuda: bool | None = None,
                   cores: int | None = None, memory: int | None = -1) -> Choice:
    """How many local processes run `jobs` independent jobs. A number is taken as given (capped by the jobs).
    `auto`: one on a GPU or for a large or unknown model; else as many as the cores allow at `threads` (--threads,
    SUBJECTGEN_THREADS or OMP_NUM_THREADS, else 1) each, but no more than the jobs and than the free memory holds."""
    jobs = max(1, jobs)
    if requested != AUTO:
        return Choice(min(int(requested), jobs), "--workers")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return Choice(1, "a GPU: one process (several GPUs: accelerate launch)")
    size = unet_bytes(model)
    if size is None or size > SMALL_UNET_BYTES:
        return Choice(1, "a large model (or a hub id): one process, its threads")
    cores = available_cores() if cores is None else cores
    per = asked_threads(threads) or 1
    n = min(jobs, max(1, cores // per))
    memory = available_memory() if memory == -1 else memory
    if memory is not None:
        n = max(1, min(n, memory // (WORKER_BASE_BYTES + 4 * size)))
    why = f"a small model on {cores} cores: {n} processes at {per} thread{'s' * (per > 1)} each"
    return Choice(n, why)


def launch_local(argv: list[str], workers: int, what: str) -> None:
    """Run `subjectgen <argv>` as `workers` local processes, with the environment torchrun gives its processes
    (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, ...), so each takes its share of the jobs and of the cores. If one
    process fails, the others are stopped; a rerun resumes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": str(workers), "LOCAL_WORLD_SIZE": str(workers), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, "-m", "subjectgen.cli", *argv],
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(workers)]
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        codes = [p.wait() for p in procs]
    failed = [c for c in codes if c]
    if failed:
        raise UserError(f"a {what} worker stopped with exit code {failed[0]} (its message is above); rerun the same "
                        "command to resume")

