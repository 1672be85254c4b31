"""Image-folder loading speed: onebit's loader over a synthetic ImageNet-like folder it writes.

Writes ``--images`` (2,000) natural-looking JPEGs (smooth colour fields with texture and edges,
about 500x375, quality 90) in 10 classes, then measures training batches (random-resized crop +
flip to 224, ImageNet normalisation) through ``onebit.data.Loader`` with 0, 1, 2, ... worker
processes, JPEG draft mode on and off: images/s over one epoch after a warm-up epoch (workers
started), median of ``--repeats`` epochs interleaved over the worker counts, the ratio to the
first count's rate (0 workers by default) measured in the same run, and the CPU time per image
of the training process and its workers together (steadier than images/s on a loaded machine).
Then decoding alone, file by file, with each decoder that imports: Pillow (full size and in draft
mode), simplejpeg and PyTurboJPEG (full size and their DCT scaling); and the whole training crop
(decode, random-resized crop, resize) with Pillow against simplejpeg decoding, CPU time per image
and whether the crops are identical, so the choice of decoder rests on a measurement. Prints the CPU model, its flags and the load.

    python benchmarks/data.py [--images 2000] [--workers 0 1 2] [--batch 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from onebit.data import Loader, load_imagefolder


def natural_image(rng: np.random.Generator, width: int = 500, height: int = 375) -> np.ndarray:
    """uint8 (H, W, 3): smooth colour fields (upsampled low-frequency noise), a few hard-edged
    shapes and fine texture: about the entropy of a photo, so JPEG sizes and decode costs are."""
    from PIL import Image

    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(root: Path, images: int, classes: int = 10, seed: int = 0) -> Path:
    """``root/train/<class>/*.jpg`` (and a small test split) of ``natural_image``s at quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", images), ("test", max(classes, images // 20))):
        for i in range(n):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (500, 375) if i % 4 else (375, 500)  # some portrait photos
            Image.fromarray(natural_image(rng, w, h)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live child processes (the loader's
    workers), from /proc; this process's own where /proc is missing."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = Path(f"/proc/{os.getpid()}/task")
        children = {c for t in tasks.iterdir() for c in (t / "children").read_text().split()}
        for pid in children:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    except (OSError, ValueError):
        pass
    return total


def loader_rates(train, workers: list[int], batch: int, repeats: int) -> dict[int, tuple[float, float]]:
    """{workers: (median images/s, median CPU ms per image)} of training epochs through the loader:
    one loader per worker count, a warm-up epoch each (workers started), then ``repeats`` rounds
    of one epoch per loader in turn, so a change of load hits every count alike."""
    loaders = {w: Loader(train, batch, train=True, seed=0, num_workers=w) for w in workers}
    rates, cpu = {w: [] for w in workers}, {w: [] for w in workers}
    for epoch in range(repeats + 1):
        for w, loader in loaders.items():
            loader.set_epoch(epoch)
            start, start_cpu = time.perf_counter(), cpu_seconds()
            n = sum(len(y) for _, y in loader)
            if epoch:
                rates[w].append(n / (time.perf_counter() - start))
                cpu[w].append(1000 * (cpu_seconds() - start_cpu) / n)
    for loader in loaders.values():
        loader.close()
    return {w: (statistics.median(rates[w]), statistics.median(cpu[w])) for w in workers}


def decoders(size: int = 224):
    """{name: decode(path) -> array} for every decoder that imports (full size and scaled)."""
    from PIL import Image

    def pillow(path, draft=False):
        with Image.open(path) as img:
            if draft:
                img.draft("RGB", (size, size))
            return np.asarray(img.convert("RGB"))

    found = {"Pillow": pillow, "Pillow draft": lambda p: pillow(p, True)}
    try:
        import simplejpeg

        def sj(path, scaled=False):
            data = Path(path).read_bytes()
            extra = dict(min_height=size, min_width=size) if scaled else {}
            return simplejpeg.decode_jpeg(data, colorspace="RGB", **extra)

        found.update({"simplejpeg": sj, "simplejpeg scaled": lambda p: sj(p, True)})
    except ImportError:
        pass
    try:
        from turbojpeg import TurboJPEG

        tj = TurboJPEG()

        def turbo(path, factor=None):
            data = Path(path).read_bytes()
            return tj.decode(data, scaling_factor=factor) if factor else tj.decode(data)

        found.update({"PyTurboJPEG": turbo, "PyTurboJPEG 1/2": lambda p: turbo(p, (1, 2))})
    except (ImportError, RuntimeError, OSError):  # not installed, or libturbojpeg missing
        pass
    return found


def decode_rates(paths: list[Path], repeats: int) -> dict[str, float]:
    """Median images/s of decoding ``paths`` one by one with each decoder, decoders in turn."""
    found = decoders()
    times = {name: [] for name in found}
    for _ in range(repeats):
        for name, decode in found.items():
            start = time.perf_counter()
            for p in paths:
                decode(p)
            times[name].append(len(paths) / (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def simplejpeg_crop(path, size: int, box_of) -> np.ndarray | None:
    """The training crop as ``onebit.data.decode.decode_crop`` makes it (draft mode), with
    simplejpeg decoding at the power-of-two DCT scale Pillow's draft mode picks; None when
    simplejpeg does not import."""
    try:
        import simplejpeg
    except ImportError:
        return None
    from PIL import Image

    data = Path(path).read_bytes()
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    box = box_of(w, h)
    want_w = math.ceil(w * size / max(box[2] - box[0], 1e-6))
    want_h = math.ceil(h * size / max(box[3] - box[1], 1e-6))
    scale = next(s for s in (8, 4, 2, 1) if max(1, min(w // want_w, h // want_h)) >= s)
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-w // scale), min_height=-(-h // scale))
    sx, sy = rgb.shape[1] / w, rgb.shape[0] / h
    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC, box=box))


def crop_costs(paths: list[Path], repeats: int, size: int = 224) -> tuple[dict[str, float], int]:
    """({path: median CPU ms per image}, images alike): the whole decode + random-resized crop +
    resize with Pillow (onebit's) and with simplejpeg decoding, in turn, the same boxes for both."""
    from onebit.data.decode import decode_crop, random_resized_box

    ways = {"Pillow (onebit)": decode_crop}
    if simplejpeg_crop(paths[0], size, lambda w, h: (0, 0, w, h)) is not None:
        ways["simplejpeg + Pillow"] = simplejpeg_crop
    costs = {name: [] for name in ways}
    for r in range(repeats):
        for name, crop in ways.items():
            g = torch.Generator().manual_seed(r)
            start = time.process_time()
            for p in paths:
                crop(p, size, lambda w, h: random_resized_box(w, h, g))
            costs[name].append(1000 * (time.process_time() - start) / len(paths))
    alike = 0
    for i, p in enumerate(paths if len(ways) > 1 else []):
        a, b = (
            crop(p, size, lambda w, h: random_resized_box(w, h, torch.Generator().manual_seed(i)))
            for crop in ways.values()
        )
        alike += bool(np.array_equal(a, b))
    return {name: statistics.median(c) for name, c in costs.items()}, alike


def machine() -> str:
    """CPU model, the flags that matter here, and the load."""
    model, flags = "?", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vpopcntdq", "avx512_bf16", "amx_bf16")
    shown = " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"CPU {model}, {os.cpu_count()} cores visible, flags: {shown}; load average {load}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--folder", help="use (or write) this folder instead of a temporary one")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder) if args.folder else Path(tmp)
        if not (root / "train").is_dir():
            start = time.perf_counter()
            write_folder(root, args.images)
            print(f"wrote {args.images} JPEGs in {time.perf_counter() - start:.0f} s")
        print(machine())
        print(f"loader: batch {args.batch}, 224 px training crops, median of {args.repeats} interleaved epochs")
        print(f"{'workers':>7s} {'draft':>6s} {'images/s':>9s} {'x 0 workers':>12s} {'CPU ms/image':>13s}")
        for draft in (True, False):
            train, _ = load_imagefolder(root, 224, draft=draft)
            found = loader_rates(train, args.workers, args.batch, args.repeats)
            base = found[args.workers[0]][0]
            for workers, (rate, cpu) in found.items():
                line = f"{workers:7d} {'on' if draft else 'off':>6s} {rate:9.1f} {rate / base:12.2f} {cpu:13.2f}"
                print(line, flush=True)
        paths = train.paths[:200]
        print(f"decoding alone, {len(paths)} files, one process, images/s:")
        for name, rate in decode_rates(paths, args.repeats).items():
            print(f"  {name:20s} {rate:8.1f}")
        costs, alike = crop_costs(paths, args.repeats)
        print(f"decode + crop + resize to 224, {len(paths)} files, one process, CPU ms/image:")
        for name, ms in costs.items():
            print(f"  {name:20s} {ms:8.2f}")
        if len(costs) > 1:
            print(f"  identical crops: {alike} of {len(paths)}")
        print(machine())


if __name__ == "__main__":
    main()
