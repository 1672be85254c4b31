"""``onebit export`` and ``onebit bench-engine``: command functions for ``onebit.cli``.

Each takes the argument list after the command name and returns an exit status, printing
``onebit: error: ...`` for user errors, like the other commands of ``onebit.cli``. Wire them with
``COMMANDS.update({"export": cmd_export, "bench-engine": cmd_bench_engine})``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from ..engine import EngineError


def _fail(message: str) -> int:
    sys.stderr.write(f"onebit: error: {message}\n")
    return 2


def model_from_run(run_dir, which: str = "best"):
    """(model in eval mode with the run's ``best.pt``/``last.pt`` weights, input size (1, C, H, W)).

    Rebuilds the model from the run folder's ``config.toml`` (``onebit.training``) and reads the
    data set once for its class count and image shape, as ``onebit eval`` does.
    """
    from pathlib import Path

    from ..data import load_dataset
    from ..training import checkpoint
    from ..training.build import build_model
    from ..training.experiments import read_run_config

    run_dir = Path(run_dir)
    _, config = read_run_config(run_dir)
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        path = run_dir / "last.pt"
    if not path.is_file():
        raise EngineError(f"no checkpoint in {run_dir}: expected {which}.pt or last.pt")
    train_set, _ = load_dataset(config["dataset"], config["data_dir"], config["image_size"])
    model = build_model(config, len(train_set.classes), train_set.shape)
    model.load_state_dict(checkpoint.load(path)["model"])
    return model.eval(), (1,) + tuple(train_set.shape)


def _parse_size(text):
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) not in (1, 3) or min(dims) < 1:
        raise EngineError(f"--input-size {text!r} must be C,H,W (e.g. 3,32,32) or F, positive ints")
    return (1,) + dims


def cmd_export(argv: list[str]) -> int:
    """onebit export RUN_DIR FILE: write a run's trained model as a packed engine file."""
    p = argparse.ArgumentParser(prog="onebit export", description=(
        "Export a run's trained model to a bit-packed engine file (1 bit per binary weight) that "
        "onebit.engine.load runs with numpy (+ numba), without torch."))
    p.add_argument("run_dir", help="a run folder (runs/<recipe>/<timestamp>) or a zoo model name")
    p.add_argument("file", help="the engine file to write (e.g. model.obe)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint (default best)")
    p.add_argument("--input-size", help="C,H,W; needed for a zoo model name (random weights)")
    p.add_argument("--onnx", metavar="PATH", help="also write a standard ONNX graph to PATH")
    a = p.parse_args(argv)
    try:
        from ..engine import export

        if os.path.isdir(a.run_dir):
            model, size = model_from_run(a.run_dir, a.which)
            if a.input_size:
                size = _parse_size(a.input_size)
        else:
            from ..models import create_model, list_models

            if a.run_dir not in list_models():
                raise EngineError(f"{a.run_dir!r} is neither a run folder nor a zoo model "
                                  f"({', '.join(list_models())})")
            if not a.input_size:
                raise EngineError("a zoo model name needs --input-size C,H,W")
            size = _parse_size(a.input_size)
            kw = {"in_channels": size[1], "image_size": size[2]} if len(size) == 4 else {}
            try:
                model = create_model(a.run_dir, **kw).eval()
            except TypeError:
                model = create_model(a.run_dir).eval()
        report = export(model, a.file, size)
        print(f"wrote {a.file}: {report['file_bytes']:,} bytes, {report['ops']} ops, binary kernels "
              f"{report['binary_weight_bits'] // 8:,} bytes"
              + (f"; {report['size_ratio']:.3f} x onebit.summary's model size"
                 if "size_ratio" in report else ""))
        if a.onnx:
            from ..engine import export_onnx

            export_onnx(model, a.onnx, size)
            print(f"wrote {a.onnx} (ONNX)")
    except (EngineError, FileNotFoundError) as e:
        return _fail(str(e))
    except Exception as e:  # config/data errors of onebit.training carry their own message
        if type(e).__name__ in ("ConfigError", "DataError"):
            return _fail(str(e))
        raise
    return 0


def _median(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cmd_bench_engine(argv: list[str]) -> int:
    """onebit bench-engine FILE|MODEL: time the packed runtime (and torch for a model)."""
    p = argparse.ArgumentParser(prog="onebit bench-engine", description=(
        "Median time of the packed runtime on random inputs; for a zoo model name or a run folder "
        "also of the torch model (fp32) in the same run. Per-layer figures: benchmarks/engine.py."))
    p.add_argument("target", help="an engine file, a zoo model name or a run folder")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 50], help="batch sizes (default 1 50)")
    p.add_argument("--threads", type=int, default=2, help="threads for numba and torch (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure (default 10)")
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "numpy"])
    p.add_argument("--input-size", help="C,H,W for a zoo model name (default 3,32,32)")
    a = p.parse_args(argv)
    from ..engine import load

    try:
        model = None
        with tempfile.TemporaryDirectory() as tmp:
            path = a.target
            if not os.path.isfile(a.target):
                import torch

                from ..engine import export

                torch.set_num_threads(a.threads)
                if os.path.isdir(a.target):
                    model, size = model_from_run(a.target)
                else:
                    from ..models import create_model

                    size = _parse_size(a.input_size or "3,32,32")
                    kw = {"in_channels": size[1], "image_size": size[2]} if len(size) == 4 else {}
                    try:
                        model = create_model(a.target, **kw).eval()
                    except TypeError:
                        model = create_model(a.target).eval()
                path = os.path.join(tmp, "model.obe")
                export(model, path, size)
            rt = load(path, backend=a.backend, num_threads=a.threads)
            print(f"# {a.target}: backend {rt.backend}, {a.threads} threads, median of {a.repeats}")
            print("| batch | engine ms | torch fp32 ms | speed-up |")
            print("|---|---|---|---|")
            for b in a.batch:
                x = np.random.default_rng(0).standard_normal((b,) + rt.input_shape[1:]).astype(np.float32)
                te = _median(lambda: rt(x), a.repeats)
                if model is None:
                    print(f"| {b} | {te * 1e3:.2f} | - | - |")
                    continue
                import torch

                xt = torch.from_numpy(x)

                def torch_call():
                    with torch.no_grad():
                        model(xt)

                tt = _median(torch_call, a.repeats)
                print(f"| {b} | {te * 1e3:.2f} | {tt * 1e3:.2f} | {tt / te:.1f} |")
    except (EngineError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    return 0
