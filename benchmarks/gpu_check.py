"""The GPU path in one command (at most about 5 minutes on a CUDA machine).

1. Writes a synthetic ImageNet-like folder (natural-looking ~500x375 JPEGs, quality 90; see
   ``benchmarks/data.py``) and measures training batches/s of the loader alone by worker count.
2. Training images/s of BinaryNet (batch 50 and 256, 32x32) and Bi-Real Net 18 (batch 256,
   224x224) on device-resident synthetic batches: Bop + Adam, channels_last, fp32 and bf16
   autocast, with and without torch.compile (the step of ``onebit.training.step``).
3. The data-wait share of a real run: Bi-Real Net 18 trained from the folder through
   ``onebit.training.train`` (workers, pinned memory, bf16 where supported), read from metrics.csv.

Prints a markdown table for docs/performance.md with the GPU model and the CPU.
``--cpu``: a tiny version of all of it on the CPU with the CUDA-only parts (compile, pinned
memory) skipped, to check the script itself where there is no GPU.

    python benchmarks/gpu_check.py            # on a CUDA machine
    python benchmarks/gpu_check.py --cpu      # dry run anywhere
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import onebit as ob
from onebit.data import default_workers, load_imagefolder
from onebit.training import train
from onebit.training.config import defaults
from onebit.training.step import make_train_step, resolve_precision

sys.path.insert(0, str(Path(__file__).parent))
from data import loader_rate, machine, write_folder  # noqa: E402 - the sibling benchmark

FULL = {
    "images": 2000,
    "loader_batch": 256,
    "models": [("binarynet", 50, 32), ("binarynet", 256, 32), ("birealnet18", 256, 224)],
    "steps": 20,
    "run": dict(model="birealnet18", batch_size=256, max_steps=30),
}
TINY = {
    "images": 48,
    "loader_batch": 8,
    "models": [("binarynet", 4, 32), ("birealnet18", 2, 64)],
    "steps": 2,
    "run": dict(model="binarynet", image_size=32, batch_size=8, max_steps=3),
}


def model_and_optimizer(name: str, side: int, device):
    kwargs = {"num_classes": 1000} if name == "birealnet18" else {"image_size": side}
    model = ob.create_model(name, kernel_quantizer="noop", kernel_constraint=None, **kwargs)
    model = model.to(device, memory_format=torch.channels_last)
    opt = ob.optim.CaseOptimizer(
        ob.optim.Bop(ob.binary_parameters(model), gamma=1e-4, threshold=1e-8),
        torch.optim.Adam(ob.real_parameters(model), lr=1e-3),
    )
    return model, opt


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(name, batch, side, precision, compiled, device, steps) -> float:
    """Training images/s: ``steps`` timed steps after 3 warm-up steps (compilation included there)."""
    torch.manual_seed(0)
    model, opt = model_and_optimizer(name, side, device)
    net = torch.compile(model) if compiled else model
    step = make_train_step(net, opt, precision=precision, device=device)
    classes = 1000 if name == "birealnet18" else 10
    x = torch.randn(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    for _ in range(3):
        step(x, y)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def data_wait_share(root: Path, device, precision: str, run: dict, out: Path) -> tuple[float, float]:
    """(data wait share, images/s) of one epoch of a real run on the folder."""
    config = dict(defaults(), dataset="imagefolder", data_dir=str(root), epochs=1, out=str(out))
    config.update(run, device=str(device), precision=precision, plots=False, tensorboard=False, eval_every=1000)
    s = train(config, recipe="gpu-check", verbose=False)
    row = list(csv.DictReader(open(f"{s['run_dir']}/metrics.csv")))[-1]
    seconds = float(row["seconds"])
    return float(row["data_seconds"]) / seconds, int(row["step"]) * config["batch_size"] / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="tiny dry run on the CPU (CUDA-only parts skipped)")
    args = p.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; use --cpu for the dry run")
    plan, device = (TINY, torch.device("cpu")) if args.cpu else (FULL, torch.device("cuda"))
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none (--cpu dry run)"
    bf16 = resolve_precision("auto", device)
    print(f"GPU: {gpu}; torch {torch.__version__}; bf16: {bf16[0]} ({bf16[1]})")
    print(machine())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp) / "images", plan["images"])
        print(f"\nwrote {plan['images']} JPEGs in {time.perf_counter() - started:.0f} s")
        print("\n| loader workers | images/s (224 px training crops) |\n|---:|---:|")
        train_set, _ = load_imagefolder(root, 224)
        most = default_workers()
        for workers in sorted({0, 2, most // 2, most} - {1} if most > 2 else {0, most}):
            print(f"| {workers} | {loader_rate(train_set, workers, plan['loader_batch'], 1):.0f} |", flush=True)
        compiles = (False,) if args.cpu else (False, True)
        print("\n| model | batch | input | precision | compile | images/s |\n|---|---:|---:|---|---|---:|")
        for name, batch, side in plan["models"]:
            for precision in ("fp32", "bf16"):
                for compiled in compiles:
                    rate = train_rate(name, batch, side, precision, compiled, device, plan["steps"])
                    row = f"| {name} | {batch} | {side} | {precision} | {'on' if compiled else 'off'} | {rate:.1f} |"
                    print(row, flush=True)
        share, rate = data_wait_share(root, device, bf16[0], plan["run"], Path(tmp) / "runs")
        print(
            f"\nreal run ({plan['run']['model']}, {bf16[0]}, {default_workers()} workers): "
            f"{rate:.0f} images/s, data wait {share:.1%} of the step"
        )
    print(f"total {time.perf_counter() - started:.0f} s; {machine()}")
    if args.cpu:
        print("(dry run: not measured on a GPU; compile and pinned memory skipped)")


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.gettempdir() + "/onebit-inductor")
    main()
