"""--base-quantization: the frozen denoiser's linear weights held in 8 or 4 bits while LoRA trains on top of them in
full precision (kohya's and diffusers' way to fit a 12 B FLUX.1 on one consumer GPU). int8 is torchao's weight-only
int8 and runs on any device, the CPU included; nf4 is bitsandbytes' 4-bit NormalFloat, on the devices the installed
bitsandbytes runs it on (CUDA, and the CPU with a recent release: the tested 0.50.2; the check tries a small layer
on the device). Only the frozen layers are quantized: LoRA's own layers, and anything else that trains, keep their
precision. The same check stands before --optimizer adamw8bit (bitsandbytes' 8-bit AdamW)."""

from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager

import torch

from ..errors import UserError


def check_quantization(kind: str | None, method, device) -> None:
    """A one-line UserError, before the run folder appears, when the quantization cannot run: the method trains the
    base's own weights, its library is missing, or (nf4) bitsandbytes cannot run a 4-bit layer on the device."""
    if kind is None:
        return
    if not method.quantizable_base:
        raise UserError(f"--base-quantization quantizes the frozen base under LoRA; {method.spec.name} trains no LoRA "
                        "on a frozen base (use lora)")
    check_quantizer(kind, device)


def check_quantizer(kind: str, device) -> None:
    """A one-line UserError when `kind`'s library is missing, or (nf4) bitsandbytes cannot run a 4-bit layer on the
    device."""
    if kind == "int8" and not installed("torchao"):
        raise UserError("--base-quantization int8 needs torchao: pip install torchao")
    if kind == "nf4":
        check_bitsandbytes("--base-quantization nf4", nf4_probe, device, "--base-quantization int8 runs anywhere")


def check_bitsandbytes(option: str, probe, device, instead: str) -> None:
    """A one-line UserError naming `option` when bitsandbytes is missing or `probe(device)` fails on the device
    (an older bitsandbytes on a CPU, a GPU it has no kernels for)."""
    if not installed("bitsandbytes"):
        raise UserError(f"{option} needs bitsandbytes: pip install bitsandbytes ({instead})")
    try:
        with libraries_quietly("bitsandbytes"):
            probe(torch.device(device))
    except Exception as error:  # noqa: BLE001 - any failure of the library on this device is the answer
        from importlib.metadata import PackageNotFoundError, version

        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        try:
            release = f"bitsandbytes {version('bitsandbytes')}"
        except PackageNotFoundError:  # importable without its metadata (a source tree on the path)
            release = "bitsandbytes"
        raise UserError(f"{option}: {release} cannot run it on {device} ({reason}); {instead}") from None


def nf4_probe(device: torch.device) -> None:
    """A small 4-bit layer's forward and backward on `device`: what a quantized base does at each step (its numbers
    drawn from no random generator, so the run's are as they would be without the check)."""
    linear = torch.nn.utils.skip_init(torch.nn.Linear, 64, 64)
    with torch.no_grad():
        linear.weight.copy_(torch.linspace(-1, 1, 64 * 64).view(64, 64))
        linear.bias.zero_()
    layer = nf4_linear(linear, torch.float32, device)
    inputs = torch.linspace(-1, 1, 128, device=device).view(2, 64).requires_grad_()
    layer(inputs).sum().backward()


def adamw8bit_probe(device: torch.device) -> None:
    """One step of bitsandbytes' 8-bit AdamW on a parameter on `device` (its state is blockwise: 4096 values)."""
    import bitsandbytes

    weight = torch.nn.Parameter(torch.zeros(4096, device=device))
    weight.grad = torch.ones_like(weight)
    bitsandbytes.optim.AdamW8bit([weight], lr=1e-3).step()


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def frozen_linear(module: torch.nn.Module, name: str) -> bool:
    """A base layer to quantize: a plain nn.Linear that does not train and is not a LoRA's own (peft's lora_A and
    lora_B, frozen at generation)."""
    return (type(module) is torch.nn.Linear and not any(p.requires_grad for p in module.parameters())
            and ".lora_" not in f".{name}")


def quantize_frozen(module: torch.nn.Module, kind: str, compute_dtype: torch.dtype, device) -> int:
    """Quantize every frozen nn.Linear of `module` (frozen_linear) and move the module to `device`: each layer is
    quantized as it reaches the device, one at a time, so the device never holds all of `module` unquantized (a
    12 B FLUX.1's weights are 24 GB in bf16; in nf4, 6). Returns how many layers."""
    count = sum(frozen_linear(m, name) for name, m in module.named_modules())
    if kind == "int8":
        with libraries_quietly("torchao", "torch.utils._pytree"):
            from torchao.quantization import Int8WeightOnlyConfig, quantize_

            # device: each matching layer moved there, then quantized; the others after
            quantize_(module, Int8WeightOnlyConfig(), filter_fn=frozen_linear, device=device)
    else:
        for parent_name, parent in list(module.named_modules()):
            for name, child in list(parent.named_children()):
                if frozen_linear(child, f"{parent_name}.{name}".lstrip(".")):
                    setattr(parent, name, nf4_linear(child, compute_dtype, device))
    module.to(device)
    return count


def nf4_linear(linear: torch.nn.Linear, compute_dtype: torch.dtype, device) -> torch.nn.Module:
    """bitsandbytes' 4-bit layer holding a frozen linear layer's weights, quantized as it moves to `device`. Made
    on the meta device: its own random initial weights, replaced at once, would cost a full-size draw per layer."""
    with libraries_quietly("bitsandbytes"):
        import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(linear.weight.data.cpu(), requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data.cpu(), requires_grad=False)
    return layer.to(device).requires_grad_(False)


@contextmanager
def libraries_quietly(*names: str):
    """The named libraries' loggers at ERROR inside the block. torchao's import reports every optional CUDA kernel it
    cannot load on this machine (a CPU build), bitsandbytes' the CPU kernels it would fetch from the hub: noise for
    what subjectgen uses of them."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
