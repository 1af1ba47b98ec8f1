"""How close training and generation on the built-in model come to this machine's physical limit, and what the
profile says stands in the way.

At one thread (torch.set_num_threads(1)), in one process:
- the limit: the thread's fp32 matmul rate on 1024 x 1024 matrices (2n³ FLOPs per product);
- a `train lora` step's FLOPs, counted by torch's FlopCounterMode over the real loop (the count of a 12-step run
  less a 4-step run's, over 8: the set-up cancels), its measured steps/s (a 200-step run, uncounted) and so its
  GFLOP/s and share of the limit; batch 1 and batch 4;
- generation's FLOPs per image (25 steps, guidance: the count of 16 images less 8, over 8) and images/s (16
  images at batch 16 on loaded networks), likewise;
- the kernels alone (`floors`): the networks' forward (and backward) with no loop around them, the fastest any
  loop on them can go;
- the training loop's torch.profiler table: the ops with the most self CPU time per step, and the ops per step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SUBJECT = "src/subjectgen/assets/emojibench/dog"


def matmul_rate(n: int = 1024, reps: int = 20) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - started) / 1e9


def config(out: Path, steps: int, batch: int):
    from subjectgen import TrainConfig

    return TrainConfig(method="lora", subject_dir=SUBJECT, class_noun="dog", out=str(out), steps=steps,
                       batch_size=batch, prior_preservation=False)


def counted(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_flops(work: Path, batch: int) -> float:
    from subjectgen import train

    runs = {steps: counted(lambda: train(config(work / f"count-{steps}", steps, batch), overwrite=True,
                                         progress=False)) for steps in (4, 12)}
    return (runs[12] - runs[4]) / 8


def train_rate(work: Path, batch: int, steps: int = 200) -> float:
    from subjectgen import train

    result = train(config(work / "rate", steps, batch), overwrite=True, progress=False)
    return result.manifest["metrics"]["steps_per_second"]


def generation(images: int) -> tuple[float, float]:
    """(FLOPs per image, images/s at batch `images`) of 25-step guided sampling with the built-in model."""
    from subjectgen.generation import open_run_or_model
    from subjectgen.sampling import generate

    components = open_run_or_model("builtin").components

    def run(n: int, batch: int) -> None:
        generate(components, ["a dog on the beach"] * n, list(range(n)), 25, 7.5, batch_size=batch)

    flops = (counted(lambda: run(16, 8)) - counted(lambda: run(8, 8))) / 8
    run(2, 2)
    started = time.perf_counter()
    run(images, images)
    return flops, images / (time.perf_counter() - started)


def floors(batches: tuple[int, ...], images: int, reps: int = 30) -> dict[str, float]:
    """The kernels alone, the most any loop on them reaches: the built-in UNet with `train lora`'s adapters (rank
    4 on to_q/k/v/out), forward and backward of an MSE at each batch (no data, no optimizer) -> steps/s; and
    generation's networks alone, 25 UNet calls at twice the batch (guidance) and one VAE decode -> images/s."""
    import torch
    from peft import LoraConfig

    from subjectgen.generation import open_run_or_model
    from subjectgen.methods.dreambooth import UNET_LORA_TARGETS

    components = open_run_or_model("builtin").components
    unet, vae, config = components.unet, components.vae, components.unet.config
    size, width = config.sample_size, config.cross_attention_dim
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=UNET_LORA_TARGETS))
    rates = {}
    for batch in batches:
        x, text = torch.randn(batch, config.in_channels, size, size), torch.randn(batch, 77, width)
        t = torch.randint(0, 1000, (batch,))

        def step() -> None:
            unet(x, t, encoder_hidden_states=text).sample.square().mean().backward()

        rates[f"train {batch}"] = 1 / timed(step, reps)
    unet.disable_adapters()
    x, text = torch.randn(2 * images, config.in_channels, size, size), torch.randn(2 * images, 77, width)

    @torch.no_grad()
    def sample() -> None:
        for step in range(25):
            unet(x, torch.full((2 * images,), 999 - 40 * step), encoder_hidden_states=text)
        vae.decode(x[:images] / vae.config.scaling_factor)

    rates["generation"] = images / timed(sample, 2)
    return rates


