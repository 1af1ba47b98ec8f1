"""--base-quantization: the frozen denoiser's linear weights held in 8 or 4 bits while LoRA trains on top of them in
full precision (kohya's and diffusers' way to fit a 12 B FLUX.1 on one consumer GPU). int8 is torchao's weight-only
int8 and runs on any device, the CPU included; nf4 is bitsandbytes' 4-bit NormalFloat and runs on CUDA only. Only
the frozen layers are quantized: LoRA's own layers, and anything else that trains, keep their precision."""

from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager

import torch

from ..errors import UserError


def check_quantization(kind: str | None, method, device) -> None:
    """A one-line UserError, before the run folder appears, when the quantization cannot run: the method trains the
    base's own weights, its library is missing, or (nf4) there is no CUDA GPU."""
    if kind is None:
        return
    if not method.quantizable_base:
        raise UserError(f"--base-quantization quantizes the frozen base under LoRA; {method.spec.name} trains no LoRA "
                        "on a frozen base (use lora)")
    if kind == "int8" and not installed("torchao"):
        raise UserError("--base-quantization int8 needs torchao: pip install torchao")
    if kind == "nf4" and (torch.device(device).type != "cuda" or not installed("bitsandbytes")):
        raise UserError("--base-quantization nf4 needs a CUDA GPU and bitsandbytes (pip install bitsandbytes); "
                        "--base-quantization int8 runs anywhere")


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def frozen_linear(module: torch.nn.Module) -> bool:
    return type(module) is torch.nn.Linear and not any(p.requires_grad for p in module.parameters())


def quantize_frozen(module: torch.nn.Module, kind: str, compute_dtype: torch.dtype) -> int:
    """Quantize every frozen nn.Linear of `module` in place (on the device it is on); returns how many."""
    count = sum(frozen_linear(m) for m in module.modules())
    if kind == "int8":
        with torchao_quietly():
            from torchao.quantization import Int8WeightOnlyConfig, quantize_

            quantize_(module, Int8WeightOnlyConfig(), filter_fn=lambda m, name: frozen_linear(m))
    else:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if frozen_linear(child):
                    setattr(parent, name, nf4_linear(child, compute_dtype))
    return count


def nf4_linear(linear: torch.nn.Linear, compute_dtype: torch.dtype) -> torch.nn.Module:
    """bitsandbytes' 4-bit layer holding a frozen linear layer's weights (quantized as it moves to the GPU)."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, quant_type="nf4", device="cpu")
    layer.weight = bnb.nn.Params4bit(linear.weight.data.cpu(), requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data.cpu(), requires_grad=False)
    return layer.to(linear.weight.device).requires_grad_(False)


@contextmanager
def torchao_quietly():
    """torchao's import reports every optional CUDA kernel it cannot load on this machine (a CPU build): those lines
    are noise for weight-only int8."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
