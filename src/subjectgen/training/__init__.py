"""The one training loop (loop.py) and its helpers: what a step draws from (data.py), the loss (losses.py),
exact-resume checkpoints (checkpoints.py), and the run folder's checks, lock and record (outdir.py)."""

from .loop import LossLog, Trainer, TrainResult, make_accelerator, train

__all__ = ["LossLog", "Trainer", "TrainResult", "make_accelerator", "train"]