def timed(fn, reps: int) -> float:
    """Seconds per call, after two warm-up calls."""
    fn(), fn()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps


COMPUTE = ("conv", "mm", "attention", "bmm", "addmm", "baddbmm", "linear")


def op_times(work: Path, steps: int) -> dict[str, tuple[int, float]]:
    """Op name -> (calls, self CPU µs) over a `train lora` run of `steps` steps at batch 1, set-up included."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from subjectgen import train

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        train(config(work / f"profile-{steps}", steps, 1), overwrite=True, progress=False)
    return {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages()}


def profile(work: Path, rows: int = 10) -> str:
    """The loop's profile per step: a 40-step run's op times less an 8-step run's, over 32 (the set-up cancels)."""
    short, long = op_times(work, 8), op_times(work, 40)
    per_step = {k: ((c - short.get(k, (0, 0))[0]) / 32, (t - short.get(k, (0, 0))[1]) / 32)
                for k, (c, t) in long.items()}
    per_step = {k: v for k, v in per_step.items() if v[1] > 0}
    total, calls = sum(t for _, t in per_step.values()), sum(c for c, _ in per_step.values())
    compute = sum(t for k, (_, t) in per_step.items() if any(w in k for w in COMPUTE))
    top = sorted(per_step.items(), key=lambda kv: kv[1][1], reverse=True)[:rows]
    lines = [f"The training loop's profile per step (`train lora`, batch 1, one thread; a 40-step run's op times less "
             f"an 8-step run's, over 32): {total / 1000:.1f} ms of op self time in {calls:.0f} op calls "
             f"({total / calls:.1f} µs each on average); {compute / total:.0%} of it in the compute kernels "
             "(convolutions, matrix products, attention), the rest in element-wise ops, copies, the optimizer and "
             "autograd's bookkeeping. The ops with the most self time:\n",
             "| op | calls per step | self ms per step | share of self time |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {c:.0f} | {t / 1000:.2f} | {t / total:.1%} |" for k, (c, t) in top]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-steps", type=int, default=200, help="steps of the timed training runs")
    parser.add_argument("--images", type=int, default=16, help="images of the timed generation")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    limit = matmul_rate()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for batch in (1, 4):
            flops, rate = train_flops(work, batch), train_rate(work, batch, args.rate_steps)
            rows.append((f"`train lora` step, batch {batch}", flops, rate, "steps/s"))
        flops, rate = generation(args.images)
        rows.append((f"generation, 25 steps with guidance, batch {args.images}", flops, rate, "images/s"))
        floor = floors((1, 4), args.images)
        table = profile(work) if not args.no_profile else ""
    print(f"The limit: one thread's fp32 matmul rate on 1024 x 1024 matrices, {limit:.1f} GFLOP/s (torch "
          f"{torch.__version__}).\n")
    print("| what | GFLOP each | measured rate | achieved GFLOP/s | share of the matmul rate | the limit's rate | "
          "the kernels alone | measured ÷ kernels alone |")
    print("|---|---|---|---|---|---|---|---|")
    for (what, flops, rate, unit), kernels in zip(rows, (floor["train 1"], floor["train 4"], floor["generation"])):
        achieved = flops * rate / 1e9
        print(f"| {what} | {flops / 1e9:.3f} | {rate:.2f} {unit} | {achieved:.1f} | {achieved / limit:.1%} | "
              f"{limit * 1e9 / flops:.1f} {unit} | {kernels:.2f} {unit} | {rate / kernels:.0%} |")
    print("\n(The kernels alone: the UNet with the same LoRA adapters, forward and backward at the batch, no data "
          "and no optimizer; for generation, its 25 UNet calls at twice the batch and the VAE decode. A rate near "
          "100 % of it has no loop overhead left to remove: a faster tool needs faster kernels or fewer FLOPs.)\n")
    if table:
        print(table + "\n")


if __name__ == "__main__":
    main()
