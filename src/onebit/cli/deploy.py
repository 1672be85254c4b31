"""``onebit export`` and ``onebit bench-engine``: a trained run (or a zoo model) as a bit-packed
engine file, and the engine's speed against torch.

Each command takes the argument list after the command name and returns an exit status; errors in
what the user typed or pointed at are one line (``onebit: error: ...``) and exit status 2.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..kernels.bits import EngineError
from .common import Parser, UsageError, command, parse_input_size, zoo_model

__all__ = ["cmd_bench_engine", "cmd_export"]


def _zoo_model(name: str, input_size: str | None):
    """(zoo model with random weights in eval mode, input size (1, C, H, W)): the model's own
    size (its registry entry) unless ``input_size`` is given."""
    from ..models import list_models

    if name not in list_models():
        raise UsageError(f"{name!r} is neither a run folder nor a zoo model ({', '.join(list_models())})")
    dims = parse_input_size(input_size) if input_size is not None else None
    model, dims = zoo_model(name, dims)
    return model.eval(), (1,) + tuple(dims)


def _model_and_size(target: str, which: str, input_size: str | None):
    """(model in eval mode, input size (1, ...)) of a run folder (its data set's size unless
    ``input_size`` is given) or a zoo model name (its registered size unless given)."""
    if not os.path.isdir(target):
        return _zoo_model(target, input_size)
    from ..training.runs import restore_run

    run = restore_run(target, which)
    return run.model, (1,) + (parse_input_size(input_size, flat=True) if input_size else run.input_size)


@command
def cmd_export(argv: list[str]) -> int:
    """onebit export RUN_DIR FILE: write a run's trained model as a packed engine file."""
    p = Parser(
        prog="onebit export",
        description=(
            "Export a run's trained model to a bit-packed engine file (1 bit per binary weight) that "
            "onebit.engine.load runs with numpy (+ numba), without torch."
        ),
    )
    p.add_argument("run_dir", help="a run folder (runs/<recipe>/<timestamp>) or a zoo model name")
    p.add_argument("file", help="the file to write: model.obe (onebit's engine) or model.tflite (Larq Compute Engine)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint (default best)")
    p.add_argument("--input-size", help="C,H,W (default: the run's data set's, or a zoo model's own)")
    p.add_argument("--onnx", metavar="PATH", help="also write a standard ONNX graph to PATH")
    p.add_argument(
        "--onnx-dynamo",
        action="store_true",
        help="write the ONNX graph with torch's torch.export-based exporter (needs onnxscript)",
    )
    a = p.parse_args(argv)
    if a.onnx_dynamo and not a.onnx:
        raise UsageError("--onnx-dynamo: also give --onnx PATH, the ONNX file to write")
    from ..engine import export, export_lce, export_onnx

    model, size = _model_and_size(a.run_dir, a.which, a.input_size)
    if a.onnx:  # first: the ONNX graph takes layers the packed engine may refuse
        export_onnx(model, a.onnx, size, dynamo=a.onnx_dynamo)
        print(f"wrote {a.onnx} (ONNX, input {'x'.join(map(str, size))})")
    lce = a.file.lower().endswith(".tflite")  # the suffix chooses the format
    report = (export_lce if lce else export)(model, a.file, size)
    ratio = f"; {report['size_ratio']:.3f} x onebit.summary's model size" if "size_ratio" in report else ""
    print(
        f"wrote {a.file}{' (Larq Compute Engine)' if lce else ''}: {report['file_bytes']:,} bytes, {report['ops']} ops, binary kernels "
        f"{report['binary_weight_bits'] // 8:,} bytes{ratio}"
    )
    return 0


def _median(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _inputs(shape: tuple[int, ...], batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch,) + tuple(shape[1:])).astype(np.float32)


def engine_times(
    path: str, backend: str, threads: int, batches: list[int], repeats: int, save_to: str | None = None
) -> dict:
    """{batch: median seconds} of the packed runtime of ``path``; bench-engine runs this in a
    process of its own, where no torch thread pool competes with numba's. ``save_to``: a folder
    for each batch's output (``engine_{batch}.npy``), to compare with torch's."""
    from ..engine import load

    rt = load(path, backend=backend, num_threads=threads)
    times = {}
    for b in batches:
        x = _inputs(rt.input_shape, b)
        times[b] = _median(lambda x=x: rt(x), repeats)
        if save_to is not None:
            np.save(os.path.join(save_to, f"engine_{b}.npy"), rt(x))
    backend = rt.backend
    if backend == "numba":  # which pool ran: omp spins while it waits, workqueue does not
        import numba

        backend += f" backend ({numba.threading_layer()} threading layer)"
    else:
        backend += " backend"
    return {"backend": backend, "times": times}


