"""``onebit export`` and ``onebit bench-engine``: a trained run (or a zoo model) as a bit-packed
engine file, and the engine's speed against torch.

Each command takes the argument list after the command name and returns an exit status; errors in
what the user typed or pointed at are one line (``onebit: error: ...``) and exit status 2.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from .common import Parser, UsageError, command, parse_input_size, zoo_model

__all__ = ["cmd_bench_engine", "cmd_export"]


def _zoo_model(name: str, input_size: str | None):
    """(zoo model with random weights in eval mode, input size (1, C, H, W) or (1, F))."""
    from ..models import list_models

    if name not in list_models():
        raise UsageError(f"{name!r} is neither a run folder nor a zoo model ({', '.join(list_models())})")
    if input_size is None:
        raise UsageError("a zoo model name needs --input-size C,H,W")
    dims = parse_input_size(input_size, flat=True)
    model, _ = zoo_model(name, dims if len(dims) == 3 else None)
    return model.eval(), (1,) + dims


def _model_and_size(target: str, which: str, input_size: str | None):
    """(model in eval mode, input size (1, ...)) of a run folder (its data set's size unless
    ``input_size`` is given) or a zoo model name (``input_size`` needed)."""
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
    p.add_argument("--input-size", help="C,H,W; needed for a zoo model name (random weights)")
    p.add_argument("--onnx", metavar="PATH", help="also write a standard ONNX graph to PATH")
    a = p.parse_args(argv)
    from ..engine import export, export_lce

    model, size = _model_and_size(a.run_dir, a.which, a.input_size)
    lce = a.file.lower().endswith(".tflite")  # the suffix chooses the format
    report = (export_lce if lce else export)(model, a.file, size)
    ratio = f"; {report['size_ratio']:.3f} x onebit.summary's model size" if "size_ratio" in report else ""
    print(
        f"wrote {a.file}{' (Larq Compute Engine)' if lce else ''}: {report['file_bytes']:,} bytes, {report['ops']} ops, binary kernels "
        f"{report['binary_weight_bits'] // 8:,} bytes{ratio}"
    )
    if a.onnx:
        from ..engine import export_onnx

        export_onnx(model, a.onnx, size)
        print(f"wrote {a.onnx} (ONNX)")
    return 0


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _bench_table(rt, model, batches: list[int], repeats: int) -> None:
    """One markdown row per batch size: engine ms, torch fp32 ms (with a model), speed-up."""
    import torch

    print("| batch | engine ms | torch fp32 ms | speed-up |")
    print("|---|---|---|---|")
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b,) + rt.input_shape[1:]).astype(np.float32)
        te = _median(lambda: rt(x), repeats)
        if model is None:
            print(f"| {b} | {te * 1e3:.2f} | - | - |")
            continue
        xt = torch.from_numpy(x)

        def torch_call():
            with torch.no_grad():
                model(xt)

        tt = _median(torch_call, repeats)
        print(f"| {b} | {te * 1e3:.2f} | {tt * 1e3:.2f} | {tt / te:.1f} |")


@command
def cmd_bench_engine(argv: list[str]) -> int:
    """onebit bench-engine FILE|MODEL|RUN_DIR: time the packed runtime (and torch for a model)."""
    p = Parser(
        prog="onebit bench-engine",
        description=(
            "Median time of the packed runtime on random inputs; for a zoo model name or a run folder "
            "also of the torch model (fp32) in the same run. Per-layer figures: benchmarks/engine.py."
        ),
    )
    p.add_argument("target", help="an engine file, a zoo model name or a run folder")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 50], help="batch sizes (default 1 50)")
    p.add_argument("--threads", type=int, default=2, help="threads for numba and torch (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure (default 10)")
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "numpy"])
    p.add_argument("--input-size", help="C,H,W for a zoo model name (default 3,32,32)")
    a = p.parse_args(argv)
    for option, values in (("--batch", a.batch), ("--threads", [a.threads]), ("--repeats", [a.repeats])):
        if min(values) < 1:
            raise UsageError(f"{option} {min(values)}: must be >= 1")
    from ..engine import export, load

    model = None
    with tempfile.TemporaryDirectory() as tmp:
        path = a.target
        if not os.path.isfile(a.target):
            import torch

            torch.set_num_threads(a.threads)
            if os.path.isdir(a.target):
                model, size = _model_and_size(a.target, "best", None)  # the run's own input size
            else:
                model, size = _zoo_model(a.target, a.input_size or "3,32,32")
            path = os.path.join(tmp, "model.obe")
            export(model, path, size)
        rt = load(path, backend=a.backend, num_threads=a.threads)
        print(f"# {a.target}: backend {rt.backend}, {a.threads} threads, median of {a.repeats}")
        _bench_table(rt, model, a.batch, a.repeats)
    return 0
