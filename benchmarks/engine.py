"""Packed engine vs torch fp32: per binary layer (BinaryNet), or end to end in separate processes.

    NUMBA_THREADING_LAYER=workqueue .venv/bin/python benchmarks/engine.py [--threads 2]
        [--batches 1 50] [--repeats 15] [--model binarynet] [--backend numba]
    .venv/bin/python benchmarks/engine.py --end-to-end binarynet birealnet18 quicknet \
        [--threads 1] [--batches 1 50] [--repeats 7] [--rounds 3] [--avx2]

``--end-to-end``: numba's thread pool and torch's compete when both run in one process, so each
side runs in a process of its own with its thread count fixed (numba's ``num_threads`` and
NUMBA_NUM_THREADS, ``torch.set_num_threads``, OMP/OpenBLAS threads), engine and torch processes
alternating ``--rounds`` times; each reports the median wall and CPU time of ``--repeats`` calls
after two warm-up calls, and the table shows the medians over rounds. Both load the same weights
(random, random batch-norm statistics). CPU time is the figure to trust on a shared machine: with
one thread it is the time the inference held a core. The last column compares the two sides'
outputs on the same input (argmax and largest difference). ``--avx2`` runs both sides as an
AVX2-only CPU would (numba's target Haswell without AVX-512, so no ``vpopcntq``; torch's ATen and
oneDNN and OpenBLAS capped at AVX2), to measure that code path on an AVX-512 machine.

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
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import onebit
from onebit.cli.deploy import output_agreement
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


_SIDES = {"binarynet": 32, "birealnet18": 224, "quicknet": 224, "small_cnn": 28}


def _child(side, model_name, folder, batch, threads, repeats):
    """One side timed in this process: prints 'wall_ms cpu_ms' (medians)."""
    size = _SIDES[model_name]
    in_ch = 1 if model_name == "small_cnn" else 3
    x = np.random.default_rng(0).standard_normal((batch, in_ch, size, size)).astype(np.float32)
    if side == "engine":
        rt = load(os.path.join(folder, "model.obe"), num_threads=threads)
        call = lambda: rt(x)  # noqa: E731
    else:
        torch.set_num_threads(threads)
        onebit.xnor.set_mode("off")  # torch's own fp32 ops, not onebit's popcount forward
        model = onebit.create_model(model_name)
        model.load_state_dict(torch.load(os.path.join(folder, "model.pt"), weights_only=True))
        model.eval()
        xt = torch.from_numpy(x)
        call = lambda: _no_grad(model, xt)  # noqa: E731
    out = call()
    call()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    np.save(os.path.join(folder, f"out_{side}_{batch}.npy"), np.asarray(out))
    print(f"{statistics.median(wall) * 1e3:.3f} {statistics.median(cpu) * 1e3:.3f}")


# what an AVX2-only CPU runs: numba compiles for Haswell without AVX-512 (so the vector popcount
# is the vpshufb nibble-table sequence, not vpopcntq), torch's ATen and oneDNN and OpenBLAS stop
# at AVX2; a cache of its own keeps these kernels apart from the host's
_AVX2_ENV = {
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "+avx,+avx2,+bmi,+bmi2,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sse4.2,"
    + ",".join(
        f"-avx512{f}"
        for f in ("f", "vpopcntdq", "bw", "vl", "dq", "cd", "bitalg", "vbmi", "vbmi2", "vnni", "bf16", "ifma")
    ),
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "NUMBA_CACHE_DIR": os.path.join(tempfile.gettempdir(), "onebit-numba-avx2"),
}
_ENV = {}  # extra environment of the timed processes (--avx2)


def _run_child(side, model_name, folder, batch, threads, repeats):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), **_ENV)
    env.setdefault("OMP_WAIT_POLICY", "passive")  # torch loads OpenMP first; numba's kernels share it
    env.update(OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", side, "--model", model_name, "--folder", folder]
    cmd += ["--batches", str(batch), "--threads", str(threads), "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    wall, cpu = (float(v) for v in out.strip().splitlines()[-1].split())
    return wall, cpu


def end_to_end(models, batches, threads, repeats, rounds):
    """Rows (model, batch, engine wall, torch wall, engine cpu, torch cpu in ms, medians over rounds;
    agreement of the two sides' outputs)."""
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = _randomize_bn(onebit.create_model(name))
        size = _SIDES[name]
        with tempfile.TemporaryDirectory() as folder:
            onebit.engine.export(
                model, os.path.join(folder, "model.obe"), (1, 1 if name == "small_cnn" else 3, size, size)
            )
            torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
            for batch in batches:
                runs = {"engine": [], "torch": []}
                for _ in range(rounds):
                    for side in runs:
                        runs[side].append(_run_child(side, name, folder, batch, threads, repeats))
                med = {side: [statistics.median(r[i] for r in v) for i in (0, 1)] for side, v in runs.items()}
                agree = output_agreement(*(np.load(os.path.join(folder, f"out_{s}_{batch}.npy")) for s in runs))
                rows.append((name, batch, med["engine"][0], med["torch"][0], med["engine"][1], med["torch"][1], agree))
    return rows


def _cpu_line():
    flags = set()
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vpopcntdq", "avx512_bf16")
    return f"{model}, {os.cpu_count()} cores; " + " ".join(f"{w}={'yes' if w in flags else 'no'}" for w in wanted)


def _print_end_to_end(rows, threads, repeats, rounds):
    print(f"# {_cpu_line()}")
    print(
        f"# engine and torch {torch.__version__} fp32 each in its own process, {threads} thread(s) each, "
        f"medians of {repeats} calls, median over {rounds} alternating rounds; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        "| model | batch | engine ms (CPU) | torch ms (CPU) | speed-up (CPU) | engine ms (wall) | torch ms (wall) "
        "| speed-up (wall) | same argmax, max diff / max logit |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, b, ew, tw, ec, tc, agree in rows:
        print(f"| {name} | {b} | {ec:.2f} | {tc:.2f} | {tc / ec:.1f} | {ew:.2f} | {tw:.2f} | {tw / ew:.1f} | {agree} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--end-to-end", nargs="+", metavar="MODEL", choices=sorted(_SIDES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--avx2", action="store_true", help="--end-to-end as on an AVX2-only CPU (no AVX-512), on an AVX-512 machine"
    )
    p.add_argument("--child", choices=["engine", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--model", default="binarynet", choices=sorted(_SIDES))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 50])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--backend", default="numba", choices=["numba", "numpy"])
    a = p.parse_args(argv)
    if a.child:
        _child(a.child, a.model, a.folder, a.batches[0], a.threads, a.repeats)
        return 0
    if a.end_to_end:
        if a.avx2:
            _ENV.update(_AVX2_ENV)
            print("# --avx2: both sides compiled / dispatched for AVX2 only (numba target haswell, no AVX-512)")
        _print_end_to_end(
            end_to_end(a.end_to_end, a.batches, a.threads, a.repeats, a.rounds), a.threads, a.repeats, a.rounds
        )
        return 0
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
