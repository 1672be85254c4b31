"""Decoding one image file with Pillow: the crop boxes of the ImageNet pipeline, JPEG draft mode,
and the whole-image decode of small-image folders. Errors are Pillow's own; callers name the file.

Draft mode: a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain when the crop still
covers at least ``size`` pixels at that scale, which skips most of the decoding work of a large
photo cut down to 224 pixels (``benchmarks/data.py`` measures it, docs/performance.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["centre_box", "decode_crop", "decode_whole", "header_size", "random_resized_box", "why"]

CENTRE_FRACTION = 0.875  # evaluation: centre crop of 0.875 of the short side


def why(e: Exception) -> str:
    """One line: the exception's class and the first line of its message."""
    text = next((t.strip() for t in str(e).splitlines() if t.strip()), "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def centre_box(w: int, h: int) -> tuple[float, float, float, float]:
    """The evaluation crop: a centred square of 0.875 of the short side."""
    side = CENTRE_FRACTION * min(w, h)
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


def random_resized_box(w: int, h: int, generator) -> tuple[float, float, float, float]:
    """A crop box of area 8-100% and aspect ratio 3/4-4/3 (10 tries, then the centre crop)."""
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        area = w * h * (0.08 + 0.92 * u[0])
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if cw <= w and ch <= h:
            x0, y0 = (w - cw) * u[2], (h - ch) * u[3]
            return (x0, y0, x0 + cw, y0 + ch)
    return centre_box(w, h)


def _draft(img, box, size: int):
    """Ask a JPEG for the smallest DCT scale at which ``box`` still spans ``size`` pixels; returns
    the box in the coordinates of the image as it will decode."""
    w, h = img.size
    bw, bh = max(box[2] - box[0], 1e-6), max(box[3] - box[1], 1e-6)
    img.draft("RGB", (math.ceil(w * size / bw), math.ceil(h * size / bh)))
    sx, sy = img.size[0] / w, img.size[1] / h
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def decode_crop(path, size: int, box_of, draft: bool = True) -> np.ndarray:
    """uint8 (size, size, 3), read-only: the crop ``box_of(w, h)`` of the image at ``path``,
    resized (bicubic); JPEGs in draft mode when ``draft``. Height-width-channel as Pillow hands it
    over (no copy here: the caller copies it once, into its batch, flipped if need be)."""
    from PIL import Image

    with Image.open(path) as img:
        box = box_of(*img.size)
        if draft and img.format == "JPEG":
            box = _draft(img, box, size)
        rgb = img if img.mode == "RGB" else img.convert("RGB")  # convert would only copy an RGB image
        return np.asarray(rgb.resize((size, size), Image.BICUBIC, box=box), dtype=np.uint8)


def decode_whole(path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 (3, size, size), the file's own (width, height)): the whole image, resized
    (bicubic) only when it is not ``size`` x ``size`` already."""
    from PIL import Image

    with Image.open(path) as img:
        own = img.size
        img = img.convert("RGB")
        if own != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), own


def header_size(path) -> tuple[int, int] | None:
    """(width, height) from the file's header (nothing decoded); None when it does not open."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - a damaged file is found and named when it is decoded
        return None
