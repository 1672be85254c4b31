"""Training-step benchmark: BinaryNet (CIFAR-10 shape), batch 50, random data; forward + backward
+ optimizer step, median milliseconds over repeated steps with 2 threads.

Two optimizers on the same model and step function (onebit.training.step.make_train_step):
  bop     CaseOptimizer(Bop(binary kernels, gamma 1e-4, threshold 1e-8), Adam(batch-norm betas))
  latent  torch Adam on latent weights (ste_sign kernels + weight_clip), the usual baseline.
Reference on the 2-core development machine: Larq/TensorFlow about 0.9 s per such step.

    python benchmarks/train_step.py [--steps 20] [--warmup 3] [--threads 2] [--batch 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from onebit.recipes import load_recipe
from onebit.training.build import build_model, build_optimizer
from onebit.training.config import apply_overrides
from onebit.training.step import make_train_step, to_device


def bench(recipe: str, batch: int, steps: int, warmup: int, channels_last: bool) -> list[float]:
    config = apply_overrides(load_recipe(recipe).config, [f"batch_size={batch}"])
    torch.manual_seed(0)
    model = build_model(config, 10, (3, 32, 32))
    if channels_last:  # as the training loop does by default (channels_last=true)
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = build_optimizer(config, model)
    step = make_train_step(model, optimizer)
    x = to_device(torch.rand(batch, 3, 32, 32) * 2 - 1, "cpu", channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss, _ = step(x, y)
        loss.item()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of channels_last")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, recipe in (("bop", "cifar10-binarynet-bop"), ("latent", "cifar10-binarynet-latent")):
        times = bench(recipe, args.batch, args.steps, args.warmup, not args.nchw)
        results[name] = {
            "median_ms": round(statistics.median(times), 1),
            "min_ms": round(min(times), 1),
            "max_ms": round(max(times), 1),
        }
    if args.json:
        print(
            json.dumps(
                {
                    "threads": args.threads,
                    "batch": args.batch,
                    "channels_last": not args.nchw,
                    "torch": torch.__version__,
                    **results,
                }
            )
        )
        return
    layout = "NCHW" if args.nchw else "channels_last"
    print(
        f"BinaryNet train step, batch {args.batch}, {args.threads} threads, {layout}, torch {torch.__version__}, {platform.machine()}"
    )
    for name, r in results.items():
        label = {"bop": "onebit Bop + Adam", "latent": "torch Adam, latent weights"}[name]
        print(
            f"  {label:<28} median {r['median_ms']:8.1f} ms   (min {r['min_ms']:.1f}, max {r['max_ms']:.1f}, {args.steps} steps)"
        )
    print("  reference: Larq/TensorFlow ~900 ms per step on the same 2-core machine")


if __name__ == "__main__":
    main()