def _engine_times_apart(
    path: str, backend: str, threads: int, batches: list[int], repeats: int, save_to: str | None = None
) -> dict:
    """``engine_times`` in a fresh Python process (numba's OpenMP threads and torch's spin-wait
    for work and slow each other down when both are timed in one process)."""
    import onebit

    root = os.path.dirname(os.path.dirname(os.path.abspath(onebit.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_WAIT_POLICY", "passive")  # see onebit.kernels.jit_kernels: set before torch loads OpenMP
    args = json.dumps([path, backend, threads, batches, repeats, save_to])
    code = "import json, sys; from onebit.cli.deploy import engine_times; print(json.dumps(engine_times(*json.loads(sys.argv[1]))))"
    res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise EngineError(f"the engine's timing process failed: {last}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["times"] = {int(b): t for b, t in out["times"].items()}
    return out


def torch_times(
    model, shape: tuple[int, ...], threads: int, batches: list[int], repeats: int, outputs: dict | None = None
) -> dict:
    """{batch: median seconds} of the torch model (fp32, no_grad, popcount forward off) with
    ``threads`` torch threads; ``outputs`` (a dict) receives each batch's output as numpy."""
    import torch

    from .. import settings

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = {}
    try:
        with torch.no_grad(), settings.override(popcount_forward="off"):
            for b in batches:
                x = torch.from_numpy(_inputs(shape, b))
                times[b] = _median(lambda x=x: model(x), repeats)
                if outputs is not None:
                    outputs[b] = model(x).numpy()
    finally:
        torch.set_num_threads(before)
    return times


def _cpu() -> str:
    """The CPU model and the vector flags that matter for popcount, as one line."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vpopcntdq", "avx512_bf16")
    return f"{model}; {' '.join(f for f in wanted if f in flags) or 'no avx2/avx512 flags'}"


def _ratio(torch_s: float, engine_s: float) -> str:
    r = torch_s / engine_s
    return f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"


def output_agreement(engine_out: np.ndarray, torch_out: np.ndarray) -> str:
    """How the engine's output compares with torch's on the same input: the images (rows) with
    the same argmax, and the largest difference relative to the largest torch output."""
    e, t = engine_out.reshape(len(engine_out), -1), torch_out.reshape(len(torch_out), -1)
    same = int((e.argmax(1) == t.argmax(1)).sum())
    return f"{same}/{len(t)}, {float(np.abs(e - t).max() / max(np.abs(t).max(), 1e-30)):.1e}"


def _print_table(engine: dict, torch_s: dict | None, batches: list[int], agree: dict) -> None:
    """One markdown row per batch size: engine ms, torch fp32 ms, which is faster and by how much,
    and whether both computed the same (``agree``: batch -> ``output_agreement``)."""
    print("| batch | engine ms | torch fp32 ms | engine vs torch | same argmax, max diff / max output |")
    print("|---|---|---|---|---|")
    for b in batches:
        te = engine["times"][b]
        if torch_s is None:
            print(f"| {b} | {te * 1e3:.3f} | - | - | - |")
        else:
            print(f"| {b} | {te * 1e3:.3f} | {torch_s[b] * 1e3:.3f} | {_ratio(torch_s[b], te)} | {agree[b]} |")


@command
def cmd_bench_engine(argv: list[str]) -> int:
    """onebit bench-engine FILE|MODEL|RUN_DIR: time the packed runtime (and torch for a model)."""
    p = Parser(
        prog="onebit bench-engine",
        description=(
            "Median time of the packed runtime on random inputs; for a zoo model name or a run folder "
            "also of the torch model (fp32, popcount forward off). Each side runs with its own "
            "threads: torch in this process, the engine in a fresh one, so neither's thread pool "
            "slows the other. Per-layer figures: benchmarks/engine.py."
        ),
    )
    p.add_argument("target", help="an engine file, a zoo model name or a run folder")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 50], help="batch sizes (default 1 50)")
    p.add_argument("--threads", type=int, default=2, help="threads for numba and for torch (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure (default 10)")
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "numpy"])
    p.add_argument("--input-size", help="C,H,W for a zoo model name (default: the model's own)")
    a = p.parse_args(argv)
    for option, values in (("--batch", a.batch), ("--threads", [a.threads]), ("--repeats", [a.repeats])):
        if min(values) < 1:
            raise UsageError(f"{option} {min(values)}: must be >= 1")
    from ..engine import export, load

    torch_s, torch_out = None, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = a.target
        if not os.path.isfile(a.target):
            model, size = _model_and_size(a.target, "best", a.input_size)
            path = os.path.join(tmp, "model.obe")
            export(model, path, size)
            torch_s = torch_times(model, size, a.threads, a.batch, a.repeats, torch_out)
        shape = load(path, backend=a.backend).input_shape  # a damaged file: one line, here
        engine = _engine_times_apart(path, a.backend, a.threads, a.batch, a.repeats, tmp if torch_s else None)
        agree = {b: output_agreement(np.load(os.path.join(tmp, f"engine_{b}.npy")), torch_out[b]) for b in torch_out}
    print(
        f"# {a.target}: input {'x'.join(map(str, shape[1:]))}; median of {a.repeats} timed runs after "
        f"1 warm-up; engine: {engine['backend']}, {a.threads} threads, in a process of its own"
        + (f"; torch {_torch_version()} fp32: {a.threads} threads, popcount forward off" if torch_s else "")
    )
    print(f"# CPU: {_cpu()}; load average {os.getloadavg()[0]:.2f}")
    _print_table(engine, torch_s, a.batch, agree)
    return 0


def _torch_version() -> str:
    import torch

    return torch.__version__
