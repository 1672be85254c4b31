"""onebit's training step against plain fp32 PyTorch, in the same run (issue 7).

Baseline: the same architecture built from nn.Conv2d / nn.Linear with a textbook sign STE
(an autograd.Function that saves its float input), torch Adam on latent weights, NCHW.
onebit: the zoo model with its defaults for Bop recipes (channels_last, NoOp-tagged +/-1 kernels,
mask-saving STE, Bop with its default fused path for large models, the popcount forward of binary
layers when numba imports) + Adam on the rest; then the same with ``onebit.xnor`` switched off;
then onebit's defaults under bf16 autocast (``precision=bf16``: meaningful only on CPUs with native
bf16, ``avx512_bf16`` / ``amx_bf16``; elsewhere torch emulates it and the column only shows that).
Each step is forward + backward + optimizer step, the three configurations taking turns step by
step; times are medians, ratios the median of the per-round ratios to the plain step, 2 threads;
and the memory one forward saves for backward (activations and masks, MiB), the step's peak driver.

    python benchmarks/fast_training.py [--steps 10] [--models binarynet small_cnn birealnet18]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import onebit as ob
from onebit.training.step import cpu_bf16_flags

SHAPES = {"binarynet": (50, 3, 32, 32), "small_cnn": (32, 1, 28, 28), "birealnet18": (32, 3, 224, 224)}
KWARGS = {"binarynet": {}, "small_cnn": {}, "birealnet18": {"num_classes": 1000}}


class PlainSign(torch.autograd.Function):
    """sign with the clipped STE as usually written: saves the float input."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class PlainQuant(nn.Module):
    """A plain torch conv/linear with sign applied to its input and weight in forward."""

    def __init__(self, layer: nn.Module, quantize_input: bool):
        super().__init__()
        self.layer, self.quantize_input = layer, quantize_input

    def forward(self, x):
        if self.quantize_input:
            x = PlainSign.apply(x)
        w = PlainSign.apply(self.layer.weight)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        pads = self.layer.padding_for(tuple(x.shape[2:])) if isinstance(self.layer, ob.QuantLayer) else None
        if pads and any(a or b for a, b in pads):
            x = F.pad(x, [v for ab in reversed(pads) for v in ab], value=self.layer.pad_values)
        return F.conv2d(x, w, self.layer.bias, self.layer.stride, 0, self.layer.dilation, self.layer.groups)


def plain_copy(model: nn.Module) -> nn.Module:
    """Replace every onebit binary layer by a plain torch layer + textbook STE (same weights)."""
    for name, child in list(model.named_children()):
        if isinstance(child, ob.QuantLayer) and child.kernel_precision == 1:
            setattr(model, name, PlainQuant(child, child.input_quantizer is not None))
        else:
            plain_copy(child)
    return model


def saved_activation_mib(model, x) -> float:
    """Bytes that one forward saves for backward (activations, masks): the step's memory driver."""
    total = 0

    def pack(t):
        nonlocal total
        if not isinstance(t, nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total / 2**20


def one_step(model, optimizer, x, y) -> float:
    """Seconds of one forward + backward + optimizer step."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    return time.perf_counter() - start


def interleaved_steps(runs, steps: int, warmup: int = 2) -> list[list[float]]:
    """Step times (ms) of every ``(model, optimizer, x, y, xnor mode, bf16)`` in ``runs``, taken in
    turn (a round is one step of each), so all of them see the same machine load."""
    times = [[] for _ in runs]
    for i in range(warmup + steps):
        for k, (model, opt, x, y, mode, bf16) in enumerate(runs):
            cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ob.xnor.use(mode), cast:
                t = one_step(model, opt, x, y)
            if i >= warmup:
                times[k].append(t * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed rounds per model (Bi-Real: half)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(SHAPES))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"train step, {args.threads} threads, medians of {args.steps} interleaved rounds; torch {torch.__version__}")
    print(f"xnor forward: {ob.xnor.get_mode() if ob.xnor.available() else 'off (numba missing)'}")
    print(f"native bf16 flags: {', '.join(cpu_bf16_flags()) or 'none (bf16 is emulated)'}")
    print(
        f"{'model':12s} {'batch':>5s} {'plain fp32 ms':>14s} {'onebit ms':>10s} {'ratio':>6s} "
        f"{'xnor off ms':>11s} {'ratio':>6s} {'bf16 ms':>8s} {'ratio':>6s} "
        f"{'plain saved MiB':>15s} {'onebit saved MiB':>16s}"
    )
    for name in args.models:
        shape = SHAPES[name]
        torch.manual_seed(0)
        x = torch.rand(shape) * 2 - 1
        y = torch.randint(0, KWARGS[name].get("num_classes", 10), (shape[0],))
        plain = plain_copy(ob.create_model(name, **KWARGS[name]))
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
        steps = max(args.steps // 2, 3) if name == "birealnet18" else args.steps
        model = ob.create_model(name, kernel_quantizer="noop", kernel_constraint=None, **KWARGS[name])
        model = model.to(memory_format=torch.channels_last)
        opt = ob.optim.CaseOptimizer(
            ob.optim.Bop(ob.binary_parameters(model), gamma=1e-4, threshold=1e-8),
            torch.optim.Adam(ob.real_parameters(model), lr=1e-2),
        )
        x_cl = x.contiguous(memory_format=torch.channels_last)
        mode = ob.xnor.get_mode()
        # plain fp32, onebit's defaults, the popcount forward off, bf16: one step each per round
        plain_t, ours_t, off_t, bf16_t = interleaved_steps(
            [
                (plain, plain_opt, x, y, "off", False),
                (model, opt, x_cl, y, mode, False),
                (model, opt, x_cl, y, "off", False),
                (model, opt, x_cl, y, mode, True),
            ],
            steps,
        )
        plain_ms, ours_ms, off_ms, bf16_ms = (statistics.median(t) for t in (plain_t, ours_t, off_t, bf16_t))
        ratio, ratio_off, ratio_bf16 = (
            statistics.median(o / p for o, p in zip(t, plain_t)) for t in (ours_t, off_t, bf16_t)
        )
        plain_mem, ours_mem = saved_activation_mib(plain, x), saved_activation_mib(model, x_cl)
        print(
            f"{name:12s} {shape[0]:5d} {plain_ms:14.1f} {ours_ms:10.1f} {ratio:6.2f} "
            f"{off_ms:11.1f} {ratio_off:6.2f} {bf16_ms:8.1f} {ratio_bf16:6.2f} {plain_mem:15.1f} {ours_mem:16.1f}"
        )
        del plain, plain_opt, model, opt


if __name__ == "__main__":
    main()
