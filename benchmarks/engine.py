"""Packed engine vs torch fp32 on BinaryNet: per binary layer and end to end, batch 1 and 50.

    NUMBA_THREADING_LAYER=workqueue .venv/bin/python benchmarks/engine.py [--threads 2]
        [--batches 1 50] [--repeats 15] [--model binarynet] [--backend numba]

Each figure is the median of ``--repeats`` runs; the engine and torch calls alternate inside every
repetition, so both see the same machine load. Per layer, the engine op (XOR/popcount dots, batch
norm folded into thresholds, packed output; for the last layer float output) is timed against the
same onebit layer's torch forward (its input sign, kernel sign and float conv) and against the bare
F.conv2d / F.linear on pre-binarized +/-1 tensors (the most favourable torch figure). End to end is
``runtime(x)`` against ``model.eval()(x)`` under ``torch.no_grad()``. The engine's outputs are
checked against torch first (exact argmax).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import onebit
from onebit.engine import load
from onebit.layers import QuantConv2d, QuantLayer


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 4 - 2)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _median_pair(fa, fb, repeats):
    """Medians (seconds) of fa and fb, called alternately after one warm-up call each."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def _torch_layer_inputs(model, x):
    """Input tensor of every binary-input onebit layer, by module name."""
    inputs, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, QuantLayer) and m.input_quantizer is not None:
            hooks.append(m.register_forward_hook(lambda mod, args, out, name=name: inputs.__setitem__(name, args[0])))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return inputs


def bench(model_name, batches, threads, repeats, backend):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    onebit.xnor.set_mode("off")  # the reference is torch's fp32 op, not onebit's popcount forward
    model = _randomize_bn(onebit.create_model(model_name))
    modules = dict(model.named_modules())
    in_ch = 3 if model_name == "binarynet" else 1
    hw = 32 if model_name == "binarynet" else 28
    rows, e2e = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.obe")
        report = onebit.engine.export(model, path, (1, in_ch, hw, hw))
        rt = load(path, backend=backend, num_threads=threads)
        for batch in batches:
            x = torch.randn(batch, in_ch, hw, hw)
            with torch.no_grad():
                ref = model(x)
            out = rt(x.numpy())
            assert np.array_equal(out.argmax(1), ref.numpy().argmax(1)), "engine argmax differs"
            args = rt.op_inputs(x.numpy())
            t_inputs = _torch_layer_inputs(model, x)
            for i, op in enumerate(rt.ops):
                if op["op"] not in ("bconv2d", "bdense"):
                    continue
                layer = modules[op["name"]]
                xt = t_inputs[op["name"]]
                te, tl = _median_pair(lambda: rt.run_op(i, args[i]), lambda: _no_grad(layer, xt), repeats)
                xs = torch.where(xt >= 0, 1.0, -1.0)
                ws = torch.where(layer.weight >= 0, 1.0, -1.0).detach()
                if isinstance(layer, QuantConv2d):
                    pads = layer.padding_for(tuple(xt.shape[2:]))
                    flat = [v for p in reversed(pads) for v in p]
                    xs = F.pad(xs, flat, value=layer.pad_values)
                    bare = lambda: F.conv2d(xs, ws, None, layer.stride)  # noqa: E731
                else:
                    bare = lambda: F.linear(xs, ws)  # noqa: E731
                te2, tc = _median_pair(lambda: rt.run_op(i, args[i]), lambda: _no_grad_fn(bare), repeats)
                rows.append((batch, op["name"], op["op"], _shape(op), min(te, te2), tl, tc))
            te, tt = _median_pair(lambda: rt(x.numpy()), lambda: _no_grad(model, x), repeats)
            e2e.append((batch, te, tt))
    return report, rows, e2e


def _no_grad(module, x):
    with torch.no_grad():
        return module(x)


def _no_grad_fn(fn):
    with torch.no_grad():
        return fn()


def _shape(op):
    if op["op"] == "bconv2d":
        return f"{op['in_channels']}->{op['out_channels']} {op['kernel'][0]}x{op['kernel'][1]}"
    return f"{op['in_features']}->{op['out_features']}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="binarynet", choices=["binarynet", "small_cnn"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 50])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--backend", default="numba", choices=["numba", "numpy"])
    a = p.parse_args(argv)
    report, rows, e2e = bench(a.model, a.batches, a.threads, a.repeats, a.backend)
    import numba

    print(
        f"# {a.model}: onebit engine ({a.backend}, numba threading layer "
        f"{os.environ.get('NUMBA_THREADING_LAYER', 'default')}) vs torch {torch.__version__} fp32, "
        f"{a.threads} threads, median of {a.repeats}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# file {report['file_bytes']:,} B; binary kernels {report['binary_weight_bits'] // 8:,} B "
        f"(fp32: {report['binary_weight_bits'] * 4:,} B, 32x); "
        f"file / onebit.summary size = {report.get('size_ratio', float('nan')):.3f}"
    )
    print("| batch | layer | op | shape | engine ms | torch layer ms | torch conv ms | x vs layer | x vs conv |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b, name, kind, shape, te, tl, tc in rows:
        print(
            f"| {b} | {name} | {kind} | {shape} | {te * 1e3:.3f} | {tl * 1e3:.3f} | "
            f"{tc * 1e3:.3f} | {tl / te:.1f} | {tc / te:.1f} |"
        )
    for b in sorted({r[0] for r in rows}):
        sel = [r for r in rows if r[0] == b]
        te, tl, tc = (sum(r[i] for r in sel) for i in (4, 5, 6))
        print(
            f"| {b} | all binary layers | | | {te * 1e3:.3f} | {tl * 1e3:.3f} | {tc * 1e3:.3f} | "
            f"{tl / te:.1f} | {tc / te:.1f} |"
        )
    print("\n| batch | engine end-to-end ms | torch end-to-end ms | speed-up |")
    print("|---|---|---|---|")
    for b, te, tt in e2e:
        print(f"| {b} | {te * 1e3:.2f} | {tt * 1e3:.2f} | {tt / te:.1f} |")
    del numba
    return 0


if __name__ == "__main__":
    sys.exit(main())
