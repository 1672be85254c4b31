"""Time one Bop step on BinaryNet's 10.35 M binary weights against torch's Adam and a memory floor.

The floor is a stream c = a + b over the same tensors (3 passes of 4 bytes per weight), scaled to
Bop's 5 passes (read w, g, m; write w, m). Everything is timed in the same run, 2 threads, and the
median of repeated steps is reported.

    python benchmarks/bop_step.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from onebit import binary_parameters, create_model
from onebit.optim import Bop


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    shapes = [p.shape for p in binary_parameters(create_model("binarynet"))]
    n = sum(s.numel() for s in shapes)

    def fresh():
        params = [torch.nn.Parameter(torch.randn(s).sign()) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape) * 1e-3
        return params

    a = [torch.randn(s) for s in shapes]
    b = [torch.randn(s) for s in shapes]
    c = [torch.empty(s) for s in shapes]

    def stream():
        for x, y, z in zip(a, b, c):
            torch.add(x, y, out=z)

    rows = [("stream c = a + b (3 passes)", median_ms(stream, args.repeats))]
    floor = rows[0][1] * 5 / 3
    rows.append(("floor: Bop's 5 passes", floor))
    for label, kwargs in [
        ("Bop single-tensor (eager)", dict(foreach=False, fused=False)),
        ("Bop foreach (eager)", dict(foreach=True, fused=False)),
        ("Bop fused (default here)", dict()),
    ]:
        params = fresh()
        opt = Bop(params, gamma=1e-4, threshold=1e-8, **kwargs)
        rows.append((label, median_ms(opt.step, args.repeats)))
    params = fresh()
    adam = torch.optim.Adam(params, lr=1e-3, foreach=True)
    rows.append(("torch Adam foreach", median_ms(adam.step, args.repeats)))

    print(f"Bop step on {n:,} weights ({len(shapes)} tensors), {args.threads} threads, median of {args.repeats}")
    print(f"{'':32s} {'ms':>8s} {'x floor':>8s}")
    for label, ms in rows:
        print(f"{label:32s} {ms:8.2f} {ms / floor:8.2f}")


if __name__ == "__main__":
    main()
